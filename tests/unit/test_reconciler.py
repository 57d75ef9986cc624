"""reconciler/sweep.py without Firestore: how a queued chunk it ends moves its items' letters
and counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from reconciler.settings import ReconcilerSettings
from reconciler.sweep import NOT_DISPATCHED_ITEM, ended_queued
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    """Collects the writes ``CountDeltas.write`` adds to a commit (and is its client too)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def document(self, *parts: str) -> str:
        return "/".join(parts)

    def set(self, reference: Any, document_data: dict[str, Any], merge: bool = False) -> None:
        self.writes.append((reference, document_data))


def totals(deltas: CountDeltas) -> dict[str, int]:
    recorder = Recorder()
    deltas.write(recorder, recorder, NOW)
    found: dict[str, int] = {}
    for _path, data in recorder.writes:
        for key, value in data.items():
            if key != "at":
                found[key] = found.get(key, 0) + value.value
    return found


def queued(items: str) -> dict[str, Any]:
    return {
        "tenant": "t",
        "batch_path": "batches/b",
        "in_flight_counted": True,
        "status": "queued",
        "n": len(items),
        "items": items,
    }


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
