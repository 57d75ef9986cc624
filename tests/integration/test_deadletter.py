"""The dead-letter function's decisions against the real Firestore emulator.

It decides from the job (or chunk) document, not from Pub/Sub's delivery count: a job that really
ran its maximum attempts ends ``failed``; one that did not (its deliveries went to a subscriber
that died first) is published again; a finished job, or one a live attempt holds, is left alone.
A batch's chunk is decided the same way, and when it is given up each of its items not ended yet
fails, with the batch's counts moved in the same commit.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from deadletter.main import MAX_DEAD_LETTERS, DeadLetterStore, LiveAttempt, handle
from schemas.chunks import ChunkMessage
from schemas.jobs import new_job_document, new_job_id
from schemas.messages import JobMessage, chunk_to_pubsub
from tests.support.batchdocs import (
    batch_counts,
    chunk_doc,
    exact_counts,
    in_flight,
    one_chunk_batch,
)

pytestmark = pytest.mark.integration


class Published:
    def __init__(self) -> None:
        self.jobs: list[JobMessage | ChunkMessage] = []

    def __call__(self, message: JobMessage | ChunkMessage) -> None:
        self.jobs.append(message)


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


# -- chunks ---------------------------------------------------------------------------------------

TENANT = "tenant-dl"


def make_chunk(items: str, counted: bool = True, **fields: Any) -> tuple[str, str]:
    """A batch (its items counted as acceptance counts them, if ``counted``) and one chunk of it
    whose items stand as ``items`` says (each letter counted in its status); ``(batch_id,
    chunk_id)``."""
    return one_chunk_batch(items, TENANT, counted=counted, **fields)


def chunk_event(batch_id: str, chunk: str, deliveries: int = 5) -> dict[str, Any]:
    message = ChunkMessage(batch_id=batch_id, chunk_id=chunk, task="embed", tenant=TENANT)
    data, attributes = chunk_to_pubsub(message)
    attributes["CloudPubSubDeadLetterSourceDeliveryCount"] = str(deliveries)
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes}}


def settle_chunk(batch_id: str, chunk: str) -> tuple[str, dict[str, Any], Published]:
    published = Published()
    store = DeadLetterStore(firestore.Client(), "jobs", result_ttl_s=3600)
    outcome = handle(chunk_event(batch_id, chunk), store, published)  # type: ignore[arg-type]
    return outcome, chunk_doc(batch_id, chunk), published


def test_a_chunk_that_ran_every_attempt_fails_its_unfinished_items_with_exact_counts(
    clean_firestore: object,
) -> None:
    # Its last attempt's worker died: the lease lapsed with every item still running.
    lapsed = datetime.now(UTC) - timedelta(seconds=5)
    last_error = {"code": "transient", "message": "store timeout", "attempt": 5}
    batch_id, chunk = make_chunk(
        "rrrr", status="running", attempts=5, lease_expires_at=lapsed, last_error=last_error
    )
    assert batch_counts(batch_id)["running"] == 4 and in_flight(TENANT) == 4
    outcome, doc, published = settle_chunk(batch_id, chunk)
    assert outcome == "failed" and published.jobs == []
    assert doc["status"] == "failed" and doc["items"] == "ffff"
    assert doc["terminal_writes"] == 1 and doc["finished_by"] == "dead-letter"
    assert doc["done_at"] is not None and doc["lease_expires_at"] is None
    assert sorted(doc["errors"]) == ["0", "1", "2", "3"]
    for error in doc["errors"].values():
        assert error["code"] == "attempts_exhausted" and "store timeout" in error["message"]
    assert batch_counts(batch_id) == exact_counts(4, failed=4)
    assert in_flight(TENANT) == 0
    # Idempotent: the same dead letter again changes nothing, counts included.
    again, after, _ = settle_chunk(batch_id, chunk)
    assert again == "already failed" and after == doc
    assert batch_counts(batch_id)["failed"] == 4 and in_flight(TENANT) == 0


def test_a_released_chunk_fails_from_queued_and_its_ended_items_keep_their_outcome(
    clean_firestore: object,
) -> None:
    # Released after its last attempt (items back to queued); two items had ended on their own.
    batch_id, chunk = make_chunk("qsqf", attempts=5)
    outcome, doc, _ = settle_chunk(batch_id, chunk)
    assert outcome == "failed" and doc["items"] == "fsff"
    assert sorted(doc["errors"]) == ["0", "2"]
    assert batch_counts(batch_id) == exact_counts(4, succeeded=1, failed=3)
    assert in_flight(TENANT) == 0


def test_a_chunk_with_attempts_left_is_published_again_as_a_chunk(clean_firestore: object) -> None:
    batch_id, chunk = make_chunk("qq", attempts=2)
    outcome, doc, published = settle_chunk(batch_id, chunk)
    assert outcome == "requeued" and doc["status"] == "queued" and doc["dead_letters"] == 1
    assert published.jobs == [
        ChunkMessage(batch_id=batch_id, chunk_id=chunk, task="embed", tenant=TENANT)
    ]
    assert batch_counts(batch_id)["queued"] == 2


def test_a_chunk_held_by_a_live_attempt_is_decided_again_later(clean_firestore: object) -> None:
    lease = datetime.now(UTC) + timedelta(seconds=30)
    batch_id, chunk = make_chunk("rr", status="running", attempts=5, lease_expires_at=lease)
    with pytest.raises(LiveAttempt):
        settle_chunk(batch_id, chunk)
    assert batch_counts(batch_id)["running"] == 2


def test_a_pending_chunk_is_left_alone(clean_firestore: object) -> None:
    # Its request was never accepted: nothing counted it, and nothing may count its end.
    batch_id, chunk = make_chunk("qqq", counted=False, status="pending", attempts=5)
    outcome, doc, published = settle_chunk(batch_id, chunk)
    assert outcome == "not accepted" and doc["status"] == "pending" and published.jobs == []


def test_a_dead_letter_of_an_unknown_kind_is_logged_and_acknowledged(
    emulators: object, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = {
        "messageId": "m-1",
        "data": base64.b64encode(b'{"v":9,"kind":"shard"}').decode(),
        "attributes": {"kind": "shard", "task": "embed", "tenant": TENANT},
    }
    store = DeadLetterStore(firestore.Client(), "jobs", result_ttl_s=3600)
    published = Published()
    with caplog.at_level("ERROR", logger="deadletter"):
        outcome = handle({"message": envelope}, store, published)  # type: ignore[arg-type]
    assert outcome == "unknown kind" and published.jobs == []
    (record,) = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert record.levelname == "ERROR" and record.__dict__["data"] == envelope["data"]
