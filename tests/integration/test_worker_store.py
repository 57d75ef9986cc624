"""worker/store.py against the real Firestore emulator: batch claims and batch terminal writes,
on the optimistic path and on the transactional fallback when another writer got in between."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.cloud import firestore

from schemas.jobs import JobStatus, new_job_document, new_job_id
from worker.store import Claim, JobStore, Skip

pytestmark = pytest.mark.integration
TIMEOUT = 10


@pytest.fixture
def store(clean_firestore: object) -> JobStore:
    return JobStore(firestore.Client(), "jobs", timeout_s=TIMEOUT, lease_s=20, result_ttl_s=3600)


def queued(n: int, tenant: str = "t") -> list[str]:
    jobs = firestore.Client().collection("jobs")
    ids = []
    for i in range(n):
        job_id = new_job_id()
        doc = new_job_document(
            tenant=tenant,
            task="embed",
            input={"texts": [f"t{i}"]},
            metadata=None,
            now=datetime.now(UTC),
        )
        jobs.document(job_id).create(doc, timeout=TIMEOUT)
        ids.append(job_id)
    return ids


def doc(job_id: str) -> dict[str, object]:
    snapshot = firestore.Client().collection("jobs").document(job_id).get(timeout=TIMEOUT)
    return snapshot.to_dict() or {}


def done(claims: list[Claim]) -> list[tuple[Claim, JobStatus, dict[str, object]]]:
    return [
        (c, JobStatus.SUCCEEDED, {"result": {"n": 1}, "batch_size": len(claims)}) for c in claims
    ]


def test_a_batch_is_claimed_and_finished_once(store: JobStore) -> None:
    ids = queued(5)
    decisions = store.claim_many([(i, "t") for i in ids] + [(ids[0], "t")], worker="w-1")
    claims = [d for d in decisions if isinstance(d, Claim)]
    assert len(claims) == 5 and isinstance(decisions[-1], Skip)  # the duplicate in the batch
    assert all(doc(i)["status"] == "running" and doc(i)["worker"] == "w-1" for i in ids)
    # A second claim of the same jobs (a redelivery) finds live attempts and claims nothing.
    again = store.claim_many([(i, "t") for i in ids])
    assert not any(isinstance(d, Claim) for d in again)
    assert store.end_many(done(claims)) == [True] * 5
    for i in ids:
        assert doc(i)["status"] == "succeeded" and doc(i)["terminal_writes"] == 1
        assert doc(i)["batch_size"] == 5


def test_a_job_cancelled_between_claim_and_write_keeps_its_cancel(store: JobStore) -> None:
    ids = queued(3)
    claims = [d for d in store.claim_many([(i, "t") for i in ids]) if isinstance(d, Claim)]
    # The ingress cancels one while the batch runs: the optimistic write must fail over to a
    # transaction that writes the other two and leaves the cancel alone.
    firestore.Client().collection("jobs").document(ids[1]).update(
        {"status": "cancelled", "attempt_token": None}
    )
    assert store.end_many(done(claims)) == [True, False, True]
    assert [doc(i)["status"] for i in ids] == ["succeeded", "cancelled", "succeeded"]


def test_a_document_changed_after_the_read_makes_the_claim_decide_again(
    store: JobStore,
) -> None:
    ids = queued(2)
    real_get_all = store._client.get_all

    def get_all_then_someone_writes(*args: object, **kwargs: object) -> object:
        snapshots = list(real_get_all(*args, **kwargs))  # type: ignore[arg-type]
        # Another worker claims the first job between this read and the batch's commit.
        firestore.Client().collection("jobs").document(ids[0]).update(
            {"status": "succeeded", "terminal_writes": 1}
        )
        store._client.get_all = real_get_all  # type: ignore[method-assign]
        return snapshots

    store._client.get_all = get_all_then_someone_writes  # type: ignore[method-assign]
    decisions = store.claim_many([(i, "t") for i in ids])
    assert isinstance(decisions[0], Skip) and isinstance(decisions[1], Claim)
    assert doc(ids[0])["status"] == "succeeded" and doc(ids[1])["status"] == "running"
