"""``/v1/batches``: submit many inputs of one task at once (JSON or NDJSON), follow their
progress (counts, item events), read the results in input order, cancel, and retry what failed.

Storage and counting: ``ingress/batchstore.py`` and ``schemas/batches.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Request, Response, g, jsonify, request
from pydantic import ValidationError

from ingress.batchstore import Batch as StoredBatch
from ingress.batchstore import BatchCancelled, BatchExists, BatchStore
from ingress.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from ingress.events import SSE_HEADERS
from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from ingress.idempotency import KEY_PATTERN, KeyMismatch, Reservation, fingerprint
from ingress.publisher import PublishFailed
from ingress.requests import has_lone_surrogate, json_body
from ingress.services import Services, services
from ingress.store import AlreadyFinished, StoreUnavailable
from schemas import (
    JOB_ID_PATTERN,
    TASKS,
    JobStatus,
    ProblemItem,
    TaskSpec,
    UnknownTaskError,
    get_task,
)
from schemas.batches import Batch, BatchRequest, BatchStatus, item_line
from schemas.jobs import TERMINAL_STATUSES, new_job_id
from schemas.jsonlog import bind_log_context

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
ITEM_OVERHEAD_BYTES = 64 * 1024
"""Room a job document needs beside its input: an item may be ``MAX_BODY_BYTES`` less this."""
READ_BYTES = 1024 * 1024
"""How much of an NDJSON body is read at a time."""
MAX_REPORTED_ERRORS = 20
"""Invalid items named in a 422; the detail says how many there were in all."""
CREATING_STALE_S = 300.0
"""A batch still being accepted this long after it was created never will be: its request died."""
PROGRESS_EVERY_S = 0.25
"""Least time between two ``progress`` events of a batch stream (item events are not held)."""
CLOCK_SLACK_S = 5.0
"""A batch stream shows items that finished from this long before it opened: the writers'
clocks are not this host's."""


def _unavailable(what: str, svc: Services) -> ServiceUnavailable:
    return ServiceUnavailable(f"the {what} is unavailable; try again", svc.settings.retry_after_s)


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
        raise _unavailable("job store", services()) from exc
    if batch is None or batch.doc.get("tenant") != g.tenant:
        raise NotFound("no such batch")
    return batch


def _resource(batch: StoredBatch) -> dict[str, Any]:
    return Batch.from_documents(batch.id, batch.doc, batch.shards).to_json_dict()


# -- submit ------------------------------------------------------------------------------------


class Items:
    """The validated inputs of a batch, in their stored form, with their sizes in bytes."""

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []
        self.sizes: list[int] = []
        self.errors: list[ProblemItem] = []
        self.bad = 0
        self.first_bad: str | None = None

    def check(self, spec: TaskSpec, value: Any, size: int, loc: list[str | int], name: str) -> None:
        """Validate one item against the task's input schema; keep it, or record why not."""
        problems: list[ProblemItem] = []
        if not isinstance(value, dict):
            problems = [ProblemItem(loc=loc, msg="an item is a JSON object: the task's input")]
        elif has_lone_surrogate(value):
            problems = [ProblemItem(loc=loc, msg="contains an unpaired UTF-16 surrogate escape")]
        else:
            try:
                model = spec.input_model.model_validate(value)
            except ValidationError as exc:
                problems = [
                    ProblemItem(loc=[*loc, *e["loc"]], msg=e["msg"])
                    for e in exc.errors(include_url=False, include_input=False)
                ]
            else:
                self.inputs.append(spec.input_to_store(model.model_dump(mode="json")))
                self.sizes.append(size)
                return
        self.fail(problems, name)

    def fail(self, problems: list[ProblemItem], name: str) -> None:
        self.bad += 1
        if self.first_bad is None:
            where = ".".join(str(p) for p in problems[0].loc[2:])
            self.first_bad = f"{name}{', ' + where if where else ''}: {problems[0].msg}"
        room = MAX_REPORTED_ERRORS - len(self.errors)
        self.errors.extend(problems[: max(room, 0)])

    def raise_if_bad(self, unit: str) -> None:
        if self.bad:
            detail = (
                f"{self.bad} {unit}{'s are' if self.bad > 1 else ' is'} invalid and nothing was "
                f"created; the first: {self.first_bad}"
            )
            raise ValidationFailed(self.errors, detail)


