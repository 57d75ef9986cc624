"""The ingress's job watcher: one listener per job, shared by its readers, gone with the last.

Firestore is faked here (a unit test of the fan-out only); tests/integration/test_events.py runs
the same watcher on the real emulator's listeners.
"""

from __future__ import annotations

from typing import Any

import pytest

from ingress.events import prefer_wait
from ingress.watch import CLOSED, JobWatcher, WatcherClosed


class FakeListener:
    def __init__(self, callback: Any):
        self.callback = callback
        self.is_active = True
        self.unsubscribed = False

    def unsubscribe(self) -> None:
        self.unsubscribed = True


class FakeSnapshot:
    def __init__(self, doc: dict[str, Any] | None):
        self._doc = doc
        self.exists = doc is not None

    def to_dict(self) -> dict[str, Any] | None:
        return self._doc


class FakeClient:
    def __init__(self) -> None:
        self.listeners: dict[str, list[FakeListener]] = {}

    def collection(self, _name: str) -> FakeClient:
        return self

    def document(self, job_id: str) -> Any:
        client = self

        class Ref:
            def on_snapshot(self, callback: Any) -> FakeListener:
                listener = FakeListener(callback)
                client.listeners.setdefault(job_id, []).append(listener)
                return listener

        return Ref()

    def push(self, job_id: str, doc: dict[str, Any] | None) -> None:
        self.listeners[job_id][-1].callback([FakeSnapshot(doc)], [], None)


def watcher(per_client: int = 100) -> tuple[JobWatcher, list[FakeClient]]:
    clients: list[FakeClient] = []

    def make() -> FakeClient:
        clients.append(FakeClient())
        return clients[-1]

    return JobWatcher(make, "jobs", per_client), clients


def test_readers_of_one_job_share_one_listener_and_each_get_every_change() -> None:
    hub, clients = watcher()
    first, second = hub.feed("j"), hub.feed("j")
    assert len(clients[0].listeners["j"]) == 1
    clients[0].push("j", {"status": "running"})
    assert first.get(1) == second.get(1) == {"status": "running"}
    third = hub.feed("j")  # a late reader starts from the last document seen
    assert third.get(1) == {"status": "running"}


def test_the_listener_goes_with_the_last_reader() -> None:
    hub, clients = watcher()
    first, second = hub.feed("j"), hub.feed("j")
    hub.release(first)
    listener = clients[0].listeners["j"][0]
    assert not listener.unsubscribed
    hub.release(second)
    hub._closer.shutdown(wait=True)  # listeners close on the watcher's own thread
    assert listener.unsubscribed
    assert hub.stats() == {"watched_jobs": 0, "readers": 0, "firestore_clients": 1}


def test_a_missing_document_and_a_failing_callback_do_not_reach_readers() -> None:
    hub, clients = watcher()
    feed = hub.feed("j")
    clients[0].push("j", None)
    assert feed.get(0.05) is None
    clients[0].listeners["j"][0].callback(["not a snapshot"], [], None)  # logged, not raised
    assert feed.get(0.05) is None


def test_a_stopped_listener_is_revived() -> None:
    hub, clients = watcher()
    feed = hub.feed("j")
    assert not hub.revive(feed)
    clients[0].listeners["j"][0].is_active = False
    assert hub.revive(feed)
    assert len(clients[0].listeners["j"]) == 2


def test_listeners_spread_over_clients() -> None:
    hub, clients = watcher(per_client=2)
    for job in "abcde":
        hub.feed(job)
    assert len(clients) == 3
    assert hub.stats()["watched_jobs"] == 5


def test_close_ends_every_reader_and_refuses_new_ones() -> None:
    hub, _ = watcher()
    feed = hub.feed("j")
    hub.close()
    assert feed.get(1) is CLOSED
    with pytest.raises(WatcherClosed):
        hub.feed("k")


def test_prefer_wait_is_read_per_rfc_7240_and_capped() -> None:
    assert prefer_wait("wait=5") == 5
    assert prefer_wait("respond-async, wait=10") == 10
    assert prefer_wait('wait="3"') == 3
    assert prefer_wait("wait=600") == 60
    assert prefer_wait("return=minimal") is None
    assert prefer_wait(None) is None
