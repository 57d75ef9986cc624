"""The ingress's job watcher: one listen target per job, shared by its readers, gone with the last.

The listen stream is faked here (a unit test of the fan-out only); tests/integration/test_events.py
runs the same watcher on the real emulator's Listen streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ingress.http import prefer_wait
from ingress.jobs.watch import CLOSED, JobWatcher, WatcherClosed


class FakeStream:
    def __init__(self, deliver: Callable[[str, dict[str, Any]], None]):
        self.deliver = deliver
        self.targets: set[str] = set()
        self.active = True
        self.revived = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self.targets)

    def add(self, job_id: str) -> None:
        self.targets.add(job_id)

    def remove(self, job_id: str) -> None:
        self.targets.discard(job_id)

    def revive(self) -> bool:
        if self.active:
            return False
        self.active, self.revived = True, self.revived + 1
        return True

    def close(self) -> None:
        self.closed = True


def watcher(per_stream: int = 100) -> tuple[JobWatcher, list[FakeStream]]:
    streams: list[FakeStream] = []

    def open_stream(deliver: Callable[[str, dict[str, Any]], None]) -> FakeStream:
        streams.append(FakeStream(deliver))
        return streams[-1]

    return JobWatcher(open_stream, per_stream), streams


def test_readers_of_one_job_share_one_target_and_each_get_every_change() -> None:
    hub, streams = watcher()
    first, second = hub.feed("j"), hub.feed("j")
    assert streams[0].targets == {"j"}
    streams[0].deliver("j", {"status": "running"})
    assert first.get(1) == second.get(1) == {"status": "running"}
    third = hub.feed("j")  # a late reader starts from the last document seen
    assert third.get(1) == {"status": "running"}


def test_the_target_goes_with_the_last_reader() -> None:
    hub, streams = watcher()
    first, second = hub.feed("j"), hub.feed("j")
    hub.release(first)
    assert streams[0].targets == {"j"}
    hub.release(second)
    assert streams[0].targets == set()
    assert hub.stats() == {"watched_jobs": 0, "readers": 0, "listen_streams": 1}


def test_changes_of_unwatched_jobs_and_failing_deliveries_reach_no_reader() -> None:
    hub, streams = watcher()
    feed = hub.feed("j")
    streams[0].deliver("other", {"status": "running"})
    assert feed.get(0.05) is None
    hub._watches["j"].feeds.add("not a feed")  # type: ignore[arg-type]
    streams[0].deliver("j", {"status": "running"})  # logged, not raised into the stream


def test_a_document_from_a_stream_the_job_has_left_is_dropped() -> None:
    hub, streams = watcher(per_stream=1)
    hub.release(hub.feed("j"))  # j leaves stream 0 ...
    hub.feed("x")  # ... x takes its place ...
    feed = hub.feed("j")  # ... and j is followed again on a new stream
    streams[0].deliver("j", {"status": "queued"})  # late, from the old stream: may be stale
    assert feed.get(0.05) is None
    streams[1].deliver("j", {"status": "running"})
    assert feed.get(1) == {"status": "running"}


def test_a_stopped_stream_is_revived() -> None:
    hub, streams = watcher()
    feed = hub.feed("j")
    assert not hub.revive(feed)
    streams[0].active = False
    assert hub.revive(feed)
    assert streams[0].revived == 1


def test_jobs_spread_over_streams() -> None:
    hub, streams = watcher(per_stream=2)
    for job in "abcde":
        hub.feed(job)
    assert [len(s) for s in streams] == [2, 2, 1]
    assert hub.stats()["watched_jobs"] == 5


def test_close_ends_every_reader_and_stream_and_refuses_new_readers() -> None:
    hub, streams = watcher()
    feed = hub.feed("j")
    hub.close()
    assert feed.get(1) is CLOSED
    assert streams[0].closed
    with pytest.raises(WatcherClosed):
        hub.feed("k")


def test_prefer_wait_is_read_per_rfc_7240_and_capped() -> None:
    assert prefer_wait("wait=5") == 5
    assert prefer_wait("respond-async, wait=10") == 10
    assert prefer_wait('wait="3"') == 3
    assert prefer_wait("wait=600") == 60
    assert prefer_wait("return=minimal") is None
    assert prefer_wait(None) is None
