"""A batch once accepted: read it and its results (all, one, or as events), cancel it, and retry
what failed. Submission and parts live in ``ingress/batches/routes.py``; the chunks behind every
route here in ``ingress/batches/chunkstore.py``, the event stream in ``ingress/batches/events.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from ingress.access import batch_resource, owned_batch
from ingress.batches.chunkstore import BatchCancelled, ChunkStore, EventKey
from ingress.batches.events import batch_stream
from ingress.errors import (
    AlreadyFinished,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
)
from ingress.http import SSE_HEADERS
from ingress.pages import listing
from ingress.services import admit, services, unavailable
from schemas import TASKS, JobStatus
from schemas.batches import BatchStatus, counts_of
from schemas.chunks import parse_event_id
from schemas.jobs import JOB_ID_PATTERN

logger = logging.getLogger(__name__)

bp = Blueprint("batchreads", __name__, url_prefix="/v1/batches")

_INDEX = re.compile(r"[0-9]{1,12}")
DEFAULT_BATCH_PAGE = 20
MAX_BATCH_PAGE = 100
"""Most batches on a page: each is read with its counter shards (``SHARDS`` documents)."""
STATUSES = tuple(s.value for s in JobStatus)


def _chunks() -> ChunkStore:
    chunks: ChunkStore = services().chunks
    return chunks


# -- the batch and its results ------------------------------------------------------------------


@bp.get("")
def list_batches() -> Response:
    """The tenant's batches, newest first, a page at a time (``ingress/pages.py``), with the
    same filters as ``GET /v1/jobs``. A batch's status is not stored (it follows from its counts),
    so ``status`` filters each page after it is read: a filtered page may hold fewer than
    ``limit`` batches, even none, and still have a ``next_page_token``."""
    tenant: str = g.tenant
    query = listing(
        request.args,
        tenant,
        [s.value for s in BatchStatus],
        list(TASKS),
        max_limit=MAX_BATCH_PAGE,
        default_limit=DEFAULT_BATCH_PAGE,
    )
    try:
        batches, cursor = services().batches.page(
            tenant,
            limit=query.limit,
            task=query.task,
            created_after=query.created_after,
            created_before=query.created_before,
            after=query.cursor,
        )
    except StoreUnavailable as exc:
        raise unavailable("batch store") from exc
    resources = [batch_resource(batch) for batch in batches]
    if query.status is not None:
        resources = [r for r in resources if r["status"] == query.status]
    return jsonify({"batches": resources, "next_page_token": query.next_token(tenant, cursor)})


@bp.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """The batch; running, with its ``progress`` estimate (``schemas/eta.py``)."""
    batch = owned_batch(batch_id)
    resource = batch_resource(batch)
    if resource["status"] == BatchStatus.RUNNING.value:
        counts = counts_of(batch.doc, batch.shards)
        progress = services().estimates.batch_progress(
            batch.doc["task"], counts, batch.doc["created_at"]
        )
        if progress is not None:
            resource["progress"] = progress
    return jsonify(resource)


@bp.delete("/<batch_id>")
def delete_batch(batch_id: str) -> tuple[str, int]:
    """204: the batch is gone with its items, results, events, counts and webhook ledger; items
    not yet run never run, and a chunk running stops at its next check (``BatchStore.delete``).
    404 for an unknown or foreign id."""
    svc = services()
    batch = owned_batch(batch_id, counts=False)
    try:
        deleted = svc.batches.delete(
            batch.id, g.tenant, [svc.webhooks.reference("batch", batch.id)]
        )
    except StoreUnavailable as exc:
        raise unavailable("batch store") from exc
    if not deleted:
        raise NotFound("no such batch")
    logger.info("batch deleted")
    return "", 204


@bp.get("/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """One NDJSON line per item, in input order: its latest outcome. ``?status=`` keeps the
    items in that state; ``?after=INDEX`` starts after that item (a download resumed)."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    raw_after = request.args.get("after")
    if raw_after is not None and not _INDEX.fullmatch(raw_after):
        raise BadRequest("after must be an item index (a whole number from 0)")
    after = int(raw_after) if raw_after is not None else -1
    batch = owned_batch(batch_id)
    total = counts_of(batch.doc, batch.shards).total
    rows = _chunks().lines(batch.id, total, status, after)
    try:
        first = list(itertools.islice(rows, 1))  # a Firestore outage answers 503, not a cut stream
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    return Response(_ndjson(itertools.chain(first, rows)), mimetype="application/x-ndjson")


