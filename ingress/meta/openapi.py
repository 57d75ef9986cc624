"""``GET /openapi.json`` (no key): the ingress's OpenAPI 3.1 document, generated, never hand-kept.

Paths and methods come from the app's ``url_map``; what each operation takes and answers comes
from ``_OPERATIONS`` below, whose bodies are the pydantic models in ``schemas/`` (their JSON Schema,
with every nested model collected into ``components.schemas``). Task inputs and outputs come from
the catalogue (``schemas.tasks.TASKS``). A rule in ``url_map`` with no entry in ``_OPERATIONS`` is
left out of the document, and ``tests/unit/test_openapi.py`` fails for any such ``/v1`` rule, so
the table cannot silently miss a route.

The document is built once per app, on the first request for it: by then every blueprint is
registered, whatever order ``create_app`` registers them in.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ingress.batches.input import WEBHOOK_HEADER
from schemas import TASKS, Job, JobRequest, JobStatus, Problem
from schemas.batches import Batch, BatchRequest
from schemas.errors import PROBLEM_CONTENT_TYPE
from schemas.jobs import (
    MAX_METADATA_ITEMS,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    JobError,
)
from schemas.webhooks import MAX_URL_CHARS, WebhookDeliveries

bp = Blueprint("openapi", __name__)

EXTENSION = "omni.openapi"
"""Key of the built document in ``app.extensions``."""
REF_TEMPLATE = "#/components/schemas/{model}"
SECURED_PREFIX = "/v1/"
"""Paths under it need an API key (``ingress/app.py``'s ``_start_request``)."""
_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
_RULE_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

_ERROR_TITLES = {
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
_RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
"""On every answer to a tenant with a request rate (IETF draft names)."""


@dataclass(frozen=True)
class _Op:
    """One operation's documentation: the parts ``url_map`` cannot tell."""

    summary: str
    responses: dict[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    public: bool = False
    tags: tuple[str, ...] = field(default=())


def _ref(name: str) -> dict[str, Any]:
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


_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
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
"""An item's place in its batch, from 0 (a path segment)."""
_PATH_SCHEMAS = {"index": _INDEX}
"""Path arguments that are not resource ids."""
QUERY_URL_CHARS = 1000
"""Longest ``?webhook=`` the document promises: printable ASCII, so at most 3,000 bytes encoded."""
_JOB = _ref("Job")
_BATCH = _ref("Batch")
_NDJSON_PART = {"application/x-ndjson": {"schema": {"type": "string"}}}
"""A part: one input of the batch's task per line (blank lines carry no item)."""
_DELIVERIES = _ref("WebhookDeliveries")

_OPERATIONS: dict[tuple[str, str], _Op] = {
    ("/health", "GET"): _Op(
        "Whether this instance reaches Pub/Sub and Firestore",
        {200: _json(_ref("Health"), "Healthy"), 503: _json(_ref("Health"), "A dependency is down")},
        public=True,
        tags=("operations",),
    ),
    ("/health/live", "GET"): _Op(
        "Liveness: this instance answers HTTP (no backend is called)",
        {200: _json(_ref("Liveness"), "Alive")},
        public=True,
        tags=("operations",),
    ),
    ("/metrics", "GET"): _Op(
        "Prometheus metrics (absent when `METRICS_PORT` serves them on a private port)",
        {200: _stream("text/plain", "Prometheus text exposition format")},
        public=True,
        tags=("operations",),
    ),
    ("/openapi.json", "GET"): _Op(
        "This document",
        {200: _json({"type": "object"}, "The OpenAPI 3.1 document")},
        public=True,
        tags=("operations",),
    ),
    ("/v1/tasks", "GET"): _Op(
        "The task catalogue, with each task's input and output JSON Schema",
        {200: _json(_ref("TaskList"), "Every task")},
        errors=(401,),
        tags=("tasks",),
    ),
    ("/v1/jobs", "POST"): _Op(
        "Submit a job",
        {
            202: _json(_JOB, "Queued (or still running after `Prefer: wait`)", Location=_LOCATION),
            200: _json(_JOB, "Finished within `Prefer: wait`", Location=_LOCATION),
        },
        errors=(400, 401, 409, 413, 415, 422, 503),
        parameters=(_IDEMPOTENCY_KEY, _PREFER),
        body={"application/json": {"schema": _ref("JobSubmission")}},
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>", "GET"): _Op(
        "Read a job (`?wait=N`: long poll)",
        {200: _json(_JOB, "The job")},
        errors=(400, *_READ_ERRORS),
        parameters=(_WAIT,),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>/events", "GET"): _Op(
        "The job's events as server-sent events; closes after the terminal event",
        {
            200: _stream("text/event-stream", "`id: <seq>`, `event: <status>`, `data: <job>`"),
            204: {"description": "The client already has the terminal event"},
        },
        errors=(400, *_READ_ERRORS),
        parameters=(_LAST_EVENT_ID,),
        tags=("jobs",),
    ),
    ("/v1/jobs/<job_id>/cancel", "POST"): _Op(
        "Cancel a job",
        {200: _json(_JOB, "The job, cancelled")},
        errors=(*_READ_ERRORS, 409),
        tags=("jobs",),
    ),
    ("/v1/batches", "POST"): _Op(
        "Submit a batch: JSON `{task, items}`, or NDJSON (one input per line) with `?task=`; "
        "`?open=1` makes an open batch that takes parts (`/items`) until `/close`",
        {202: _json(_BATCH, "Every item is queued (an open batch: `open`)", Location=_LOCATION)},
        errors=(400, 401, 408, 409, 413, 415, 422, 503),
        parameters=(
            _IDEMPOTENCY_KEY,
            # Both bounded so that the request line, percent-encoded, stays within gunicorn's
            # 4,094 bytes (a longer one is gunicorn's own 414, before the app sees it).
            _query(
                "task", "The task of an NDJSON body's items.", {"type": "string", "maxLength": 64}
            ),
            _query(
                "open",
                "`1`: an open batch, taking parts until it is closed; its body (the first part) "
                "may be empty. It is cancelled if not closed within the ingress's "
                "`OPEN_BATCH_TTL_S`.",
                {"type": "string", "enum": ["1", "0"]},
            ),
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
            "application/json": {"schema": _ref("BatchSubmission")},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/items", "POST"): _Op(
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
    ("/v1/batches/<batch_id>/close", "POST"): _Op(
        "Close an open batch: no more parts; it ends as any batch does",
        {200: _json(_BATCH, "The batch, closed (closing it again answers the same)")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>", "GET"): _Op(
        "Read a batch and its counts",
        {200: _json(_BATCH, "The batch")},
        errors=_READ_ERRORS,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/results", "GET"): _Op(
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
            _query("status", "Only the items in this state.", _ref("JobStatus")),
            _query(
                "after",
                "Only the items after this index: resumes an interrupted download.",
                _INDEX,
            ),
        ),
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/items/<index>", "GET"): _Op(
        "One item's results line",
        {200: _json(_ref("BatchItem"), "The item's latest outcome")},
        errors=_READ_ERRORS,
        tags=("batches",),
    ),
    ("/v1/batches/<batch_id>/events", "GET"): _Op(
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
    ("/v1/batches/<batch_id>/cancel", "POST"): _Op(
        "Cancel every item not yet started (an open batch takes no more parts)",
        {200: _json(_BATCH, "The batch")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
    ("/v1/jobs/<job_id>/webhook-deliveries", "GET"): _Op(
        "The job's webhook ledger: state, next attempt, every attempt's outcome",
        {200: _json(_DELIVERIES, "The ledger")},
        errors=_READ_ERRORS,
        tags=("webhooks",),
    ),
    ("/v1/jobs/<job_id>/webhook-deliveries", "POST"): _Op(
        "Send the job's webhook again, under the same webhook-id",
        {202: _json(_DELIVERIES, "Due now")},
        errors=(*_READ_ERRORS, 409),
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/webhook-deliveries", "GET"): _Op(
        "The batch's webhook ledger",
        {200: _json(_DELIVERIES, "The ledger")},
        errors=_READ_ERRORS,
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/webhook-deliveries", "POST"): _Op(
        "Send the batch's webhook again, under the same webhook-id",
        {202: _json(_DELIVERIES, "Due now")},
        errors=(*_READ_ERRORS, 409),
        tags=("webhooks",),
    ),
    ("/v1/batches/<batch_id>/retry", "POST"): _Op(
        "Run exactly the failed items again, as new chunks; results show each item's latest "
        "outcome",
        {200: _json(_BATCH, "The batch")},
        errors=(*_READ_ERRORS, 409),
        tags=("batches",),
    ),
}


class _Health(BaseModel):
    """``GET /health``."""

    ok: bool
    pubsub_ok: bool
    firestore_ok: bool
    service: str


class _Liveness(BaseModel):
    """``GET /health/live``."""

    ok: bool
    service: str


class _BatchItem(BaseModel):
    """One line of ``GET /v1/batches/ID/results`` (``schemas.chunks.item_line``), also
    ``GET /v1/batches/ID/items/INDEX`` and the data of an ``item`` event."""

    model_config = ConfigDict(title="BatchItem")

    index: int = Field(ge=0)
    status: JobStatus
    result: dict[str, Any] | None = Field(
        default=None, description="Only when succeeded: the task's result."
    )
    error: JobError | None = Field(default=None, description="Only when failed.")
    attempts: int = Field(ge=0, description="Attempts of the chunk that ran it (0: queued).")


def documented_rules() -> set[tuple[str, str]]:
    """``(rule, method)`` of every operation the table documents."""
    return set(_OPERATIONS)


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``/v1/jobs/<job_id>`` → ``/v1/jobs/{job_id}``."""
    return _RULE_PARAM.sub(r"{\1}", rule)


def _components() -> dict[str, Any]:
    """Every model's JSON Schema, nested ones included, under its own name."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (JobRequest, "validation"),
        (BatchRequest, "validation"),
        (Job, "serialization"),
        (Batch, "serialization"),
        (Problem, "serialization"),
        (WebhookDeliveries, "serialization"),
    ]
    for spec in TASKS.values():
        models += [(spec.input_model, "validation"), (spec.output_model, "serialization")]
    keys, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Health"] = _Health.model_json_schema(ref_template=REF_TEMPLATE)
    schemas["Liveness"] = _Liveness.model_json_schema(ref_template=REF_TEMPLATE)
    item = _BatchItem.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(item.pop("$defs", {}))
    schemas["BatchItem"] = item
    _batch_fields(schemas["Batch"])
    schemas["TaskList"] = _task_list_schema()
    for envelope in ("JobRequest", "BatchRequest"):
        _narrow_envelope(schemas[envelope])
    schemas["JobSubmission"] = _submission("JobRequest", "input", keys, single=True)
    schemas["BatchSubmission"] = _submission("BatchRequest", "items", keys, single=False)
    schemas.setdefault("JobStatus", {"type": "string", "enum": [s.value for s in JobStatus]})
    return schemas


def _batch_fields(schema: dict[str, Any]) -> None:
    """The fields the ingress adds to ``schemas.batches.Batch`` (``ingress/batches/routes.py``'s
    ``batch_resource``) for batches that take parts."""
    timestamp = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    schema["properties"].update(
        {
            "open": {"type": "boolean", "description": "Whether it takes parts (`/items`)."},
            "open_expires_at": {
                **timestamp,
                "description": "An open batch not closed by then is cancelled.",
            },
            "closed_at": {**timestamp, "description": "When an open batch was closed."},
        }
    )


def _narrow_envelope(schema: dict[str, Any]) -> None:
    """State in the envelope's schema what its pydantic validators check (``schemas/jobs.py``'s
    ``Metadata`` and ``Webhook``), so that a request the document calls valid is accepted."""
    properties = schema["properties"]
    properties["metadata"] = {
        "anyOf": [
            {
                "type": "object",
                "maxProperties": MAX_METADATA_ITEMS,
                "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY_CHARS},
                "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
            },
            {"type": "null"},
        ],
        "default": None,
        "description": "Up to 16 short string pairs, returned with the resource.",
    }
    properties["webhook"] = {
        "anyOf": [{"type": "string", "maxLength": MAX_URL_CHARS}, {"type": "null"}],
        "default": None,
        "description": (
            "An https URL on a public address, POSTed once on the terminal state, signed per "
            "Standard Webhooks with the tenant's secret. 422 when it is not (the address rules "
            "and whether the tenant has a secret cannot be stated here)."
        ),
    }


def _submission(
    envelope: str, field_name: str, keys: dict[Any, dict[str, Any]], *, single: bool
) -> dict[str, Any]:
    """The envelope, narrowed to one catalogue task per variant: ``task`` names it, and the
    input (or each item) follows that task's input schema."""
    variants = []
    for spec in TASKS.values():
        ref = keys[(spec.input_model, "validation")]
        value = ref if single else {"type": "array", "items": ref, "minItems": 1}
        variants.append(
            {"properties": {"task": {"const": spec.name}, field_name: value}, "title": spec.name}
        )
    return {"allOf": [_ref(envelope), {"oneOf": variants}]}


def _task_list_schema() -> dict[str, Any]:
    entry = {
        "type": "object",
        "required": ["name", "description", "input_schema", "output_schema"],
        "properties": {
            "name": {"type": "string", "enum": sorted(TASKS)},
            "description": {"type": "string"},
            "input_schema": {"type": "object", "description": "JSON Schema of the input"},
            "output_schema": {"type": "object", "description": "JSON Schema of the result"},
        },
    }
    return {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": entry}},
    }


def _problem(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TITLES[status],
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}},
            **{name: {"schema": {"type": "integer"}} for name in _RATE_LIMIT_HEADERS},
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _operation_id(rule: str, method: str) -> str:
    """``get_v1_jobs_job_id`` for ``GET /v1/jobs/<job_id>``."""
    words = re.sub(r"[^0-9A-Za-z]+", "_", _RULE_PARAM.sub(r"\1", rule)).strip("_")
    return f"{method.lower()}_{words}"


def _operation(rule: str, method: str, arguments: list[str], op: _Op) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(name, _ID)}
        for name in arguments
    ]
    parameters += op.parameters
    responses: dict[str, Any] = {str(code): body for code, body in op.responses.items()}
    responses.update({str(code): _problem(code) for code in op.errors})
    if rule.startswith(SECURED_PREFIX):
        # Every authenticated request counts against its tenant's rate
        # (ingress/limits/ratelimit.py).
        responses["429"] = _problem(429)
    operation: dict[str, Any] = {
        "operationId": _operation_id(rule, method),
        "summary": op.summary,
        "tags": list(op.tags),
        "responses": dict(sorted(responses.items())),
    }
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": op.body}
    if op.public:
        operation["security"] = []
    return operation


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented rule in ``app.url_map``."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            op = _OPERATIONS.get((rule.rule, method))
            if op is None:
                continue  # not part of the API (the console, static files); the test checks /v1
            arguments = sorted(rule.arguments)
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = _operation(
                rule.rule, method, arguments, op
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Omni",
            "version": "1",
            "description": "Asynchronous ML inference: submit jobs and batches, follow them, "
            "read their results. Errors are `application/problem+json` (RFC 9457).",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        # Every operation needs a key unless it says otherwise (``security: []``).
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


# Guards the first build of each app's document; later requests read it without the lock.
_build_lock = threading.Lock()


def document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use and kept on ``app.extensions``."""
    doc: dict[str, Any] | None = app.extensions.get(EXTENSION)
    if doc is None:
        with _build_lock:
            doc = app.extensions.get(EXTENSION)
            if doc is None:
                doc = app.extensions[EXTENSION] = build_document(app)
    return doc


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(current_app._get_current_object()))  # type: ignore[attr-defined]
