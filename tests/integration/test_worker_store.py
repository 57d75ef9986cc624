"""worker/store.py and worker/chunkstore.py against the real Firestore emulator: batch claims and
batch terminal writes, chunk claims, commits and releases with their counts, on the optimistic path
and on the transactional fallback when another writer got in between."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.cloud import firestore

from schemas.chunks import CHUNKS
from schemas.jobs import JobStatus, new_job_document, new_job_id
from tests.support.batchdocs import batch_counts, chunk_doc, one_chunk_batch
from worker.chunkstore import ChunkClaim, ChunkOutcome, ChunkStore
from worker.store import Busy, Claim, JobStore, Skip

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


def test_a_released_job_is_queued_again_and_only_by_the_attempt_that_owns_it(
    store: JobStore,
) -> None:
    (job_id,) = queued(1)
    (first,) = store.claim_many([(job_id, "t")])
    assert isinstance(first, Claim)
    assert store.release(first, {"code": "transient", "message": "x"})
    released = doc(job_id)
    assert released["status"] == "queued" and released["attempt_token"] is None
    assert released["last_error"] == {"code": "transient", "message": "x", "attempt": 1}
    (second,) = store.claim_many([(job_id, "t")])
    assert isinstance(second, Claim) and second.attempt == 2
    assert not store.release(first, None)  # the first attempt's token no longer owns it
    assert doc(job_id)["status"] == "running"


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


# -- chunks ----------------------------------------------------------------------------------


def chunk_store() -> ChunkStore:
    return ChunkStore(firestore.Client(), "batches", timeout_s=TIMEOUT, lease_s=20, result_ttl_s=60)


def queued_chunk(n: int, tenant: str = "t") -> tuple[str, str]:
    """A batch of ``n`` items in one queued chunk, counted as an accepted part is."""
    inputs = [json.dumps({"texts": [f"t{i}"]}).encode() for i in range(n)]
    return one_chunk_batch("q" * n, tenant, inputs=inputs)


def claimed_chunk(n: int) -> tuple[ChunkStore, str, str, ChunkClaim]:
    """A chunk store, and a batch of ``n`` items in one queued chunk it has claimed:
    ``(store, batch_id, chunk_id, claim)``."""
    store = chunk_store()
    batch_id, chunk = queued_chunk(n)
    claim = store.claim(batch_id, chunk, "t")
    assert isinstance(claim, ChunkClaim)
    return store, batch_id, chunk, claim


def outcome_of(claim: ChunkClaim, letters: str) -> ChunkOutcome:
    results = [b"J{}" if code == "s" else b"" for code in letters]
    errors = {str(i): {"code": "bad", "message": "x"} for i, c in enumerate(letters) if c == "f"}
    status = JobStatus.CANCELLED if "c" in letters else JobStatus.SUCCEEDED
    return ChunkOutcome(status, bytearray(letters.encode()), results, errors)


def test_a_chunk_is_claimed_committed_and_counted_once(clean_firestore: object) -> None:
    store = chunk_store()
    batch_id, chunk = queued_chunk(5)
    claim = store.claim(batch_id, chunk, "t", worker="w-1")
    assert isinstance(claim, ChunkClaim) and claim.todo == (0, 1, 2, 3, 4)
    assert [json.loads(line) for line in claim.inputs][4] == {"texts": ["t4"]}
    assert chunk_doc(batch_id, chunk)["items"] == "rrrrr"
    assert batch_counts(batch_id)["running"] == 5
    assert isinstance(store.claim(batch_id, chunk, "t"), Busy)  # a duplicate delivery
    assert store.commit(claim, outcome_of(claim, "ssfss"))
    doc = chunk_doc(batch_id, chunk)
    assert doc["status"] == "succeeded" and doc["items"] == "ssfss"
    assert doc["terminal_writes"] == 1 and doc["results"][0] == b"J{}" and doc["done_at"]
    assert doc["errors"] == {"2": {"code": "bad", "message": "x"}}
    counts = batch_counts(batch_id)
    assert (counts["succeeded"], counts["failed"], counts["running"], counts["queued"]) == (
        4,
        1,
        0,
        0,
    )
    assert isinstance(store.claim(batch_id, chunk, "t"), Skip)  # ended: nothing to do


def test_a_queued_chunk_of_a_cancelled_batch_ends_cancelled_and_never_runs(
    clean_firestore: object,
) -> None:
    store = chunk_store()
    batch_id, chunk = queued_chunk(3)
    firestore.Client().collection("batches").document(batch_id).update({"cancel_requested": True})
    assert isinstance(store.claim(batch_id, chunk, "t"), Skip)
    doc = chunk_doc(batch_id, chunk)
    assert doc["status"] == "cancelled" and doc["items"] == "ccc" and doc["terminal_writes"] == 1
    assert batch_counts(batch_id)["cancelled"] == 3


def test_a_running_chunk_sees_its_batch_cancel_and_a_release_requeues_its_items(
    clean_firestore: object,
) -> None:
    store, batch_id, chunk, claim = claimed_chunk(4)
    assert store.check([claim]) == {claim.token: "ok"}
    assert store.release(claim, {"code": "transient", "message": "x"})
    doc = chunk_doc(batch_id, chunk)
    assert doc["status"] == "queued" and doc["items"] == "qqqq"
    assert batch_counts(batch_id)["queued"] == 4 and batch_counts(batch_id)["running"] == 0
    again = store.claim(batch_id, chunk, "t")
    assert isinstance(again, ChunkClaim) and again.attempt == 2
    firestore.Client().collection("batches").document(batch_id).update({"cancel_requested": True})
    assert store.check([again]) == {again.token: "cancelled"}
    assert not store.release(claim, None)  # the first attempt's token no longer owns it


def test_a_commit_after_another_attempt_took_the_chunk_writes_nothing(
    clean_firestore: object,
) -> None:
    store, batch_id, chunk, claim = claimed_chunk(2)
    # The lease lapsed and another worker took it over: the optimistic write fails over to a
    # transaction that sees the other token.
    ref = firestore.Client().document("batches", batch_id, CHUNKS, chunk)
    ref.update({"attempt_token": "other", "attempts": 2})
    assert not store.commit(claim, outcome_of(claim, "ss"))
    assert chunk_doc(batch_id, chunk)["status"] == "running"
    assert batch_counts(batch_id)["running"] == 2
