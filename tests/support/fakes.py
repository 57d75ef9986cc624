"""Fakes the unit tests share: a Pub/Sub message, a processor run over messages, and a recorder of
the counter writes ``CountDeltas.write`` adds to a commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.batches import CountDeltas
from worker.processor import Processor

NOW = datetime(2026, 1, 1, tzinfo=UTC)
"""The time the counter writes of ``written`` and ``totals`` carry."""


@dataclass
class FakeMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str = "m-1"
    delivery_attempt: int | None = 1
    settled: list[str] = field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def nack(self) -> None:
        self.settled.append("nack")

    def drop(self) -> None:
        self.settled.append("drop")

    def modify_ack_deadline(self, seconds: int) -> None:
        self.settled.append(f"retry in {seconds}s")


def handle_all(worker: Processor, messages: list[FakeMessage]) -> None:
    """Start the processor, hand it ``messages`` at once, close it once all settle."""
    worker.start()
    try:
        worker.handle(messages)
    finally:
        worker.close()


class Recorder:
    """Collects the writes ``CountDeltas.write`` adds to a commit (and is its client too);
    with ``merge_only``, fails on a write that does not merge."""

    def __init__(self, merge_only: bool = False) -> None:
        self.merge_only = merge_only
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def document(self, *parts: str) -> str:
        return "/".join(parts)

    def set(self, reference: Any, document_data: dict[str, Any], merge: bool = False) -> None:
        if self.merge_only:
            assert merge
        self.writes.append((reference, document_data))


def written(deltas: CountDeltas, merge_only: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The ``(document path, data)`` writes ``deltas`` adds to a commit at ``NOW``."""
    recorder = Recorder(merge_only)
    deltas.write(recorder, recorder, NOW)
    return recorder.writes


def totals(deltas: CountDeltas) -> dict[str, int]:
    """Every counter field's net change: the batch's statuses, and ``in_flight`` (tenant)."""
    found: dict[str, int] = {}
    for _path, data in written(deltas):
        for key, value in data.items():
            if key != "at":
                found[key] = found.get(key, 0) + value.value
    return found


def chunk_document(items: str, status: str, **fields: Any) -> dict[str, Any]:
    """A counted chunk document of tenant ``t`` in batch ``batches/b``, its items as ``items``
    says."""
    return {
        "tenant": "t",
        "batch_path": "batches/b",
        "in_flight_counted": True,
        "status": status,
        "n": len(items),
        "items": items,
        **fields,
    }
