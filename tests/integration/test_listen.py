"""The multiplexed Listen stream (``ingress/jobs/listen.py``) against the real Firestore
emulator."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import firestore

from ingress.jobs.listen import MultiListen
from tests.support.stacks import Emulators

pytestmark = pytest.mark.integration
TIMEOUT = 30
COLLECTION = "listen-test"


@pytest.fixture
def stream(emulators: Emulators) -> Iterator[tuple[MultiListen, queue.Queue[Any], Any]]:
    client = firestore.Client()
    received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    listen = MultiListen(client, COLLECTION, lambda doc_id, doc: received.put((doc_id, doc)))
    yield listen, received, client.collection(COLLECTION)
    listen.close()


def next_change(received: queue.Queue[Any]) -> tuple[str, dict[str, Any]]:
    change: tuple[str, dict[str, Any]] = received.get(timeout=TIMEOUT)
    return change


def nothing_more(received: queue.Queue[Any], within_s: float = 1.5) -> bool:
    try:
        received.get(timeout=within_s)
    except queue.Empty:
        return True
    return False


def test_each_document_arrives_as_it_is_then_with_every_change_in_order(stream: Any) -> None:
    listen, received, docs = stream
    docs.document("a").set({"n": 0})
    docs.document("b").set({"n": 0})
    listen.add("a")
    assert next_change(received) == ("a", {"n": 0})
    listen.add("b")
    assert next_change(received) == ("b", {"n": 0})
    for n in range(1, 6):
        docs.document("a").update({"n": n})
    assert [next_change(received) for _ in range(5)] == [("a", {"n": n}) for n in range(1, 6)]
    assert len(listen) == 2


def test_a_removed_document_is_no_longer_delivered(stream: Any) -> None:
    listen, received, docs = stream
    docs.document("gone").set({"n": 0})
    docs.document("kept").set({"n": 0})
    listen.add("gone")
    listen.add("kept")
    assert {next_change(received)[0] for _ in range(2)} == {"gone", "kept"}
    listen.remove("gone")
    docs.document("gone").update({"n": 1})
    docs.document("kept").update({"n": 1})
    assert next_change(received) == ("kept", {"n": 1})
    assert nothing_more(received)


def test_a_document_written_after_it_was_added_arrives(stream: Any) -> None:
    listen, received, docs = stream
    listen.add("later")  # a missing document: nothing to deliver yet
    assert nothing_more(received, 0.5)
    docs.document("later").set({"n": 7})
    assert next_change(received) == ("later", {"n": 7})


def test_a_broken_stream_reopens_with_every_target_and_misses_nothing(stream: Any) -> None:
    listen, received, docs = stream
    for name in ("x", "y"):
        docs.document(name).set({"n": 0})
        listen.add(name)
    assert {next_change(received)[0] for _ in range(2)} == {"x", "y"}

    listen._rpc.call.cancel()  # the stream dies, as on a network error or a server restart
    docs.document("x").update({"n": 1})  # written while no stream is open
    # Reopened with both targets: each document's current state comes back.
    states = {}
    while states.get("x") != {"n": 1} or "y" not in states:
        doc_id, doc = next_change(received)
        states[doc_id] = doc
    docs.document("y").update({"n": 2})
    while states.get("y") != {"n": 2}:
        doc_id, doc = next_change(received)
        states[doc_id] = doc
    assert listen.is_active
