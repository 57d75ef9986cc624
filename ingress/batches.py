"""``/v1/batches``: submit many inputs of one task at once (JSON or NDJSON), follow their
progress (counts, item events), read the results in input order, cancel, and retry what failed.

The body is read and validated in ``ingress/batchinput.py``, the event stream lives in
``ingress/batchevents.py``; storage and counting in ``ingress/batchstore.py`` and
``schemas/batches.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from ingress import metrics
from ingress.batchevents import batch_stream, render_item
from ingress.batchinput import (
    NDJSON_TYPES,
    WEBHOOK_HEADER,
    json_items,
    ndjson_items,
    ndjson_webhook,
)
from ingress.batchstore import Batch as StoredBatch
from ingress.batchstore import BatchCancelled, BatchExists, BatchStore
from ingress.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingress.events import SSE_HEADERS
from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from ingress.idempotency import KEY_PATTERN, KeyMismatch, Reservation
from ingress.publisher import PublishFailed
from ingress.services import admit, release, services, unavailable
from ingress.store import AlreadyFinished, StoreUnavailable
from ingress.webhookcheck import checked_webhook
from schemas import JOB_ID_PATTERN, JobStatus
from schemas.batches import Batch
from schemas.jobs import new_job_id
from schemas.jsonlog import bind_log_context

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

CREATING_STALE_S = 300.0
"""A batch still being accepted this long after it was created never will be: its request died."""


def _store() -> BatchStore:
    store: BatchStore = services().batches
    return store


def owned_batch(batch_id: str) -> StoredBatch:
    """The tenant's accepted batch; 404 for an id that is malformed, unknown or another
    tenant's, all alike."""
    if not JOB_ID_PATTERN.match(batch_id):
        raise NotFound("no such batch")
    bind_log_context(batch_id=batch_id)
    try:
        batch = _store().get(batch_id)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if batch is None or batch.doc.get("tenant") != g.tenant:
        raise NotFound("no such batch")
    return batch


def _resource(batch: StoredBatch) -> dict[str, Any]:
    return Batch.from_documents(batch.id, batch.doc, batch.shards).to_json_dict()


@bp.post("")
def create_batch() -> tuple[Response, int, dict[str, str]]:
    """202 with the batch once every item is durably queued; 422 naming each bad line (or
    item) and creating nothing when any is invalid. A large body (``LARGE_UPLOAD_BYTES``, or
    of unknown length) first takes one of this process's upload slots: 503 when none is free."""
    svc = services()
    size = request.content_length
    if size is not None and size <= svc.settings.large_upload_bytes:
        return _create_batch()
    with svc.uploads.slot(size):
        return _create_batch()


def _create_batch() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    tenant: str = g.tenant
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not KEY_PATTERN.match(key):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1..255 printable ASCII characters")
    metadata: dict[str, str] | None = None
    if request.mimetype in NDJSON_TYPES:
        spec, items, request_fingerprint = ndjson_items(request, svc.settings)
        where: list[str | int] = (
            ["header", WEBHOOK_HEADER]
            if WEBHOOK_HEADER in request.headers
            else ["query", "webhook"]
        )
        webhook = checked_webhook(ndjson_webhook(request), where)
    elif request.mimetype == "application/json":
        spec, items, request_fingerprint, metadata, webhook = json_items(request, svc.settings)
        webhook = checked_webhook(webhook, ["body", "webhook"])
    else:
        raise UnsupportedMediaType(
            "send the items as application/x-ndjson (one input per line, ?task=NAME) or as "
            f'application/json {{"task", "items"}} (got {request.mimetype or "none"})'
        )
    batch_id = new_job_id()
    reservation: Reservation | None = None
    if key is not None:
        try:
            reservation = svc.idempotency.reserve(tenant, key, request_fingerprint, batch_id)
        except KeyMismatch as exc:
            raise Conflict(str(exc)) from exc
        except StoreUnavailable as exc:
            raise unavailable("job store") from exc
        batch_id = reservation.resource_id
    if reservation is None or not reservation.replayed:  # a replay creates nothing: answered
        admit(tenant, len(items.inputs), reservation)
    bind_log_context(batch_id=batch_id, task=spec.name)
    headers = {"Location": f"/v1/batches/{batch_id}"}
    try:
        batch = svc.batches.create(
            batch_id, tenant, spec.name, items.inputs, items.sizes, metadata, webhook
        )
    except BatchExists as exc:
        return _replayed(batch_id, exc.doc, tenant, headers)
    except StoreUnavailable as exc:
        release(reservation)
        raise unavailable("job store") from exc
    except PublishFailed as exc:
        release(reservation)
        raise unavailable("job queue") from exc
    logger.info("batch queued", extra={"items": len(items.inputs)})
    metrics.batch_submitted(spec.name, len(items.inputs))
    return jsonify(_resource(batch)), 202, headers


