"""``/v1/batches``: submit many inputs of one task at once (JSON or NDJSON), in one request or, for
an open batch (``?open=1``), in parts (``/items``) until it is closed (``/close``); read a batch.

Items are accepted in chunks (``schemas/chunks.py``): the body is read and validated a line at a
time (``ingress/batches/input.py``), each chunk written as soon as it is full
(``ingress/batches/chunkwriter.py``), and the request's chunks accepted in one commit once every
line was valid (``ingress/batches/store.py``), then published. A bad line refuses the whole request
(422 naming it) and removes what it wrote. Results, events, cancel and retry live in
``ingress/batches/reads.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common.jsonlog import bind_log_context
from ingress import metrics
from ingress.access import batch_resource, owned_batch
from ingress.batches.chunkwriter import ChunkTaken, Written
from ingress.batches.input import (
    NDJSON_TYPES,
    WEBHOOK_HEADER,
    Item,
    NdjsonItems,
    Problems,
    json_items,
    ndjson_spec,
    ndjson_webhook,
)
from ingress.batches.store import BatchStore, Part, PartLost, PartRefused
from ingress.errors import (
    BadRequest,
    Conflict,
    StoreUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from ingress.http import request_deadline
from ingress.idempotency import DONE, KEY_PATTERN, KeyMismatch, Reservation
from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from ingress.pages import time_param
from ingress.publisher import PublishFailed
from ingress.services import admit, release, services, unavailable
from ingress.settings import Settings
from ingress.webhooks.check import checked_webhook
from schemas import ProblemItem, TaskSpec, get_task
from schemas.jobs import new_job_id

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

CREATING_STALE_S = 300.0
"""A batch (or part) still being accepted this long after it began never will be: its request
died."""


def _store() -> BatchStore:
    store: BatchStore = services().batches
    return store


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not KEY_PATTERN.match(key):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1..255 printable ASCII characters")
    return key


_Answer = tuple[Response, int, dict[str, str]]


def _with_upload_slot(view: Callable[[], _Answer]) -> _Answer:
    """Run ``view`` holding one of this process's upload slots when the body is large
    (``LARGE_UPLOAD_BYTES``, or of unknown length): 503 when none is free."""
    svc = services()
    size = request.content_length
    if size is not None and size <= svc.settings.large_upload_bytes:
        return view()
    with svc.uploads.slot(size):
        return view()


# -- create ------------------------------------------------------------------------------------


@bp.post("")
def create_batch() -> _Answer:
    """202 with the batch once every item is durably queued; 422 naming each bad line (or
    item), and nothing kept, when any is invalid. ``?open=1`` makes an open batch, whose body
    (the first part) may be empty."""
    return _with_upload_slot(_create_batch)


def _window(settings: Settings, tenant: str) -> int:
    """Chunks of a new batch of ``tenant`` published at once: ``BATCH_WINDOW_CHUNKS`` times the
    tenant's weight (``common/pacing.py``)."""
    weight = settings.tenant_limits.for_tenant(tenant).weight
    return max(1, round(settings.batch_window_chunks * weight))


def _open_flag() -> bool:
    return request.args.get("open", "").lower() in {"1", "true", "yes"}


def _create_batch() -> _Answer:
    svc = services()
    tenant: str = g.tenant
    key = _idempotency_key()
    open_ = _open_flag()
    metadata: dict[str, str] | None = None
    deadline: datetime | None = None
    items: NdjsonItems | list[Item]
    if request.mimetype in NDJSON_TYPES or (open_ and not request.mimetype):
        spec = ndjson_spec(request)
        where: list[str | int] = (
            ["header", WEBHOOK_HEADER]
            if WEBHOOK_HEADER in request.headers
            else ["query", "webhook"]
        )
        webhook = checked_webhook(ndjson_webhook(request), where)
        deadline = time_param("deadline", request.args.get("deadline"))
        items = NdjsonItems(request, svc.settings, spec)
        fingerprint = items.fingerprint
    elif request.mimetype == "application/json":
        form = json_items(request, svc.settings)
        spec, items, metadata = form.spec, form.items, form.metadata
        webhook = checked_webhook(form.webhook, ["body", "webhook"])
        deadline = form.deadline

        def fingerprint() -> str:
            return form.fingerprint

    else:
        raise UnsupportedMediaType(
            "send the items as application/x-ndjson (one input per line, ?task=NAME) or as "
            f'application/json {{"task", "items"}} (got {request.mimetype or "none"})'
        )
    batch_id = new_job_id()
    bind_log_context(batch_id=batch_id, task=spec.name)
    open_ttl_s = svc.settings.open_batch_ttl_s if open_ else None
    try:
        part = svc.batches.begin_create(
            batch_id,
            tenant,
            spec.name,
            metadata,
            webhook,
            open_ttl_s,
            request_deadline(request, deadline),
            _window(svc.settings, tenant),
        )
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    written, count = _write_part(part, spec, items, allow_empty=open_)
    reservation: Reservation | None = None
    if key is not None:
        reservation = _reserve(part, written, tenant, key, fingerprint(), batch_id)
        if reservation.replayed:
            return _replayed(reservation.resource_id, tenant)
    _accept(part, written, count, reservation)
    logger.info("batch queued", extra={"items": count, "chunks": len(written), "open": open_})
    metrics.batch_submitted(spec.name, count)
    headers = {"Location": f"/v1/batches/{batch_id}"}
    return jsonify(batch_resource(owned_batch(batch_id))), 202, headers


