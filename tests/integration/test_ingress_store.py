"""ingress/jobs/store.py against the real Firestore emulator: the edge cases of
create-then-publish."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.cloud import firestore

from ingress.jobs.store import JobStore
from schemas.jobs import new_job_document, new_job_id

pytestmark = pytest.mark.integration
TIMEOUT = 10


@pytest.fixture
def store(clean_firestore: object) -> JobStore:
    return JobStore(firestore.Client(), "jobs", timeout_s=TIMEOUT, result_ttl_s=3600)


def new_doc() -> dict[str, object]:
    return new_job_document(
        tenant="t", task="embed", input={"texts": ["a"]}, metadata=None, now=datetime.now(UTC)
    )


def test_a_retried_create_that_finds_its_own_document_succeeds(store: JobStore) -> None:
    job_id, doc = new_job_id(), new_doc()
    first = store.create(job_id, doc)
    # What the client's retry meets when the first try landed and only its answer was lost.
    assert store.create(job_id, doc) == first


def test_an_unpublished_job_is_failed_when_nobody_touched_it(store: JobStore) -> None:
    job_id = new_job_id()
    written_at = store.create(job_id, new_doc())
    assert store.fail_unpublished(job_id, "t", written_at, "publish failed: TimeoutError") is True
    stored = store.get(job_id)
    assert stored is not None and stored["status"] == "failed"
    assert stored["error"] == {"code": "publish_failed", "message": "publish failed: TimeoutError"}


def test_a_job_claimed_despite_the_failed_publish_is_left_to_run(store: JobStore) -> None:
    job_id = new_job_id()
    written_at = store.create(job_id, new_doc())
    # The publish timed out on our side but reached Pub/Sub, and a worker claimed the job.
    jobs = firestore.Client().collection("jobs")
    jobs.document(job_id).update({"status": "running", "attempts": 1}, timeout=TIMEOUT)

    assert store.fail_unpublished(job_id, "t", written_at, "publish failed") is False
    stored = store.get(job_id)
    assert stored is not None and stored["status"] == "running" and "error" not in stored
