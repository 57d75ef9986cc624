"""The dead-letter function's decisions against the real Firestore emulator.

It decides from the job document, not from Pub/Sub's delivery count: a job that really ran its
maximum attempts ends ``failed``; one that did not (its deliveries went to a subscriber that died
first) is published again; a finished job, or one a live attempt holds, is left alone.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from deadletter.main import MAX_DEAD_LETTERS, DeadLetterStore, LiveAttempt, handle
from schemas.jobs import new_job_document, new_job_id
from schemas.messages import JobMessage

pytestmark = pytest.mark.integration


class Published:
    def __init__(self) -> None:
        self.jobs: list[JobMessage] = []

    def __call__(self, job: JobMessage) -> None:
        self.jobs.append(job)


def make_job(**fields: Any) -> str:
    job_id = new_job_id()
    doc = new_job_document(
        tenant="t", task="embed", input={"texts": ["x"]}, metadata=None, now=datetime.now(UTC)
    )
    firestore.Client().collection("jobs").document(job_id).create({**doc, **fields})
    return job_id


def event(job_id: str, deliveries: int = 5) -> dict[str, Any]:
    data, attributes = JobMessage(job_id=job_id, task="embed", tenant="t").to_pubsub()
    attributes["CloudPubSubDeadLetterSourceDeliveryCount"] = str(deliveries)
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes}}


def settle(job_id: str) -> tuple[str, dict[str, Any], Published]:
    published = Published()
    store = DeadLetterStore(firestore.Client(), "jobs", result_ttl_s=3600)
    outcome = handle(event(job_id), store, published)  # type: ignore[arg-type]
    doc = firestore.Client().collection("jobs").document(job_id).get().to_dict() or {}
    return outcome, doc, published


def test_a_job_that_ran_every_attempt_fails_with_its_last_error(clean_firestore: object) -> None:
    last_error = {"code": "transient", "message": "model busy", "attempt": 5}
    job_id = make_job(attempts=5, last_error=last_error)
    outcome, doc, published = settle(job_id)
    assert outcome == "failed" and published.jobs == []
    assert doc["status"] == "failed" and doc["error"]["code"] == "attempts_exhausted"
    assert "5 deliveries" in doc["error"]["message"] and "model busy" in doc["error"]["message"]
    assert doc["terminal_writes"] == 1 and doc["finished_by"] == "dead-letter"
    # Idempotent: the same event again changes nothing.
    again, after, _ = settle(job_id)
    assert again == "already failed" and after["updated_at"] == doc["updated_at"]


def test_a_job_with_attempts_left_is_published_again(clean_firestore: object) -> None:
    job_id = make_job(attempts=1)
    outcome, doc, published = settle(job_id)
    assert outcome == "requeued" and [j.job_id for j in published.jobs] == [job_id]
    assert doc["status"] == "queued" and doc["dead_letters"] == 1


def test_a_job_dead_lettered_too_often_ends_whatever_its_attempts(clean_firestore: object) -> None:
    job_id = make_job(attempts=0, dead_letters=MAX_DEAD_LETTERS - 1)
    outcome, doc, published = settle(job_id)
    assert outcome == "failed" and published.jobs == []
    assert "none recorded" in doc["error"]["message"]


def test_a_job_held_by_a_live_attempt_is_decided_again_later(clean_firestore: object) -> None:
    # The event fails, so Pub/Sub redelivers it; by then the attempt ended or its lease lapsed.
    lease = datetime.now(UTC) + timedelta(seconds=30)
    job_id = make_job(status="running", attempts=1, lease_expires_at=lease)
    with pytest.raises(LiveAttempt):
        settle(job_id)
    doc = firestore.Client().collection("jobs").document(job_id).get().to_dict() or {}
    assert doc["status"] == "running" and "dead_letters" not in doc
    # Its worker died: the lease lapsed, and the redelivered event publishes the job again.
    firestore.Client().collection("jobs").document(job_id).update(
        {"lease_expires_at": datetime.now(UTC) - timedelta(seconds=1)}
    )
    outcome, doc, published = settle(job_id)
    assert outcome == "requeued" and [j.job_id for j in published.jobs] == [job_id]


@pytest.mark.parametrize(
    "data", [{}, {"message": {"data": "!!not base64!!"}}, {"message": {"data": "bnVsbA=="}}]
)
def test_an_unreadable_dead_letter_is_dropped(data: dict[str, Any]) -> None:
    store = DeadLetterStore(firestore.Client(), "jobs", result_ttl_s=3600)
    assert handle(data, store, Published()) == "unreadable"  # type: ignore[arg-type]