def _replayed(batch_id: str, tenant: str) -> _Answer:
    """A second request with the same Idempotency-Key and body."""
    failed = Conflict(
        f"the request first sent with this {IDEMPOTENCY_HEADER} failed; use a new key"
    )
    try:
        doc = _store().document(batch_id)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if doc is None or doc.get("tenant") != tenant or doc.get("state") == "abandoned":
        raise failed
    created = doc.get("created_at")
    if (
        doc.get("state") != "accepted"
        and created is not None
        and (datetime.now(UTC) - created > timedelta(seconds=CREATING_STALE_S))
    ):
        # Its request died mid-way (the instance went down): no answer will come for it.
        _store().abandon(batch_id)
        raise failed
    if doc.get("state") != "accepted":
        raise Conflict(
            f"the request first sent with this {IDEMPOTENCY_HEADER} is still being accepted; "
            "ask again in a moment"
        )
    batch = owned_batch(batch_id)
    logger.info("idempotent replay")
    headers = {"Location": f"/v1/batches/{batch_id}", "Idempotent-Replayed": "true"}
    return jsonify(batch_resource(batch)), 202, headers


# -- parts -------------------------------------------------------------------------------------


@bp.post("/<batch_id>/items")
def append_items(batch_id: str) -> _Answer:
    """Append a part (NDJSON, the limits and validation of one request) to an open batch: 202
    with the batch once the part's items are queued, indexed after the previous part's. One part
    at a time: 409 while another is being appended, and once the batch is closed or
    cancelled."""
    return _with_upload_slot(lambda: _append(batch_id))


def _append(batch_id: str) -> _Answer:
    svc = services()
    tenant: str = g.tenant
    batch = owned_batch(batch_id, counts=False)  # begin_part takes the lease as read here
    key = _idempotency_key()
    if request.mimetype not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            f"send a part as application/x-ndjson, one input per line (got "
            f"{request.mimetype or 'none'})"
        )
    spec = get_task(str(batch.doc["task"]))
    items = NdjsonItems(request, svc.settings, spec)
    try:
        part = svc.batches.begin_part(batch)
    except PartRefused as exc:
        raise Conflict(str(exc)) from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    written, count = _write_part(part, spec, items, allow_empty=False)
    reservation: Reservation | None = None
    if key is not None:
        resource = f"{batch_id}/part-{part.token}"
        reservation = _reserve(part, written, tenant, key, items.fingerprint(), resource)
        if reservation.replayed:
            return _replayed_part(batch_id, reservation)
    _accept(part, written, count, reservation)
    logger.info(
        "batch part queued",
        extra={"part": part.index, "first_index": part.base, "items": count},
    )
    metrics.batch_submitted(spec.name, count)
    return jsonify(batch_resource(owned_batch(batch_id))), 202, {}


def _replayed_part(batch_id: str, reservation: Reservation) -> _Answer:
    """The same part again with the same Idempotency-Key: nothing appended, the batch."""
    record = reservation.record or {}
    if not record.get(DONE):
        created = record.get("created_at")
        if created is not None and datetime.now(UTC) - created > timedelta(
            seconds=CREATING_STALE_S
        ):
            raise Conflict(
                f"the part first sent with this {IDEMPOTENCY_HEADER} failed; use a new key"
            )
        raise Conflict(
            f"the part first sent with this {IDEMPOTENCY_HEADER} is still being accepted; "
            "ask again in a moment"
        )
    logger.info("idempotent part replay")
    batch = owned_batch(batch_id)
    return jsonify(batch_resource(batch)), 202, {"Idempotent-Replayed": "true"}


