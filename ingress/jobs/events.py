"""Results as they happen: ``GET /v1/jobs/ID/events`` (server-sent events), and the wait that
long polls (``?wait=N``) and ``Prefer: wait=N`` share.

Both follow the job through the shared listener (``ingress/jobs/watch.py``), never by re-reading
Firestore in a loop. Events come from the job's stored event log (``schemas/jobevents.py``), so the
ids are the same on every ingress instance and after a restart: a client that lost its stream
resumes anywhere with ``Last-Event-ID`` and gets exactly what it missed.

Each stream and each wait holds a thread while it lasts, so each takes one of its tenant's
``streams`` slots in this process (``ingress/limits/holds.py``; 429 past the cap). A stream open for
``STREAM_MAX_LIFETIME_S`` is ended by the server between two events, before Cloud Run's request
timeout cuts it wherever it is; the client resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, request

from ingress import metrics
from ingress.access import owned_job
from ingress.errors import BadRequest
from ingress.http import SSE_HEADERS
from ingress.jobs.watch import CLOSED, Feed, JobWatcher, WatcherClosed
from ingress.services import services
from schemas.jobevents import JobEvent, event_count, job_events, latest_event
from schemas.jobstate import is_terminal

logger = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")

_DIGITS = re.compile(r"[0-9]+")


def _last_event_id(raw: str | None) -> int | None:
    """The id the client last saw; None when it sent none (then it gets the current state)."""
    if raw is None or raw.strip() == "":
        return None
    if not _DIGITS.fullmatch(raw.strip()):
        raise BadRequest("Last-Event-ID must be an event id this stream sent (a whole number)")
    return int(raw.strip())


@bp.get("/<job_id>/events")
def stream_events(job_id: str) -> Response:
    """The job's current state, then one event per change; closes after the terminal event.

    With ``Last-Event-ID: N``, the events after N instead of the current state (0: all of them).
    A client that already has the terminal event gets 204, which tells ``EventSource`` to stop
    reconnecting. The stream takes one of the tenant's ``streams`` slots until it ends (429 when
    none is free), and ends after ``stream_max_lifetime_s`` at the latest, between two events."""
    svc = services()
    doc = owned_job(job_id)
    after = _last_event_id(request.headers.get("Last-Event-ID"))
    if after is not None:
        after = min(after, event_count(doc))  # no client can have seen an id beyond the log
        if is_terminal(doc) and after == event_count(doc):
            return Response(status=204)
    hold = svc.holds.acquire(g.tenant)
    settings = svc.settings
    stream = _stream(
        svc.watcher, job_id, doc, after, settings.sse_ping_s, settings.stream_max_lifetime_s
    )
    logger.info("event stream opened", extra={"last_event_id": after})
    return Response(hold.stream(stream), mimetype="text/event-stream", headers=SSE_HEADERS)


@metrics.counted_stream
def _stream(
    watcher: JobWatcher,
    job_id: str,
    doc: dict[str, Any],
    after: int | None,
    ping_s: float,
    lifetime_s: float,
) -> Iterator[str]:
    # Runs after the view returned, outside the request context: everything it needs is passed in.
    # A client that went away is seen at the next write (an event or a ping): the generator is
    # closed there and the finally below releases the listener.
    # Invariant: the generator only stops between two whole events, so the last id a client
    # holds is always one it received complete, and Last-Event-ID resumes exactly after it.
    ends_at = time.monotonic() + lifetime_s
    sent = 0 if after is None else after
    for event in _new_events(job_id, doc, after):
        yield event.to_sse()
        sent = event.id
        if event.terminal:
            return
    feed: Feed | None = None
    try:
        try:
            feed = watcher.feed(job_id)
        except WatcherClosed:
            return
        # Pings go out every ping_s of silence on the wire, however many documents arrive that
        # carry no event (a lease renewal writes the job every few seconds while it runs).
        last_write = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= ends_at:
                return  # its lifetime is over: the client resumes with Last-Event-ID
            item = feed.get(min(ping_s - (now - last_write), ends_at - now))
            if item is CLOSED:
                return  # this instance is shutting down: the client resumes with Last-Event-ID
            if isinstance(item, dict):
                for event in _new_events(job_id, item, sent):
                    yield event.to_sse()
                    last_write = time.monotonic()
                    sent = event.id
                    if event.terminal:
                        return
            if time.monotonic() - last_write >= ping_s:
                yield ": ping\n\n"
                last_write = time.monotonic()
                watcher.revive(feed)
    finally:
        if feed is not None:
            watcher.release(feed)


def _new_events(job_id: str, doc: dict[str, Any], after: int | None) -> list[JobEvent]:
    """What a stream that has sent up to ``after`` (None: nothing yet) sends for ``doc``: the
    current state first, else the events after ``after``. A terminal job always yields its
    terminal event, even when its log has no record of it (written by a writer that keeps no
    log), so that no stream waits forever on a finished job."""
    if after is None:
        return [latest_event(job_id, doc)]
    events = job_events(job_id, doc, after)
    if is_terminal(doc) and not any(e.terminal for e in events):
        events.append(latest_event(job_id, doc))
    return events
