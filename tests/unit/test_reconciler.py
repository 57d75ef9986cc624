"""reconciler/sweep.py without Firestore: how a queued chunk it ends moves its items' letters
and counts."""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from reconciler.settings import ReconcilerSettings
from reconciler.sweep import NOT_DISPATCHED_ITEM, ended_queued
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from tests.unit.fakes import chunk_document, totals


def queued(items: str) -> dict[str, Any]:
    return chunk_document(items, "queued")


def test_a_given_up_chunk_fails_each_queued_item_with_not_dispatched() -> None:
    deltas = CountDeltas()
    changes = ended_queued(queued("qqq"), JobStatus.FAILED, NOT_DISPATCHED_ITEM, deltas)
    assert changes["items"] == "fff" and changes["done_at"] is firestore.SERVER_TIMESTAMP
    assert changes["errors"] == {str(i): NOT_DISPATCHED_ITEM for i in range(3)}
    assert totals(deltas) == {"queued": -3, "failed": 3, "in_flight": -3}


def test_a_cancelled_chunk_cancels_its_queued_items_and_records_no_error() -> None:
    deltas = CountDeltas()
    changes = ended_queued(queued("qq"), JobStatus.CANCELLED, None, deltas)
    assert changes["items"] == "cc" and "errors" not in changes
    assert totals(deltas) == {"queued": -2, "cancelled": 2, "in_flight": -2}


def test_the_batches_collection_is_configurable() -> None:
    assert ReconcilerSettings.from_env({}).batches_collection == "batches"
    settings = ReconcilerSettings.from_env({"BATCHES_COLLECTION": "b2"})
    assert settings.batches_collection == "b2"
