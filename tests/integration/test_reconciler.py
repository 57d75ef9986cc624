"""The reconciler's sweep over chunks and open batches, against the real emulators.

No worker: chunk documents are written directly, the sweep runs in this process, and a test
subscription of its own (on a topic of its own) shows what it published. Chunks are found by a
collection-group query, so each test starts from an empty Firestore.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from reconciler.settings import ReconcilerSettings
from reconciler.sweep import Reconciler
from schemas.batches import COUNTERS, Batch
from schemas.chunks import CHUNKS, ChunkMessage
from schemas.messages import CHUNK_KIND, Topics
from tests.support.batchdocs import in_flight, write_chunk
from tests.support.stacks import PROJECT, Emulators
from tests.support.stacks import received_chunks as received

pytestmark = pytest.mark.integration

TENANT = "tenant-rec"
STALE = timedelta(minutes=20)
"""Older than the settings' staleness (10 minutes)."""


@pytest.fixture
def topic(clean_firestore: Emulators) -> Iterator[tuple[str, str]]:
    """Topics of this test's own, and a pull subscription on their ``embed`` chunks' topic:
    ``(the topics' base name, subscription path)``."""
    name = f"reconciler-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = Topics(clean_firestore.project, name).path("embed", CHUNK_KIND)
    subscription = subscriber.subscription_path(clean_firestore.project, name)
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(name=subscription, topic=topic_path)
    try:
        yield name, subscription
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic_path)
        subscriber.close()


def reconciler(topic_name: str) -> Reconciler:
    """A reconciler publishing to the topics of base ``topic_name``, with the default staleness
    (10 minutes)."""
    settings = ReconcilerSettings(project=PROJECT, jobs_topic=topic_name, result_ttl_s=3600)
    return Reconciler(settings, firestore.Client(), pubsub_v1.PublisherClient())


def make_batch(**fields: Any) -> firestore.DocumentReference:
    batch_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    ref = firestore.Client().collection("batches").document(batch_id)
    doc = {
        "tenant": TENANT,
        "task": "embed",
        "state": "accepted",
        "created_at": now,
        "updated_at": now,
        "counts": {},
        "cancel_requested": False,
        **fields,
    }
    ref.create(doc)
    return ref


def make_chunk(
    batch: firestore.DocumentReference, start: int, items: str, age: timedelta, **fields: Any
) -> str:
    """A chunk of ``batch`` last changed ``age`` ago, its items counted as the ingress and the
    worker count them (none while ``pending``); its id."""
    then = datetime.now(UTC) - age
    counted = fields.get("status", "queued") != "pending"
    return write_chunk(batch, start, items, TENANT, then, counted=counted, **fields)


def chunk(batch: firestore.DocumentReference, chunk: str) -> dict[str, Any]:
    return batch.collection(CHUNKS).document(chunk).get().to_dict() or {}


def resource(batch: firestore.DocumentReference) -> Batch:
    shards = [s.to_dict() or {} for s in batch.collection(COUNTERS).stream()]
    return Batch.from_documents(batch.id, batch.get().to_dict() or {}, shards)


def test_stale_chunks_are_published_again_and_pending_or_fresh_ones_are_not(
    topic: tuple[str, str],
) -> None:
    name, subscription = topic
    batch = make_batch()
    orphan = make_chunk(batch, 0, "qq", STALE)
    fresh = make_chunk(batch, 2, "qq", timedelta(0))
    pending = make_chunk(batch, 4, "qq", STALE, status="pending")
    lapsed = datetime.now(UTC) - STALE
    abandoned = make_chunk(
        batch, 6, "rr", STALE, status="running", attempts=1, lease_expires_at=lapsed
    )
    report = reconciler(name).sweep()
    assert sorted(report.republished) == [f"{batch.id}/{orphan}", f"{batch.id}/{abandoned}"]
    messages = received(subscription, at_least=2)
    assert sorted(messages, key=lambda m: m.chunk_id) == [
        ChunkMessage(batch_id=batch.id, chunk_id=c, task="embed", tenant=TENANT)
        for c in (orphan, abandoned)
    ]
    assert chunk(batch, orphan)["dispatch_count"] == 1
    assert chunk(batch, abandoned)["dispatch_count"] == 1
    assert "dispatch_count" not in chunk(batch, fresh)
    assert chunk(batch, pending)["status"] == "pending" and "dispatch_count" not in chunk(
        batch, pending
    )
    # A second sweep at once publishes nothing: each re-publish waits twice as long as the last.
    assert reconciler(name).sweep().republished == []
    assert received(subscription) == []


