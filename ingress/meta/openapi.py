"""``GET /openapi.json`` (no key): the ingress's OpenAPI 3.1 document.

What is generated and what is kept by hand:
- generated: paths, methods and path parameters (the app's ``url_map``); every body's schema (the
  pydantic models in ``schemas/``, their JSON Schema, with every nested model collected into
  ``components.schemas``); task inputs and outputs (the catalogue, ``schemas.tasks.TASKS``); the
  problem+json answers and the rate-limit headers of every ``/v1`` operation.
- kept by hand, in ``ingress/meta/operations.py``: what each operation takes and answers (which
  model, which status codes, headers and query parameters), its summary and tags. A rule in
  ``url_map`` with no entry there is left out of the document, and ``tests/unit/test_openapi.py``
  fails for any such ``/v1`` rule, so the table cannot silently miss a route.

The document is built once per app, on the first request for it: by then every blueprint is
registered, whatever order ``create_app`` registers them in.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ingress.meta.answers import BatchItem, Health, Liveness
from ingress.meta.operations import (
    ERROR_TITLES,
    ID_SCHEMA,
    OPERATIONS,
    PATH_SCHEMAS,
    RATE_LIMIT_HEADERS,
    REF_TEMPLATE,
    Operation,
    schema_ref,
)
from schemas import TASKS, Job, JobRequest, JobStatus, Problem
from schemas.batches import Batch, BatchRequest
from schemas.errors import PROBLEM_CONTENT_TYPE
from schemas.jobs import (
    MAX_METADATA_ITEMS,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    JobSummary,
)
from schemas.webhooks import MAX_URL_CHARS, WebhookDeliveries

bp = Blueprint("openapi", __name__)

EXTENSION = "omni.openapi"
"""Key of the built document in ``app.extensions``."""
SECURED_PREFIX = "/v1/"
"""Paths under it need an API key (``ingress/app.py``'s ``_start_request``)."""
_IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
_RULE_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def documented_rules() -> set[tuple[str, str]]:
    """``(rule, method)`` of every operation the table documents."""
    return set(OPERATIONS)


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``/v1/jobs/<job_id>`` → ``/v1/jobs/{job_id}``."""
    return _RULE_PARAM.sub(r"{\1}", rule)


def _components() -> dict[str, Any]:
    """Every model's JSON Schema, nested ones included, under its own name."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (JobRequest, "validation"),
        (BatchRequest, "validation"),
        (Job, "serialization"),
        (JobSummary, "serialization"),
        (Batch, "serialization"),
        (Problem, "serialization"),
        (WebhookDeliveries, "serialization"),
    ]
    for spec in TASKS.values():
        models += [(spec.input_model, "validation"), (spec.output_model, "serialization")]
    keys, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Health"] = Health.model_json_schema(ref_template=REF_TEMPLATE)
    schemas["Liveness"] = Liveness.model_json_schema(ref_template=REF_TEMPLATE)
    item = BatchItem.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(item.pop("$defs", {}))
    schemas["BatchItem"] = item
    _batch_fields(schemas["Batch"])
    schemas["TaskList"] = _task_list_schema()
    schemas["JobPage"] = _page("jobs", "JobSummary")
    schemas["BatchPage"] = _page("batches", "Batch")
    for envelope in ("JobRequest", "BatchRequest"):
        _narrow_envelope(schemas[envelope])
    schemas["JobSubmission"] = _submission("JobRequest", "input", keys, single=True)
    schemas["BatchSubmission"] = _submission("BatchRequest", "items", keys, single=False)
    schemas.setdefault("JobStatus", {"type": "string", "enum": [s.value for s in JobStatus]})
    return schemas


def _page(items: str, model: str) -> dict[str, Any]:
    """A listing's page (``ingress/pages.py``): the items, and the token of the next page."""
    return {
        "type": "object",
        "title": f"{model}Page",
        "properties": {
            items: {"type": "array", "items": schema_ref(model)},
            "next_page_token": {
                "type": ["string", "null"],
                "description": "Opaque; send as `page_token` for the next page. Null: last page.",
            },
        },
        "required": [items, "next_page_token"],
    }


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
    return {"allOf": [schema_ref(envelope), {"oneOf": variants}]}


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
        "description": ERROR_TITLES[status],
        "content": {PROBLEM_CONTENT_TYPE: {"schema": schema_ref("Problem")}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}},
            **{name: {"schema": {"type": "integer"}} for name in RATE_LIMIT_HEADERS},
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _operation_id(rule: str, method: str) -> str:
    """``get_v1_jobs_job_id`` for ``GET /v1/jobs/<job_id>``."""
    words = re.sub(r"[^0-9A-Za-z]+", "_", _RULE_PARAM.sub(r"\1", rule)).strip("_")
    return f"{method.lower()}_{words}"


def _operation(rule: str, method: str, arguments: list[str], op: Operation) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS.get(name, ID_SCHEMA)}
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
            op = OPERATIONS.get((rule.rule, method))
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
