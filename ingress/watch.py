"""Job documents watched through Firestore real-time listeners, shared by every reader in process.

Open event streams and long polls all learn of a job's changes here. One listener per watched job
(``on_snapshot`` on its document), however many streams follow that job: a listener costs two
threads and a gRPC stream, so a second reader of the same job costs a queue, not a listener. The
listener goes when the last reader leaves.

    Firestore ──on_snapshot──▶ _Watch (one per job) ──put(doc)──▶ Feed (one per reader) ──▶ view

Listener callbacks run on the listener's own thread: a slow or failing callback would stall or
silently kill the stream, so the callback only hands the document to each reader's queue and
catches everything. A listener that stopped (its RPC ended for good) is started again the next
time a reader's wait times out (``revive``, called on every ping).

Clients: listeners are spread over several Firestore clients, ``listeners_per_client`` each,
because one client's gRPC connection carries about 100 concurrent streams in production.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LISTENERS_PER_CLIENT = 100
"""Job listeners one Firestore client carries before the watcher opens another client."""


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
    client_index: int
    feeds: set[Feed] = field(default_factory=set)
    last: dict[str, Any] | None = None
    listener: Any = None


class JobWatcher:
    """Hands out ``Feed``s of job documents, one shared listener per job."""

    def __init__(
        self,
        make_client: Callable[[], Any],
        collection: str,
        listeners_per_client: int = LISTENERS_PER_CLIENT,
    ):
        self._make_client = make_client
        self._collection = collection
        self._per_client = listeners_per_client
        # Guards _watches, _clients, _load and _closed. Never held while a listener is opened
        # or closed elsewhere than in feed()/revive(), never taken by a listener callback for
        # longer than a dict lookup.
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._clients: list[Any] = []
        self._load: list[int] = []
        self._closed = False
        # Closing a listener joins its threads: done here, so a finished response returns at once.
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni-unwatch")

    def feed(self, job_id: str) -> Feed:
        """Start following a job. The feed's first document is the job as it is now (or as the
        shared listener last saw it); release it with ``release``."""
        feed = Feed(job_id)
        with self._lock:
            if self._closed:
                raise WatcherClosed("the ingress is shutting down")
            watch = self._watches.get(job_id)
            if watch is None:
                watch = _Watch(job_id, self._pick_client())
                watch.listener = self._listen(watch)
                self._watches[job_id] = watch
            watch.feeds.add(feed)
            if watch.last is not None:
                feed.put(watch.last)
        return feed

    def release(self, feed: Feed) -> None:
        """Stop following; the job's listener goes with its last reader."""
        listener = None
        with self._lock:
            watch = self._watches.get(feed.job_id)
            if watch is None or feed not in watch.feeds:
                return
            watch.feeds.discard(feed)
            if not watch.feeds:
                del self._watches[feed.job_id]
                self._load[watch.client_index] -= 1
                listener = watch.listener
        if listener is not None:
            self._unsubscribe(listener)

    def revive(self, feed: Feed) -> bool:
        """Start the job's listener again if it stopped; whether it had to."""
        with self._lock:
            watch = self._watches.get(feed.job_id)
            if watch is None or self._closed or watch.listener.is_active:
                return False
            logger.warning("job listener stopped; listening again", extra={"job_id": feed.job_id})
            old, watch.listener = watch.listener, self._listen(watch)
        self._unsubscribe(old)
        return True

    def close(self) -> None:
        """End every reader (each gets ``CLOSED``) and every listener; refuse new readers."""
        with self._lock:
            self._closed = True
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            for feed in watch.feeds:
                feed.put(CLOSED)
            self._unsubscribe(watch.listener)
        self._closer.shutdown(wait=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "watched_jobs": len(self._watches),
                "readers": sum(len(w.feeds) for w in self._watches.values()),
                "firestore_clients": len(self._clients),
            }

    def _pick_client(self) -> int:
        # Called with the lock held. Fill the least-loaded client; open another when all are full.
        if self._load:
            index = min(range(len(self._load)), key=self._load.__getitem__)
            if self._load[index] < self._per_client:
                self._load[index] += 1
                return index
        self._clients.append(self._make_client())
        self._load.append(1)
        return len(self._clients) - 1

    def _listen(self, watch: _Watch) -> Any:
        ref = self._clients[watch.client_index].collection(self._collection).document(watch.job_id)

        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            try:
                docs = [s.to_dict() for s in snapshots if s.exists]
                if not docs:
                    return  # not written yet, or deleted by the TTL policy: nothing to tell
                with self._lock:
                    watch.last = docs[-1]
                    feeds = list(watch.feeds)
                for feed in feeds:
                    feed.put(docs[-1])
            except Exception:  # noqa: BLE001 - an exception here would kill the listener silently
                logger.exception("job listener callback failed", extra={"job_id": watch.job_id})

        return ref.on_snapshot(on_snapshot)

    def _unsubscribe(self, listener: Any) -> None:
        def close() -> None:
            try:
                listener.unsubscribe()
            except Exception:  # noqa: BLE001 - a listener that fails to close is gone anyway
                logger.debug("closing a job listener failed", exc_info=True)

        try:
            self._closer.submit(close)
        except RuntimeError:  # the closer is shut down: close here
            close()
