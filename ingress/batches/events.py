"""``GET /v1/batches/ID/events``: ``progress`` (the batch, counts included) at once and as the
counts change, ``item`` for each item that ends, then ``done`` with the final batch.

Two Firestore listeners say when to look (the counter shards, which every chunk commit moves,
and the batch document, for a close or a cancel); item events are then read from the chunks that
ended since the last one sent (``ChunkStore.completions``), so one chunk of 256 items is one read,
not 256 listener deliveries.

Ids: only ``item`` events carry one, ``event_id(done_at, chunk, position)``, a cursor over chunk
completions in the order they committed (items end out of index order). ``progress`` and
``done`` carry none: a client's ``Last-Event-ID`` therefore always names the last item event it
got, and a stream resumed with it sends a fresh ``progress`` (the whole counts: nothing to
resume), every item event after that id exactly once, and ``done`` when the batch has ended.
A stream opened without ``Last-Event-ID`` sends the items that end after it opened.

Like a job stream, it ends after ``STREAM_MAX_LIFETIME_S`` at the latest, between two events,
before Cloud Run's request timeout cuts it mid-event; the client resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec

from ingress import metrics
from ingress.access import batch_resource
from ingress.batches.chunkstore import ChunkStore, EventKey
from ingress.batches.documents import Batch as StoredBatch
from ingress.errors import StoreUnavailable
from ingress.http import sse
from schemas.batches import BatchStatus

logger = logging.getLogger(__name__)
P = ParamSpec("P")

PROGRESS_EVERY_S = 0.25
"""Least time between two looks at the counts (a ``progress`` event and the items that ended)."""
LIVE = (BatchStatus.RUNNING.value, BatchStatus.OPEN.value)


def _cut_by_outages(stream: Callable[P, Iterator[str]]) -> Callable[P, Iterator[str]]:
    """Decorates the stream's generator: a Firestore outage ends it (between two events)."""

    @functools.wraps(stream)
    def cut(*args: P.args, **kwargs: P.kwargs) -> Iterator[str]:
        try:
            yield from stream(*args, **kwargs)
        except StoreUnavailable:
            logger.warning("batch event stream cut by a Firestore outage")

    return cut


@metrics.counted_stream
@_cut_by_outages
def batch_stream(
    chunks: ChunkStore,
    batch: StoredBatch,
    reread: Callable[[], StoredBatch | None],
    after: EventKey | None,
    resumed: bool,
    ping_s: float,
    with_results: bool,
    lifetime_s: float,
) -> Iterator[str]:
    """The stream; a Firestore outage ends it between two events (the client resumes)."""
    # Runs after the view returned: everything it needs is passed in. ``after`` is the cursor
    # (the client's Last-Event-ID, or the last completion when the stream opened); the
    # generator stops only between whole events, so the last id a client holds is always one
    # it received whole, and resuming from it loses and repeats nothing.
    ends_at = time.monotonic() + lifetime_s
    resource = batch_resource(batch)
    yield sse("progress", resource)
    cursor = after
    if resource["status"] not in LIVE:
        if resumed:  # a client that lost the stream: the items it missed, then done
            for _, eid, line in chunks.completions(batch.id, cursor, with_results):
                yield sse("item", line, eid)
        yield sse("done", resource)
        return
    changes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    watches = [
        chunks.shards(batch.id).on_snapshot(
            lambda docs, _changes, _at: changes.put(("shards", [d.to_dict() or {} for d in docs]))
        ),
        chunks.document(batch.id).on_snapshot(
            lambda docs, _changes, _at: changes.put(("batch", docs))
        ),
    ]
    doc, shards = batch.doc, batch.shards
    dirty = False
    last_look = last_write = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= ends_at:
                return  # its lifetime is over, between two events: the client reconnects
            wait = min(ping_s - (now - last_write), ends_at - now)
            if dirty:
                wait = min(wait, PROGRESS_EVERY_S - (now - last_look))
            try:
                kind, payload = changes.get(timeout=max(wait, 0.0))
            except queue.Empty:
                kind, payload = "", None
            if kind == "shards":
                shards, dirty = payload, True
            elif kind == "batch":
                live = [d.to_dict() or {} for d in payload if d.exists]
                doc, dirty = (live[0] if live else doc), True
            now = time.monotonic()
            if dirty and now - last_look >= PROGRESS_EVERY_S:
                dirty, last_look = False, now
                for key, eid, line in chunks.completions(batch.id, cursor, with_results):
                    yield sse("item", line, eid)
                    cursor, last_write = key, time.monotonic()
                resource = batch_resource(StoredBatch(batch.id, doc, shards))
                if resource["status"] not in LIVE:
                    yield from _finish(chunks, batch.id, reread, cursor, with_results)
                    return
                yield sse("progress", resource)
                last_write = time.monotonic()
            if time.monotonic() - last_write >= ping_s:
                yield ": ping\n\n"
                last_write = time.monotonic()
    finally:
        for watch in watches:
            watch.unsubscribe()


def _finish(
    chunks: ChunkStore,
    batch_id: str,
    reread: Callable[[], StoredBatch | None],
    cursor: EventKey | None,
    with_results: bool,
) -> Iterator[str]:
    """Nothing is in flight: the item events not sent yet, then ``done`` with the batch read
    afresh (a cancel may have changed its status)."""
    for _, eid, line in chunks.completions(batch_id, cursor, with_results):
        yield sse("item", line, eid)
    final = reread()
    if final is not None:
        resource = batch_resource(final)
        yield sse("progress", resource)
        yield sse("done", resource)