def _spec(task: str | None, loc: list[str | int]) -> TaskSpec:
    if not task:
        raise ValidationFailed([ProblemItem(loc=loc, msg="name the task (?task=NAME)")])
    try:
        return get_task(task)
    except UnknownTaskError:
        known = ", ".join(sorted(TASKS))
        msg = f"unknown task {task!r}; known tasks: {known}"
        raise ValidationFailed([ProblemItem(loc=loc, msg=msg)]) from None


def _too_many(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"a batch holds at most {limit} items; split it")


def _ndjson_items(req: Request, svc: Services) -> tuple[TaskSpec, Items, str]:
    """Read an NDJSON body a line at a time, validating each; only the valid inputs are kept
    (in their stored form), never the body itself. Line numbers count every line, blank ones
    included, as an editor does; blank lines carry no item."""
    settings = svc.settings
    spec = _spec(req.args.get("task"), ["query", "task"])
    limit = settings.max_batch_body_bytes
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"body is {req.content_length} bytes; the limit is {limit}")
    req.max_content_length = limit  # Flask's app-wide backstop is the single job's limit
    max_item = settings.max_body_bytes - ITEM_OVERHEAD_BYTES
    digest = hashlib.sha256(f"{req.path}\x00{spec.name}\x00".encode())
    items = Items()
    for number, raw in enumerate(_body_lines(req, limit, digest), start=1):
        loc: list[str | int] = ["body", "line", number]
        if len(raw) > max_item:
            items.fail(
                [ProblemItem(loc=loc, msg=f"an item is at most {max_item} bytes")],
                f"line {number}",
            )
            continue
        text = raw.strip()
        if not text:
            continue
        if len(items.inputs) + items.bad >= settings.max_batch_items:
            raise _too_many(settings.max_batch_items)
        try:
            value = json.loads(text)
        except UnicodeDecodeError as exc:
            raise BadRequest(f"line {number} is not valid UTF-8") from exc
        except json.JSONDecodeError as exc:
            msg = f"not valid JSON: {exc.msg} at column {exc.colno}"
            items.fail([ProblemItem(loc=loc, msg=msg)], f"line {number}")
            continue
        items.check(spec, value, len(raw), loc, f"line {number}")
    if not items.inputs and not items.bad:
        raise ValidationFailed([ProblemItem(loc=["body"], msg="the batch has no items")])
    items.raise_if_bad("line")
    return spec, items, digest.hexdigest()


def _body_lines(req: Request, limit: int, digest: Any) -> Iterator[bytes]:
    """The body's lines, read a megabyte at a time (werkzeug's ``readline`` reads its input in
    small pieces: 2.5 s for 20,000 lines here); 413 as soon as more than ``limit`` bytes came.
    A line is held whole, so the longest one costs at most ``limit`` bytes of memory."""
    read = 0
    rest = b""
    while chunk := req.stream.read(READ_BYTES):
        read += len(chunk)
        if read > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        digest.update(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _json_items(req: Request, svc: Services) -> tuple[TaskSpec, Items, str, dict[str, str] | None]:
    settings = svc.settings
    req.max_content_length = settings.max_batch_body_bytes
    body = json_body(req, settings.max_batch_body_bytes)
    if isinstance(body, dict) and len(body.get("items") or []) > settings.max_batch_items:
        raise _too_many(settings.max_batch_items)
    try:
        batch_request = BatchRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, prefix=["body"]) from exc
    spec = _spec(batch_request.task, ["body", "task"])
    max_item = settings.max_body_bytes - ITEM_OVERHEAD_BYTES
    items = Items()
    for index, value in enumerate(batch_request.items):
        size = len(json.dumps(value, ensure_ascii=False).encode())
        loc: list[str | int] = ["body", "items", index]
        if size > max_item:
            items.fail(
                [ProblemItem(loc=loc, msg=f"an item is at most {max_item} bytes")],
                f"item {index + 1}",
            )
            continue
        items.check(spec, value, size, loc, f"item {index + 1}")
    items.raise_if_bad("item")
    return spec, items, fingerprint(req.path, body), batch_request.metadata