@bp.post("/<batch_id>/close")
def close_batch(batch_id: str) -> Response:
    """200 with the batch: it takes no more parts, and ends as any batch does once its items
    are done. Closing a closed batch answers the same; 409 while a part is being appended."""
    try:
        _store().close(owned_batch(batch_id, counts=False))
    except PartRefused as exc:
        raise Conflict(str(exc)) from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("batch closed")
    return jsonify(batch_resource(owned_batch(batch_id)))


# -- accepting a request's items -----------------------------------------------------------


def _write_part(
    part: Part, spec: TaskSpec, items: NdjsonItems | list[Item], allow_empty: bool
) -> tuple[list[Written], int]:
    """Write the request's items as pending chunks while they are read; the chunks and the
    item count. On any failure (a bad line: 422 once every line was read; the store; the
    client gone) the chunks written are deleted and the part let go, then the error raised."""
    svc = services()
    writer = svc.batches.chunk_writer(part, svc.settings.chunk_items_for(spec.name))
    problems = items.problems if isinstance(items, NdjsonItems) else Problems()
    try:
        for line, model in items:
            if problems.bad and not writer.stopped:
                # The request will be refused: validate on, to report, but write no more.
                writer.stop()
            writer.add(line, model)
        if not writer.items and not problems.bad and not allow_empty:
            raise ValidationFailed([ProblemItem(loc=["body"], msg="the batch has no items")])
        problems.raise_if_bad("line")
        written = writer.finish()
    except BaseException as exc:
        writer.discard()
        svc.batches.give_up(part)
        if isinstance(exc, StoreUnavailable):
            raise unavailable("job store") from exc
        if isinstance(exc, ChunkTaken):
            raise Conflict(_LOST) from exc
        raise
    return written, writer.items


_LOST = (
    "this part took longer than its lease and another part was appended meanwhile; nothing of "
    "it was kept: send it again"
)


def _reserve(
    part: Part, written: list[Written], tenant: str, key: str, fingerprint: str, resource: str
) -> Reservation:
    """Reserve ``key`` for this request's resource, once its body was read whole (the
    fingerprint covers it). A replay (or a refusal) discards what this request wrote."""
    svc = services()
    try:
        reservation = svc.idempotency.reserve(tenant, key, fingerprint, resource)
    except (KeyMismatch, StoreUnavailable) as exc:
        _discard(part, written)
        if isinstance(exc, KeyMismatch):
            raise Conflict(str(exc)) from exc
        raise unavailable("job store") from exc
    if reservation.replayed:
        _discard(part, written)
    return reservation


def _discard(part: Part, written: list[Written]) -> None:
    svc = services()
    svc.batches.discard(part, written)
    svc.batches.give_up(part)


def _accept(
    part: Part, written: list[Written], count: int, reservation: Reservation | None
) -> None:
    """Admit the items against the tenant's cap, accept them in one commit, publish them."""
    svc = services()
    if count:
        try:
            admit(part.tenant, count, reservation)
        except BaseException:
            _discard(part, written)
            raise
    also = None
    if reservation is not None and not part.creating:

        def also(writer: Any) -> None:
            svc.idempotency.mark_done(reservation, writer)

    try:
        released = svc.batches.accept(part, written, count, also)
    except PartLost as exc:
        _discard(part, written)
        release(reservation)
        doc = svc.batches.document(part.batch_id) or {}
        if doc.get("cancel_requested"):
            raise Conflict("the batch was cancelled; it takes no more parts") from exc
        if part.creating:
            raise unavailable("job store") from exc
        raise Conflict(_LOST) from exc
    except StoreUnavailable as exc:
        # The commit may have landed: the batch is kept from running, never half-counted.
        release(reservation)
        if part.creating:
            svc.batches.abandon(part.batch_id)
        raise unavailable("job store") from exc
    try:
        svc.batches.publish(part, released)  # the held ones are released as chunks end
    except PublishFailed:
        # The part is accepted and durable: the reconciler publishes queued chunks.
        logger.warning("chunks not published; the reconciler will", extra={"chunks": len(released)})