def _replayed(
    batch_id: str, doc: dict[str, Any], tenant: str, headers: dict[str, str]
) -> tuple[Response, int, dict[str, str]]:
    """A second request with the same Idempotency-Key and body."""
    failed = Conflict(
        f"the request first sent with this {IDEMPOTENCY_HEADER} failed; use a new key"
    )
    if doc.get("tenant") != tenant or doc.get("state") == "abandoned":
        raise failed
    created = doc.get("created_at")
    if (
        doc.get("state") != "accepted"
        and created is not None
        and (datetime.now(UTC) - created > timedelta(seconds=CREATING_STALE_S))
    ):
        # Its request died mid-way (the instance went down): no answer will come for it.
        services().batches.abandon(batch_id)
        raise failed
    if doc.get("state") != "accepted":
        raise Conflict(
            f"the request first sent with this {IDEMPOTENCY_HEADER} is still being accepted; "
            "ask again in a moment"
        )
    batch = owned_batch(batch_id)
    logger.info("idempotent replay")
    return jsonify(_resource(batch)), 202, {**headers, "Idempotent-Replayed": "true"}


# -- read --------------------------------------------------------------------------------------


@bp.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    return jsonify(_resource(owned_batch(batch_id)))


@bp.get("/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """One NDJSON line per item, in input order: its latest job's status and result or error.
    ``?status=`` keeps only the items whose latest job is in that state."""
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        known = ", ".join(s.value for s in JobStatus)
        raise BadRequest(f"status must be one of {known}")
    batch = owned_batch(batch_id)
    rows = _store().items(batch.id, status)
    try:
        first = list(itertools.islice(rows, 1))  # a Firestore outage answers 503, not a cut stream
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    return Response(_lines(itertools.chain(first, rows)), mimetype="application/x-ndjson")


def _lines(rows: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    try:
        for job_id, doc in rows:
            yield (
                json.dumps(render_item(job_id, doc, with_result=True), separators=(",", ":")) + "\n"
            )
    except StoreUnavailable:
        # Too late for a status code: the stream ends short, which the client sees as a
        # line count below the batch's total.
        logger.warning("results stream cut by a Firestore outage")


# -- cancel and retry --------------------------------------------------------------------------


@bp.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """200 with the batch: from now on no item starts; the queued ones end ``cancelled`` as the
    sweep reaches them (the counts show it within moments). 409 once nothing is in flight."""
    svc = services()
    try:
        batch = svc.batches.request_cancel(owned_batch(batch_id))
    except AlreadyFinished as exc:
        status = exc.doc.get("status")
        raise Conflict(
            f"the batch is already {status}; a finished batch cannot be cancelled"
        ) from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("batch cancel requested")
    return jsonify(_resource(batch))


@bp.post("/<batch_id>/retry")
def retry_batch(batch_id: str) -> Response:
    """200 with the batch: each failed item gets a new queued job; 409 for a cancelled batch."""
    svc = services()
    batch = owned_batch(batch_id)
    # Each failed item becomes a queued job again: they count against the cap like new ones.
    failed = Batch.from_documents(batch.id, batch.doc, batch.shards).counts.failed
    try:
        admit(g.tenant, failed)
    except PayloadTooLarge as exc:
        raise Conflict(
            f"the batch has {failed} failed items, more than this tenant's cap of jobs in "
            "flight: submit them again as smaller batches"
        ) from exc
    try:
        requeued = svc.batches.retry_failed(batch)
    except BatchCancelled as exc:
        raise Conflict("the batch was cancelled; submit its failed items as a new batch") from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("batch retry", extra={"requeued": requeued})
    return jsonify(_resource(owned_batch(batch_id)))


# -- events ------------------------------------------------------------------------------------


@bp.get("/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    """``progress`` (the batch, counts included) at once and as counts change (at most every
    ``PROGRESS_EVERY_S``), ``item`` as each item finishes (``?results=true``: with its result),
    then ``done`` with the final batch, and the stream closes. It takes one of the tenant's
    ``streams`` slots until it ends (429 when none is free), and ends after
    ``stream_max_lifetime_s`` at the latest, between two events."""
    svc = services()
    batch = owned_batch(batch_id)
    with_results = request.args.get("results", "").lower() in {"1", "true", "yes"}
    hold = svc.holds.acquire(g.tenant)
    settings = svc.settings
    stream = batch_stream(
        svc.batches, batch, settings.sse_ping_s, with_results, settings.stream_max_lifetime_s
    )
    logger.info("batch event stream opened")
    return Response(hold.stream(stream), mimetype="text/event-stream", headers=SSE_HEADERS)