def test_a_chunk_queued_for_too_long_is_given_up_with_exact_counts(
    topic: tuple[str, str],
) -> None:
    name, subscription = topic
    batch = make_batch()
    ancient = make_chunk(batch, 0, "qqq", timedelta(days=2))
    assert in_flight(TENANT) == 3
    report = reconciler(name).sweep()
    assert report.failed == [f"{batch.id}/{ancient}"] and report.republished == []
    doc = chunk(batch, ancient)
    assert doc["status"] == "failed" and doc["items"] == "fff" and doc["terminal_writes"] == 1
    assert doc["done_at"] is not None
    assert {e["code"] for e in doc["errors"].values()} == {"not_dispatched"}
    assert sorted(doc["errors"]) == ["0", "1", "2"]
    counts = resource(batch).counts
    assert (counts.total, counts.queued, counts.failed) == (3, 0, 3)
    assert in_flight(TENANT) == 0 and received(subscription) == []


def test_an_open_batch_not_closed_in_time_is_cancelled_with_its_queued_chunks(
    topic: tuple[str, str],
) -> None:
    name, subscription = topic
    now = datetime.now(UTC)
    expired = make_batch(open=True, open_expires_at=now - timedelta(minutes=1))
    still_open = make_batch(open=True, open_expires_at=now + timedelta(hours=1))
    queued = [make_chunk(expired, start, "qq", timedelta(0)) for start in (0, 2, 4)]
    # A stale one too: it ends cancelled with the others, never published.
    queued.append(make_chunk(expired, 6, "qq", STALE))
    live = now + timedelta(minutes=5)
    running = make_chunk(
        expired, 8, "rr", timedelta(0), status="running", attempts=1, lease_expires_at=live
    )
    pending = make_chunk(expired, 10, "qq", timedelta(0), status="pending")
    other = make_chunk(still_open, 0, "qq", timedelta(0))

    report = reconciler(name).sweep()
    assert report.expired == [expired.id] and report.republished == []
    assert sorted(report.cancelled) == [f"{expired.id}/{c}" for c in queued]
    doc = expired.get().to_dict() or {}
    assert doc["open"] is False and doc["cancel_requested"] is True
    for c in queued:
        ended = chunk(expired, c)
        assert ended["status"] == "cancelled" and ended["items"] == "cc"
        assert ended["terminal_writes"] == 1 and ended["done_at"] is not None
    assert chunk(expired, running)["status"] == "running"  # its worker stops it
    assert chunk(expired, pending)["status"] == "pending"  # never accepted: its TTL removes it
    counts = resource(expired).counts
    assert (counts.total, counts.queued, counts.running, counts.cancelled) == (10, 0, 2, 8)
    assert resource(expired).status == "running"
    assert in_flight(TENANT) == 4  # the running chunk's two items and the open batch's two
    # The batch still open is left as it is.
    assert (still_open.get().to_dict() or {})["open"] is True
    assert chunk(still_open, other)["status"] == "queued"
    assert resource(still_open).status == "open"
    assert received(subscription) == []
    # Nothing more to do on the next sweep.
    again = reconciler(name).sweep()
    assert again.expired == [] and again.cancelled == []


def test_a_stale_queued_chunk_of_a_cancelled_batch_is_ended_not_published(
    topic: tuple[str, str],
) -> None:
    # The ingress's cancel sweep died half-way: the counts become exact without a worker.
    name, subscription = topic
    batch = make_batch(cancel_requested=True)
    left = make_chunk(batch, 0, "qqq", STALE)
    report = reconciler(name).sweep()
    assert report.cancelled == [f"{batch.id}/{left}"] and report.republished == []
    assert chunk(batch, left)["items"] == "ccc"
    assert resource(batch).status == "cancelled" and resource(batch).counts.cancelled == 3
    assert received(subscription) == []
