"""deadletter/main.py without Firestore: which dead letters reach the store at all (how a given-up
chunk's items end and are counted: ``schemas.chunks.end_unfinished``, in test_chunks.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from deadletter.main import handle
from schemas.chunks import ChunkMessage
from schemas.messages import JobMessage, chunk_to_pubsub


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
