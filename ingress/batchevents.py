"""``GET /v1/batches/ID/events``: the stream behind the view, fed by two Firestore listeners (the
counter shards for ``progress``, the batch's items finishing for ``item``), ending with ``done``.

Like a job stream, it ends after ``STREAM_MAX_LIFETIME_S`` at the latest, between two events,
before Cloud Run's request timeout cuts it mid-event. Its events carry no ids yet: a client that
reconnects gets a fresh ``progress`` (the whole counts) and the items that finished from
``CLOCK_SLACK_S`` before, so an item event may come twice but none is lost to a prompt reconnect.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ingress import metrics
from ingress.batchstore import Batch as StoredBatch
from ingress.batchstore import BatchStore
from schemas import JobStatus, get_task
from schemas.batches import Batch, BatchStatus, item_line
from schemas.jobs import TERMINAL_STATUSES

PROGRESS_EVERY_S = 0.25
"""Least time between two ``progress`` events of a batch stream (item events are not held)."""
CLOCK_SLACK_S = 5.0
"""A batch stream shows items that finished from this long before it opened: the writers'
clocks are not this host's."""


def render_item(job_id: str, doc: dict[str, Any], with_result: bool) -> dict[str, Any]:
    """An item as a results line or an ``item`` event: its latest job's status and outcome."""
    result = None
    if with_result and doc.get("status") == JobStatus.SUCCEEDED.value and doc.get("result"):
        result = get_task(doc["task"]).result_from_store(doc["result"])
    return item_line(job_id, doc, result)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@metrics.counted_stream
def batch_stream(
    store: BatchStore, batch: StoredBatch, ping_s: float, with_results: bool, lifetime_s: float
) -> Iterator[str]:
    # Runs after the view returned: everything it needs is passed in. Two listeners feed one
    # queue: the counter shards (progress) and the batch's items finishing (item events).
    ends_at = time.monotonic() + lifetime_s
    resource = Batch.from_documents(batch.id, batch.doc, batch.shards)
    yield _sse("progress", resource.to_json_dict())
    if resource.status is not BatchStatus.RUNNING:
        yield _sse("done", resource.to_json_dict())
        return
    since = datetime.now(UTC) - timedelta(seconds=CLOCK_SLACK_S)
    changes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    sent: set[str] = set()
    watches = [
        store.shards(batch.id).on_snapshot(
            lambda docs, _changes, _at: changes.put(("shards", [d.to_dict() or {} for d in docs]))
        ),
        store.watch_finished(batch.id, since, lambda docs: changes.put(("items", docs))),
    ]
    shards = batch.shards
    dirty = False
    last_progress = last_write = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= ends_at:
                return  # its lifetime is over, between two events: the client reconnects
            wait = min(ping_s - (now - last_write), ends_at - now)
            if dirty:
                wait = min(wait, PROGRESS_EVERY_S - (now - last_progress))
            try:
                kind, payload = changes.get(timeout=max(wait, 0.0))
            except queue.Empty:
                kind, payload = "", None
            if kind == "items":
                for snapshot in payload:
                    event = _item_event(snapshot.id, snapshot.to_dict() or {}, sent, with_results)
                    if event:
                        yield event
                        last_write = time.monotonic()
            elif kind == "shards":
                shards, dirty = payload, True
            now = time.monotonic()
            if dirty and now - last_progress >= PROGRESS_EVERY_S:
                dirty, last_progress = False, now
                resource = Batch.from_documents(batch.id, batch.doc, shards)
                if resource.status is not BatchStatus.RUNNING:
                    yield from _finish(store, batch.id, since, sent, with_results)
                    return
                yield _sse("progress", resource.to_json_dict())
                last_write = now
            if now - last_write >= ping_s:
                yield ": ping\n\n"
                last_write = now
    finally:
        for watch in watches:
            watch.unsubscribe()


def _item_event(job_id: str, doc: dict[str, Any], sent: set[str], with_results: bool) -> str:
    if job_id in sent or doc.get("status") not in {s.value for s in TERMINAL_STATUSES}:
        return ""
    if doc.get("superseded_by"):
        return ""  # a retry replaced it before the stream saw it end
    sent.add(job_id)
    return _sse("item", render_item(job_id, doc, with_results))


def _finish(
    store: BatchStore, batch_id: str, since: datetime, sent: set[str], with_results: bool
) -> Iterator[str]:
    """Nothing is in flight: the items the listener has not delivered yet, then ``done`` with
    the batch read afresh (a cancel may have changed its status)."""
    for job_id, doc in store.finished_since(batch_id, since):
        if event := _item_event(job_id, doc, sent, with_results):
            yield event
    final = store.get(batch_id)
    if final is not None:
        resource = Batch.from_documents(batch_id, final.doc, final.shards).to_json_dict()
        yield _sse("progress", resource)
        yield _sse("done", resource)