def _ndjson(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    try:
        for line in rows:
            yield json.dumps(line, separators=(",", ":")) + "\n"
    except StoreUnavailable:
        # Too late for a status code: the stream ends short, which the client sees as a line
        # count below the batch's total (and resumes with ?after=).
        logger.warning("results stream cut by a Firestore outage")


@bp.get("/<batch_id>/items/<index>")
def batch_item(batch_id: str, index: str) -> Response:
    """One item's results line; 404 for an index the batch does not have."""
    batch = owned_batch(batch_id)
    if not _INDEX.fullmatch(index) or int(index) >= counts_of(batch.doc, batch.shards).total:
        raise NotFound("no such item in this batch")
    try:
        line = _chunks().item(batch.id, int(index))
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if line is None:
        raise NotFound("no such item in this batch")
    return jsonify(line)


# -- cancel and retry --------------------------------------------------------------------------


@bp.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """200 with the batch: from now on no item starts (an open batch takes no more parts); the
    queued chunks end ``cancelled`` as the sweep reaches them, a running one at its next safe
    point. 409 once the batch has ended."""
    try:
        batch = _chunks().request_cancel(owned_batch(batch_id))
    except AlreadyFinished as exc:
        status = exc.doc.get("status")
        raise Conflict(
            f"the batch is already {status}; a finished batch cannot be cancelled"
        ) from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("batch cancel requested")
    return jsonify(batch_resource(batch))


@bp.post("/<batch_id>/retry")
def retry_batch(batch_id: str) -> Response:
    """200 with the batch: its failed items run again, as new chunks; 409 for a cancelled
    batch. A batch with no failed item is answered as it is."""
    batch = owned_batch(batch_id)
    # Each failed item is queued again: they count against the cap like new ones.
    failed = counts_of(batch.doc, batch.shards).failed
    if not failed and not batch.doc.get("cancel_requested"):
        # Counts move in the same commit as the letters: no failed item to look for. Saves a
        # scan of every ended chunk (thousands for a large batch) and a read of the batch.
        return jsonify(batch_resource(batch))
    try:
        admit(g.tenant, failed)
    except PayloadTooLarge as exc:
        raise Conflict(
            f"the batch has {failed} failed items, more than this tenant's cap of items in "
            "flight: submit them again as smaller batches"
        ) from exc
    try:
        moved = _chunks().retry_failed(batch)
    except BatchCancelled as exc:
        raise Conflict("the batch was cancelled; submit its failed items as a new batch") from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("batch retry", extra={"requeued": moved})
    return jsonify(batch_resource(owned_batch(batch_id) if moved else batch))


# -- events ------------------------------------------------------------------------------------


def _last_event_id() -> EventKey | None:
    raw = (request.headers.get("Last-Event-ID") or "").strip()
    if not raw:
        return None
    key = parse_event_id(raw)
    if key is None:
        raise BadRequest("Last-Event-ID must be the id of an item event this stream sent")
    return key


@bp.get("/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    """``progress`` at once and as counts change, ``item`` (with an id) as each item ends
    (``?results=true``: with its result), then ``done``; with ``Last-Event-ID``, the item events
    after that one (``ingress/batches/events.py``). It takes one of the tenant's ``streams`` slots
    until it ends (429 when none is free), and ends after ``stream_max_lifetime_s`` at the
    latest, between two events."""
    svc = services()
    with_results = request.args.get("results", "").lower() in {"1", "true", "yes"}
    try:
        after = _last_event_id()
    except BadRequest:
        owned_batch(batch_id)  # a batch the tenant cannot see is a 404, whatever the header says
        raise
    resumed = after is not None
    if not resumed and JOB_ID_PATTERN.match(batch_id):
        # Items that end from now on. The cursor is read before the batch, so that an item
        # ended in between is in the first progress event's counts; the batch (and whose it
        # is) is read once, after it.
        try:
            after = svc.chunks.latest_completion(batch_id)
        except StoreUnavailable as exc:
            raise unavailable("job store") from exc
    batch = owned_batch(batch_id)
    store = svc.batches
    hold = svc.holds.acquire(g.tenant)
    settings = svc.settings
    stream = batch_stream(
        svc.chunks,
        batch,
        lambda: store.get(batch_id),
        after,
        resumed,
        settings.sse_ping_s,
        with_results,
        settings.stream_max_lifetime_s,
    )
    logger.info("batch event stream opened", extra={"resumed": resumed})
    return Response(hold.stream(stream), mimetype="text/event-stream", headers=SSE_HEADERS)
