"""Job documents watched through Firestore real-time listeners, shared by every reader in process.

Open event streams and long polls all learn of a job's changes here. One listen target per watched
job, however many readers follow it, and many targets on one Listen stream
(``ingress/jobs/listen.py``): a thousand open streams cost a few threads, not three thousand. The
target goes when the last reader of its job leaves.

    Firestore ──Listen stream (≤ TARGETS_PER_STREAM jobs)──▶ _Watch (per job) ──▶ Feed (per reader)

Documents arrive on the stream's reader thread: the callback only hands each one to its readers'
queues and catches everything, so a slow or failing reader cannot stall the stream. A stream that
stopped is opened again by its reader, or by ``revive`` on a reader's next ping.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TARGETS_PER_STREAM = 500
"""Jobs one Listen stream carries before the watcher opens another stream."""


class WatcherClosed(RuntimeError):
    """The ingress is shutting down: no new readers."""


class Closed:
    """Put in every reader's queue when the watcher closes: the reader ends its response."""


CLOSED = Closed()


class Feed:
    """One reader's view of one job: the document after each change, oldest first."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self._queue: queue.SimpleQueue[dict[str, Any] | Closed] = queue.SimpleQueue()

    def put(self, item: dict[str, Any] | Closed) -> None:
        self._queue.put(item)

    def get(self, timeout_s: float) -> dict[str, Any] | Closed | None:
        """The next document (or ``CLOSED``); None when nothing came within ``timeout_s``."""
        try:
            return self._queue.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None


@dataclass(eq=False)
class _Watch:
    job_id: str
    stream: Any
    feeds: set[Feed] = field(default_factory=set)
    last: dict[str, Any] | None = None


class JobWatcher:
    """Hands out ``Feed``s of job documents, one listen target per job.

    ``open_stream(on_document)`` opens a multiplexed listen stream (``MultiListen`` in production;
    a fake in unit tests)."""

    def __init__(
        self,
        open_stream: Callable[[Callable[[str, dict[str, Any]], None]], Any],
        targets_per_stream: int = TARGETS_PER_STREAM,
    ):
        self._open_stream = open_stream
        self._per_stream = targets_per_stream
        # Guards _watches, _streams and _closed; held only for dict and set updates (stream
        # add/remove only queue a request), never while a reader's queue is fed.
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._streams: list[Any] = []
        self._closed = False

    def feed(self, job_id: str) -> Feed:
        """Start following a job. The feed's first document is the job as it is now (or as the
        stream last delivered it); release it with ``release``."""
        feed = Feed(job_id)
        with self._lock:
            if self._closed:
                raise WatcherClosed("the ingress is shutting down")
            watch = self._watches.get(job_id)
            if watch is None:
                watch = _Watch(job_id, self._pick_stream())
                self._watches[job_id] = watch
                watch.stream.add(job_id)
            watch.feeds.add(feed)
            if watch.last is not None:
                feed.put(watch.last)
        return feed

    def release(self, feed: Feed) -> None:
        """Stop following; the job's listen target goes with its last reader."""
        with self._lock:
            watch = self._watches.get(feed.job_id)
            if watch is None or feed not in watch.feeds:
                return
            watch.feeds.discard(feed)
            if not watch.feeds:
                del self._watches[feed.job_id]
                watch.stream.remove(feed.job_id)

    def revive(self, feed: Feed) -> bool:
        """Open the job's stream again if it stopped; whether it had to."""
        with self._lock:
            watch = self._watches.get(feed.job_id)
            stream = None if watch is None or self._closed else watch.stream
        return stream is not None and bool(stream.revive())

    def close(self) -> None:
        """End every reader (each gets ``CLOSED``) and every stream; refuse new readers."""
        with self._lock:
            self._closed = True
            watches = list(self._watches.values())
            self._watches.clear()
            streams, self._streams = self._streams, []
        for watch in watches:
            for feed in watch.feeds:
                feed.put(CLOSED)
        for stream in streams:
            stream.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "watched_jobs": len(self._watches),
                "readers": sum(len(w.feeds) for w in self._watches.values()),
                "listen_streams": len(self._streams),
            }

    def _pick_stream(self) -> Any:
        # Called with the lock held. Fill the least-loaded stream; open another when all are full.
        if self._streams:
            stream = min(self._streams, key=len)
            if len(stream) < self._per_stream:
                return stream
        opened: list[Any] = []
        stream = self._open_stream(lambda job_id, doc: self._deliver(job_id, doc, opened[0]))
        opened.append(stream)
        self._streams.append(stream)
        return stream

    def _deliver(self, job_id: str, doc: dict[str, Any], source: Any) -> None:
        """A job's document as ``source`` received it: to each of its readers. A document from
        another stream than the job's own (it was released and followed again meanwhile) may be
        older than what the readers have: dropped."""
        try:
            with self._lock:
                watch = self._watches.get(job_id)
                if watch is None or watch.stream is not source:
                    return
                watch.last = doc
                feeds = list(watch.feeds)
            for feed in feeds:
                feed.put(doc)
        except Exception:  # noqa: BLE001 - an exception here would end the stream's reader
            logger.exception("delivering a job change failed", extra={"job_id": job_id})
