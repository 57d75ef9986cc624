"""What each ingress operation takes and answers, kept by hand: the table ``OPERATIONS`` that
``ingress/meta/openapi.py`` turns into the OpenAPI document (the schemas themselves are generated
from the pydantic models in ``schemas/``; see that module for what is generated and what is not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingress.batches.input import WEBHOOK_HEADER
from ingress.batches.reads import MAX_BATCH_PAGE
from ingress.pages import MAX_LIMIT
from schemas import TASKS
from schemas.batches import BatchStatus
from schemas.jobs import (
    MAX_CANCEL_AFTER_S,
)
from schemas.webhooks import MAX_URL_CHARS

REF_TEMPLATE = "#/components/schemas/{model}"

ERROR_TITLES = {
    400: "Malformed request (bad JSON, header or query value)",
    401: "No API key, or an unknown one",
    404: "No such resource for this tenant",
    408: "The body did not arrive at the minimum pace (`UPLOAD_MIN_BYTES_PER_S`); nothing was kept",
    409: "State conflict, or an Idempotency-Key reused with another body",
    413: "Body too large",
    415: "Unsupported content type",
    422: "Input fails the task's schema, or unknown task",
    429: (
        "Over the tenant's request rate, items-in-flight cap or open-streams cap; retry after "
        "Retry-After seconds"
    ),
    503: "Pub/Sub or Firestore unreachable; retry after Retry-After seconds",
}
_READ_ERRORS = (401, 404, 503)
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
"""On every answer to a tenant with a request rate (IETF draft names)."""


@dataclass(frozen=True)
class Operation:
    """One operation's documentation: the parts ``url_map`` cannot tell."""

    summary: str
    responses: dict[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    public: bool = False
    tags: tuple[str, ...] = field(default=())


def schema_ref(name: str) -> dict[str, Any]:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _json(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _stream(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _listing(items: str, status: dict[str, Any], most: int) -> tuple[dict[str, Any], ...]:
    """A listing's query parameters (``ingress.pages.listing``)."""
    return (
        _query("status", f"Only {items} in this status.", status),
        _query("task", f"Only {items} of this task.", {"type": "string", "enum": sorted(TASKS)}),
        _query("created_after", "Created at or after (RFC 3339).", _TIME),
        _query("created_before", "Created before (RFC 3339).", _TIME),
        _query(
            "limit",
            f"{items.capitalize()} on a page.",
            {"type": "integer", "minimum": 1, "maximum": most},
        ),
        _query(
            "page_token",
            "The `next_page_token` of the page before (any other value: 400).",
            {"type": "string"},
        ),
    )


ID_SCHEMA = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_LOCATION = {"description": "The new resource's path.", "schema": {"type": "string"}}
_IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    "The same key and body within 24 h returns the same resource; another body answers 409.",
    {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
)
_PREFER = _header(
    "Prefer",
    "`wait=N` (N ≤ 60): hold the answer up to N s; 200 with the finished job if it finished.",
    {"type": "string", "examples": ["wait=10"]},
)
_CANCEL_AFTER = _header(
    "Cancel-After",
    "Seconds from now: a deadline (as `deadline`; the earlier wins), past which what did not "
    "start ends `deadline_exceeded`.",
    {"type": "number", "minimum": 0, "maximum": MAX_CANCEL_AFTER_S},
)
_WAIT = _query(
    "wait",
    "Long poll: answer as soon as the job is terminal, or after this many seconds.",
    {"type": "number", "minimum": 0, "maximum": 60},
)
_LAST_EVENT_ID = _header(
    "Last-Event-ID",
    "Resume after this event id (the events after it, then live).",
    {"type": "string", "pattern": "^[0-9]+$"},
)
_BATCH_LAST_EVENT_ID = _header(
    "Last-Event-ID",
    "Resume after this `item` event: the stream starts with a fresh `progress`, then the item "
    "events that came after it. Ids order completions (`MICROS.CHUNK.POSITION`), not indexes.",
    {"type": "string", "pattern": "^[0-9]{16}\\.[0-9a-z]{1,40}\\.[0-9]{5}$"},
)
_INDEX = {"type": "string", "pattern": "^[0-9]{1,12}$"}
_TIME = {"type": "string", "format": "date-time"}
"""An item's place in its batch, from 0 (a path segment)."""
PATH_SCHEMAS = {"index": _INDEX}
"""Path arguments that are not resource ids."""
QUERY_URL_CHARS = 1000
"""Longest ``?webhook=`` the document promises: printable ASCII, so at most 3,000 bytes encoded."""
_JOB = schema_ref("Job")
_BATCH = schema_ref("Batch")
_NDJSON_PART = {"application/x-ndjson": {"schema": {"type": "string"}}}
"""A part: one input of the batch's task per line (blank lines carry no item)."""
_DELIVERIES = schema_ref("WebhookDeliveries")

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/health", "GET"): Operation(
        "Whether this instance reaches Pub/Sub and Firestore",
        {
            200: _json(schema_ref("Health"), "Healthy"),
            503: _json(schema_ref("Health"), "A dependency is down"),
        },
        public=True,
        tags=("operations",),
    ),
    ("/health/live", "GET"): Operation(
        "Liveness: this instance answers HTTP (no backend is called)",
        {200: _json(schema_ref("Liveness"), "Alive")},
        public=True,
        tags=("operations",),
    ),
    ("/metrics", "GET"): Operation(
        "Prometheus metrics (absent when `METRICS_PORT` serves them on a private port)",
        {200: _stream("text/plain", "Prometheus text exposition format")},
        public=True,
        tags=("operations",),
    ),
    ("/openapi.json", "GET"): Operation(
        "This document",
        {200: _json({"type": "object"}, "The OpenAPI 3.1 document")},
        public=True,
        tags=("operations",),
    ),
    ("/v1/tasks", "GET"): Operation(
        "The task catalogue, with each task's input and output JSON Schema",
        {200: _json(schema_ref("TaskList"), "Every task")},
        errors=(401,),
        tags=("tasks",),
    ),
    ("/v1/jobs", "POST"): Operation(
        "Submit a job",
        {
            202: _json(_JOB, "Queued (or still running after `Prefer: wait`)", Location=_LOCATION),
            200: _json(
                _JOB,
                "Finished within `Prefer: wait`, or answered from the result cache at once "
                "(`timings.cache_hit: true`; no model call)",
                Location=_LOCATION,
            ),
        },
        errors=(400, 401, 409, 413, 415, 422, 503),
        parameters=(_IDEMPOTENCY_KEY, _PREFER, _CANCEL_AFTER),
        body={"application/json": {"schema": schema_ref("JobSubmission")}},
        tags=("jobs",),
    ),
    ("/v1/jobs", "GET"): Operation(
        "List this tenant's jobs, newest first, a page at a time (summaries: no input, no result)",
        {200: _json(schema_ref("JobPage"), "A page of jobs")},
        errors=(400, 401, 503),
        parameters=_listing("jobs", schema_ref("JobStatus"), MAX_LIMIT),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>", "GET"): Operation(
        "Read a job (`?wait=N`: long poll)",
        {200: _json(_JOB, "The job")},
        errors=(400, *_READ_ERRORS),
        parameters=(_WAIT,),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>", "DELETE"): Operation(
        "Delete a job with its result, event log, webhook ledger and result-cache entry; one "
        "not yet ended is cancelled by going",
        {204: {"description": "Deleted"}},
        errors=(*_READ_ERRORS, 409),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>/events", "GET"): Operation(
        "The job's events as server-sent events; closes after the terminal event",
        {
            200: _stream("text/event-stream", "`id: <seq>`, `event: <status>`, `data: <job>`"),
            204: {"description": "The client already has the terminal event"},
        },
        errors=(400, *_READ_ERRORS),
        parameters=(_LAST_EVENT_ID,),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>/cancel", "POST"): Operation(
        "Cancel a job",
        {200: _json(_JOB, "The job, cancelled")},
        errors=(*_READ_ERRORS, 409),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>/retry", "POST"): Operation(
        "Retry a failed job: a new job of the same input, whose `retry_of` names this one",
        {
            202: _json(_JOB, "The new job, queued", Location=_LOCATION),
            200: _json(_JOB, "The new job, finished within `Prefer: wait`", Location=_LOCATION),
        },
        errors=(400, *_READ_ERRORS, 409),
        parameters=(_IDEMPOTENCY_KEY, _PREFER, _CANCEL_AFTER),
        tags=("jobs",),
    ),
    ("/v1/batches", "GET"): Operation(
        "List this tenant's batches, newest first, a page at a time, with their counts "
        "(`status` filters each page as read: a page may hold fewer than `limit`)",
        {200: _json(schema_ref("BatchPage"), "A page of batches")},
        errors=(400, 401, 503),
        parameters=_listing(
            "batches", {"type": "string", "enum": [s.value for s in BatchStatus]}, MAX_BATCH_PAGE
        ),
        tags=("batches",),
    ),
    ("/v1/batches", "POST"): Operation(
        "Submit a batch: JSON `{task, items}`, or NDJSON (one input per line) with `?task=`; "
        "`?open=1` makes an open batch that takes parts (`/items`) until `/close`",
        {202: _json(_BATCH, "Every item is queued (an open batch: `open`)", Location=_LOCATION)},
        errors=(400, 401, 408, 409, 413, 415, 422, 503),
        parameters=(
            _IDEMPOTENCY_KEY,
            # Both bounded so that the request line, percent-encoded, stays within gunicorn's
            # 4,094 bytes (a longer one is gunicorn's own 414, before the app sees it).
            _query("task", "An NDJSON body's task.", {"type": "string", "maxLength": 64}),
            _query(
                "open",
                "`1`: an open batch, taking parts until it is closed; its body (the first part) "
                "may be empty. It is cancelled if not closed within `OPEN_BATCH_TTL_S`.",
                {"type": "string", "enum": ["1", "0"]},
            ),
            _query("deadline", "An NDJSON batch's deadline (the JSON form's `deadline`).", _TIME),
            _CANCEL_AFTER,
            _query(
                "webhook",
                f"An NDJSON batch's webhook URL; prefer the `{WEBHOOK_HEADER}` header, which "
                "request logs never record (they record the query string). The JSON form has "
                f"`webhook` in its body, where it may have up to {MAX_URL_CHARS} characters.",
                {"type": "string", "maxLength": QUERY_URL_CHARS, "pattern": "^[\\x21-\\x7e]*$"},
            ),
            _header(
                WEBHOOK_HEADER,
                "An NDJSON batch's webhook URL, kept out of request logs (a receiver's URL may "
                "carry its token). With `?webhook=` too, both must name the same URL, else 400.",
                {"type": "string", "maxLength": MAX_URL_CHARS, "pattern": "^[\\x21-\\x7e]*$"},
            ),
        ),
        body={
            "application/json": {"schema": schema_ref("BatchSubmission")},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/items", "POST"): Operation(
        "Append a part (NDJSON) to an open batch: its items are indexed after the previous "
        "part's and start running once it is accepted",
        {202: _json(_BATCH, "The part's items are queued (or the same part was sent before)")},
        errors=(400, 401, 404, 408, 409, 413, 415, 422, 503),
        parameters=(
            _header(
                "Idempotency-Key",
                "The same key and part within 24 h append nothing and answer the batch; another "
                "body answers 409.",
                {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            ),
        ),
        body=_NDJSON_PART,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/close", "POST"): Operation(
        "Close an open batch: no more parts; it ends as any batch does",
        {200: _json(_BATCH, "The batch, closed (closing it again answers the same)")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>", "GET"): Operation(
        "Read a batch and its counts",
        {200: _json(_BATCH, "The batch")},
        errors=_READ_ERRORS,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>", "DELETE"): Operation(
        "Delete a batch with its items, results, events and webhook ledger; items not yet run "
        "never run, a running chunk stops",
        {204: {"description": "Deleted"}},
        errors=_READ_ERRORS,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/results", "GET"): Operation(
        "One NDJSON line per item, in input order: `{index, status, result?, error?, attempts}`",
        {
            200: _stream(
                "application/x-ndjson",
                "Each item's latest outcome (`BatchItem` per line). Cut short by an outage: "
                "resume with `?after=` the last index read.",
            )
        },
        errors=(400, *_READ_ERRORS),
        parameters=(
            _query("status", "Only the items in this state.", schema_ref("JobStatus")),
            _query(
                "after",
                "Only the items after this index: resumes an interrupted download.",
                _INDEX,
            ),
        ),
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/items/<index>", "GET"): Operation(
        "One item's results line",
        {200: _json(schema_ref("BatchItem"), "The item's latest outcome")},
        errors=_READ_ERRORS,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/events", "GET"): Operation(
        "Server-sent events: `progress`, `item` (with an id), then `done`",
        {
            200: _stream(
                "text/event-stream",
                "`event: progress` (the batch) at once and as counts change; `id: <cursor>` "
                "`event: item` (a `BatchItem`) as each item ends; `event: done` (the batch)",
            )
        },
        errors=(400, *_READ_ERRORS),
        parameters=(
            _query("results", "`true`: `item` events carry the result.", {"type": "string"}),
            _BATCH_LAST_EVENT_ID,
        ),
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/cancel", "POST"): Operation(
        "Cancel every item not yet started (an open batch takes no more parts)",
        {200: _json(_BATCH, "The batch")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
    ("/v1/jobs/<job_id>/webhook-deliveries", "GET"): Operation(
        "The job's webhook ledger: state, next attempt, every attempt's outcome",
        {200: _json(_DELIVERIES, "The ledger")},
        errors=_READ_ERRORS,
        tags=("webhooks",),
    ),
    ("/v1/jobs/<job_id>/webhook-deliveries", "POST"): Operation(
        "Send the job's webhook again, under the same webhook-id",
        {202: _json(_DELIVERIES, "Due now")},
        errors=(*_READ_ERRORS, 409),
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/webhook-deliveries", "GET"): Operation(
        "The batch's webhook ledger",
        {200: _json(_DELIVERIES, "The ledger")},
        errors=_READ_ERRORS,
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/webhook-deliveries", "POST"): Operation(
        "Send the batch's webhook again, under the same webhook-id",
        {202: _json(_DELIVERIES, "Due now")},
        errors=(*_READ_ERRORS, 409),
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/retry", "POST"): Operation(
        "Run exactly the failed items again, as new chunks; results show each item's latest "
        "outcome",
        {200: _json(_BATCH, "The batch")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
}