@bp.post("")
def create_batch() -> tuple[Response, int, dict[str, str]]:
    """202 with the batch once every item is durably queued; 422 naming each bad line (or
    item) and creating nothing when any is invalid."""
    svc = services()
    tenant: str = g.tenant
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not KEY_PATTERN.match(key):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1..255 printable ASCII characters")
    metadata: dict[str, str] | None = None
    if request.mimetype in NDJSON_TYPES:
        spec, items, request_fingerprint = _ndjson_items(request, svc)
    elif request.mimetype == "application/json":
        spec, items, request_fingerprint, metadata = _json_items(request, svc)
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
            raise _unavailable("job store", svc) from exc
        batch_id = reservation.resource_id
    bind_log_context(batch_id=batch_id, task=spec.name)
    headers = {"Location": f"/v1/batches/{batch_id}"}
    try:
        batch = svc.batches.create(batch_id, tenant, spec.name, items.inputs, items.sizes, metadata)
    except BatchExists as exc:
        return _replayed(batch_id, exc.doc, tenant, headers)
    except StoreUnavailable as exc:
        _release(svc, reservation)
        raise _unavailable("job store", svc) from exc
    except PublishFailed as exc:
        _release(svc, reservation)
        raise _unavailable("job queue", svc) from exc
    logger.info("batch queued", extra={"items": len(items.inputs)})
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


def _release(svc: Services, reservation: Reservation | None) -> None:
    if reservation is not None:
        svc.idempotency.release(reservation)


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
        raise _unavailable("job store", services()) from exc
    return Response(_lines(itertools.chain(first, rows)), mimetype="application/x-ndjson")


def _lines(rows: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    try:
        for job_id, doc in rows:
            yield json.dumps(_item(job_id, doc, with_result=True), separators=(",", ":")) + "\n"
    except StoreUnavailable:
        # Too late for a status code: the stream ends short, which the client sees as a
        # line count below the batch's total.
        logger.warning("results stream cut by a Firestore outage")


def _item(job_id: str, doc: dict[str, Any], with_result: bool) -> dict[str, Any]:
    result = None
    if with_result and doc.get("status") == JobStatus.SUCCEEDED.value and doc.get("result"):
        result = get_task(doc["task"]).result_from_store(doc["result"])
    return item_line(job_id, doc, result)


# -- cancel and retry --------------------------------------------------------------------------


@bp.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """200 with the batch: from now on no item starts; the queued ones end ``cancelled`` as the
    sweep reaches them (the counts show it within moments). 409 once nothing is in flight."""
    svc = services()
    owned_batch(batch_id)
    try:
        batch = svc.batches.request_cancel(batch_id, g.tenant)
    except AlreadyFinished as exc:
        status = exc.doc.get("status")
        raise Conflict(
            f"the batch is already {status}; a finished batch cannot be cancelled"
        ) from exc
    except StoreUnavailable as exc:
        raise _unavailable("job store", svc) from exc
    if batch is None:
        raise NotFound("no such batch")
    svc.batches.sweep_in_background(batch_id)
    logger.info("batch cancel requested")
    return jsonify(_resource(batch))


@bp.post("/<batch_id>/retry")
def retry_batch(batch_id: str) -> Response:
    """200 with the batch: each failed item gets a new queued job; 409 for a cancelled batch."""
    svc = services()
    batch = owned_batch(batch_id)
    try:
        requeued = svc.batches.retry_failed(batch)
    except BatchCancelled as exc:
        raise Conflict("the batch was cancelled; submit its failed items as a new batch") from exc
    except StoreUnavailable as exc:
        raise _unavailable("job store", svc) from exc
    logger.info("batch retry", extra={"requeued": requeued})
    return jsonify(_resource(owned_batch(batch_id)))


# -- events ------------------------------------------------------------------------------------


@bp.get("/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    """``progress`` (the batch, counts included) at once and as counts change (at most every
    ``PROGRESS_EVERY_S``), ``item`` as each item finishes (``?results=true``: with its result),
    then ``done`` with the final batch, and the stream closes."""
    svc = services()
    batch = owned_batch(batch_id)
    with_results = request.args.get("results", "").lower() in {"1", "true", "yes"}
    stream = _batch_stream(svc.batches, batch, svc.settings.sse_ping_s, with_results)
    logger.info("batch event stream opened")
    return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _batch_stream(
    store: BatchStore, batch: StoredBatch, ping_s: float, with_results: bool
) -> Iterator[str]:
    # Runs after the view returned: everything it needs is passed in. Two listeners feed one
    # queue: the counter shards (progress) and the batch's items finishing (item events).
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
            wait = ping_s - (now - last_write)
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
    return _sse("item", _item(job_id, doc, with_results))


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
