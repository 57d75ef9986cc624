"""deadletter/main.py without Firestore: how a given-up chunk's items end and are counted, and
which dead letters reach the store at all."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from deadletter.main import failed_items, handle
from schemas.batches import CountDeltas
from schemas.chunks import ChunkMessage
from schemas.messages import JobMessage, chunk_to_pubsub
from tests.unit.fakes import chunk_document as chunk
from tests.unit.fakes import totals

ERROR = {"code": "attempts_exhausted", "message": "gave up"}


def test_running_items_of_a_running_chunk_fail_from_running() -> None:
    deltas = CountDeltas()
    changes = failed_items(chunk("rrr", "running"), ERROR, deltas)
    assert changes == {"items": "fff", "errors": {"0": ERROR, "1": ERROR, "2": ERROR}}
    assert totals(deltas) == {"running": -3, "failed": 3, "in_flight": -3}


def test_items_that_ended_keep_their_outcome_and_each_letter_moves_its_own_count() -> None:
    earlier = {"code": "bad_input", "message": "no"}
    doc = chunk("qsfcr", "queued", errors={"2": earlier})
    deltas = CountDeltas()
    changes = failed_items(doc, ERROR, deltas)
    assert changes["items"] == "fsfcf"
    assert changes["errors"] == {"0": ERROR, "2": earlier, "4": ERROR}
    assert totals(deltas) == {"queued": -1, "running": -1, "failed": 2, "in_flight": -2}


def test_a_chunk_without_letters_counts_each_of_its_items_as_queued() -> None:
    deltas = CountDeltas()
    changes = failed_items({**chunk("", "queued"), "n": 2}, ERROR, deltas)
    assert changes["items"] == "ff"
    assert totals(deltas) == {"queued": -2, "failed": 2, "in_flight": -2}


class Store:
    def __init__(self) -> None:
        self.settled: list[JobMessage | ChunkMessage] = []

    def settle(self, message: JobMessage | ChunkMessage, deliveries: str | None) -> str:
        self.settled.append(message)
        return "failed"


def envelope(data: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes}}


def test_a_chunk_dead_letter_reaches_the_store_as_a_chunk() -> None:
    message = ChunkMessage(batch_id="b", chunk_id="0000000000", task="embed", tenant="t")
    store = Store()
    outcome = handle(envelope(*chunk_to_pubsub(message)), store, None)  # type: ignore[arg-type]
    assert outcome == "failed" and store.settled == [message]


@pytest.mark.parametrize(
    ("data", "attributes"),
    [
        (b'{"v":2,"kind":"chunk"}', {"kind": "shard"}),  # a kind this release does not know
        (b'{"v":3,"kind":"chunk","batch_id":"b","chunk_id":"c"}', {"kind": "chunk"}),
    ],
)
def test_a_dead_letter_this_release_cannot_read_is_acknowledged_not_settled(
    data: bytes, attributes: dict[str, str]
) -> None:
    store = Store()
    assert handle(envelope(data, attributes), store, None) == "unknown kind"  # type: ignore[arg-type]
    assert store.settled == []
