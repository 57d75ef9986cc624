"""The items of ``POST /v1/batches`` and of a part (``POST /v1/batches/ID/items``): an NDJSON stream
validated a line at a time as it arrives, or a JSON document; 422 naming each bad line or item.

Each NDJSON line is validated by the task's compiled validator on the raw bytes
(``model_validate_json``: ~2 µs for an embed line, half of ``json.loads`` and ``model_validate``)
and kept as it came, stripped: a chunk stores its items' input lines (``schemas/chunks.py``). A
line that is not JSON is parsed again by Python's parser only to say why, in the words the API
has always used (its column, "nested deeper", an unpaired surrogate); the guards the compiled
parser does not apply (nesting past ``MAX_JSON_DEPTH``, integers Firestore cannot store) run only
on a line that could hold what they look for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Request
from pydantic import BaseModel, ValidationError

from ingress.errors import MAX_REPORTED_ERRORS, BadRequest, PayloadTooLarge, ValidationFailed
from ingress.http import (
    HUGE_INT,
    MAX_JSON_DEPTH,
    has_huge_int,
    has_lone_surrogate,
    json_body,
    may_hold_surrogate,
    nesting_depth,
)
from ingress.idempotency import fingerprint
from ingress.limits.uploads import UploadPace
from ingress.settings import Settings
from schemas import TASKS, ProblemItem, TaskSpec, UnknownTaskError, get_task
from schemas.batches import BatchRequest

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
ITEM_OVERHEAD_BYTES = 64 * 1024
"""Room a chunk needs beside an item's input: an item may be ``MAX_BODY_BYTES`` less this."""
READ_BYTES = 1024 * 1024
"""How much of an NDJSON body is read at a time."""
_TOO_DEEP = object()
"""Stands for a line the parser refused as too deep (``null`` is a value a line may hold)."""
_LONG_NUMBER = re.compile(rb"\d{19}")
"""Nineteen digits in a row: the shortest integer outside int64 has them (fixed length, one
linear pass)."""
_NOT_AN_OBJECT = "an item is a JSON object: the task's input"


Item = tuple[bytes, BaseModel]
"""A valid item: its input as one JSON line (what its chunk stores) and as the validated model
(what sizes its chunk, ``result_bound``). A plain tuple: one is made per line."""


class Problems:
    """The bad lines (or items) of a request: counted, the first ``MAX_REPORTED_ERRORS``
    kept."""

    def __init__(self) -> None:
        self.errors: list[ProblemItem] = []
        self.bad = 0
        self.first_bad: str | None = None

    @property
    def full(self) -> bool:
        """Whether nothing more will be reported: a further bad line is only counted
        (``bad += 1``), without building the problems nobody will see."""
        return self.first_bad is not None and len(self.errors) >= MAX_REPORTED_ERRORS

    def fail(self, problems: list[ProblemItem], name: str) -> None:
        self.bad += 1
        if self.first_bad is None:
            where = ".".join(str(p) for p in problems[0].loc[3:])
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
    return PayloadTooLarge(f"a request holds at most {limit} items; split it (or send parts)")


WEBHOOK_HEADER = "Webhook-URL"
"""An NDJSON batch's webhook URL as a request header: unlike ``?webhook=``, it stays out of
request logs (a receiver's URL may carry its token)."""


def ndjson_webhook(req: Request) -> str | None:
    """The NDJSON batch's webhook URL, from ``Webhook-URL`` or ``?webhook=`` (400 if both are
    given and differ)."""
    query, header = req.args.get("webhook"), req.headers.get(WEBHOOK_HEADER)
    if query is not None and header is not None and query != header:
        raise BadRequest(f"?webhook= and {WEBHOOK_HEADER} name different URLs; send one")
    return header if header is not None else query


def ndjson_spec(req: Request) -> TaskSpec:
    """The task ``?task=`` names (422 when none or unknown)."""
    return _spec(req.args.get("task"), ["query", "task"])


class NdjsonItems:
    """An NDJSON body's valid items, read and validated a line at a time as they are iterated;
    the bad lines go to ``problems`` (the caller stops writing at the first and raises once
    the body is read). Line numbers count every line, blank ones included, as an editor does;
    blank lines carry no item. Never holds the body, only the line being read."""

    def __init__(self, req: Request, settings: Settings, spec: TaskSpec):
        limit = settings.max_batch_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"body is {req.content_length} bytes; the limit is {limit}")
        req.max_content_length = limit  # Flask's app-wide backstop is the single job's limit
        self._req = req
        self._settings = settings
        self.spec = spec
        self.problems = Problems()
        self._digest = hashlib.sha256(f"{req.path}\x00{spec.name}\x00".encode())
        if webhook := ndjson_webhook(req):
            self._digest.update(f"webhook\x00{webhook}\x00".encode())  # another request
        self.valid = 0

    def fingerprint(self) -> str:
        """The request's ``Idempotency-Key`` fingerprint: complete once the body is read."""
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[Item]:
        settings, problems, spec = self._settings, self.problems, self.spec
        limit = settings.max_batch_body_bytes
        max_items = settings.max_batch_items
        max_item = settings.max_body_bytes - ITEM_OVERHEAD_BYTES
        validate = spec.input_model.model_validate_json
        pace = UploadPace(
            self._req.environ, settings.upload_min_bytes_per_s, settings.upload_grace_s
        )
        lines = _body_lines(self._req, limit, self._digest, max_item, pace)
        for number, raw in enumerate(lines, start=1):
            if len(raw) > max_item:
                msg = f"an item is at most {max_item} bytes"
                problems.fail(
                    [ProblemItem(loc=["body", "line", number], msg=msg)], f"line {number}"
                )
                continue
            text = raw.strip()
            if not text:
                continue
            if self.valid + problems.bad >= max_items:
                raise _too_many(max_items)
            try:
                model = validate(text)
            except ValidationError as exc:
                if problems.full and exc.error_count() > 1:
                    # Reported enough: only counted. Listing a line's errors costs ~1.5 µs
                    # each, a 32 MiB body can hold millions. (A line that is not JSON has one
                    # error, and may yet be a 400: it goes on.)
                    problems.bad += 1
                    continue
                loc: list[str | int] = ["body", "line", number]
                problems.fail(_line_problems(spec, text, exc, loc, number), f"line {number}")
                continue
            guard = _guard(spec, text, model)
            if guard is not None:
                problems.fail(
                    [ProblemItem(loc=["body", "line", number], msg=guard)], f"line {number}"
                )
                continue
            self.valid += 1
            yield text, model


def _guard(spec: TaskSpec, text: bytes, model: BaseModel) -> str | None:
    """Why a line the schema accepts is refused anyway (too deep, a huge integer), or None.
    Each check runs only for a task whose schema lets it happen, on a line that could hold
    what it looks for."""
    free_form, open_int = _schema_gaps(spec.name)
    if (
        free_form
        and text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH
        and nesting_depth(json.loads(text)) > MAX_JSON_DEPTH
    ):
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if (
        open_int
        and _LONG_NUMBER.search(text) is not None
        and has_huge_int(spec.input_to_store(model.model_dump(mode="json")))
    ):
        return HUGE_INT
    return None


@functools.cache
def _schema_gaps(task: str) -> tuple[bool, bool]:
    """Whether ``task``'s input schema has a free-form value (any JSON: any depth, any number)
    and whether it has an integer without both bounds (or a free-form value)."""
    schema = get_task(task).input_model.model_json_schema()
    definitions = schema.get("$defs", {})
    free_form = open_int = False
    stack: list[Any] = [schema]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                stack.append(definitions.get(name, {}))
            continue
        branches = [*node.get("anyOf", ()), *node.get("oneOf", ()), *node.get("allOf", ())]
        stack.extend(branches)
        kind = node.get("type")
        if kind is None and not branches and "enum" not in node and "const" not in node:
            free_form = True
        elif kind == "integer" and ("maximum" not in node or "minimum" not in node):
            open_int = True
        elif kind == "array":
            stack.append(node.get("items", {}))
        elif kind == "object":
            stack.extend(node.get("properties", {}).values())
            extra = node.get("additionalProperties", True)
            if extra is True or (not node.get("properties") and extra is not False):
                free_form = True
            elif isinstance(extra, dict):
                stack.append(extra)
    return free_form, open_int or free_form


def _line_problems(
    spec: TaskSpec, text: bytes, exc: ValidationError, loc: list[str | int], number: int
) -> list[ProblemItem]:
    """What is wrong with a line the task's validator refused."""
    errors = exc.errors(include_url=False, include_input=False)
    if not any(e["type"] == "json_invalid" for e in errors):
        if len(errors) == 1 and not errors[0]["loc"] and errors[0]["type"] == "model_type":
            return [ProblemItem(loc=loc, msg=_NOT_AN_OBJECT)]
        return [ProblemItem(loc=[*loc, *e["loc"]], msg=e["msg"]) for e in errors]
    # Not JSON to the compiled parser: Python's says why, in the API's words.
    try:
        value = json.loads(text)  # linear; too deep raises RecursionError, not a crash
    except UnicodeDecodeError as err:
        raise BadRequest(f"line {number} is not valid UTF-8") from err
    except json.JSONDecodeError as err:
        return [ProblemItem(loc=loc, msg=f"not valid JSON: {err.msg} at column {err.colno}")]
    except RecursionError:
        value = _TOO_DEEP
    if value is _TOO_DEEP or nesting_depth(value) > MAX_JSON_DEPTH:
        return [ProblemItem(loc=loc, msg=f"nested deeper than {MAX_JSON_DEPTH} levels")]
    if not isinstance(value, dict):
        return [ProblemItem(loc=loc, msg=_NOT_AN_OBJECT)]
    if may_hold_surrogate(text) and has_lone_surrogate(value):
        return [ProblemItem(loc=loc, msg="contains an unpaired UTF-16 surrogate escape")]
    # What Python reads but JSON forbids (NaN, Infinity): the compiled parser's reason.
    reason = str((errors[0].get("ctx") or {}).get("error") or errors[0]["msg"])
    return [ProblemItem(loc=loc, msg=f"not valid JSON: {reason}")]


def _body_lines(
    req: Request, limit: int, digest: Any, max_line: int, pace: UploadPace
) -> Iterator[bytes]:
    """The body's lines, read a megabyte at a time (werkzeug's ``readline`` reads its input in
    small pieces: 2.5 s for 20,000 lines here); 413 as soon as more than ``limit`` bytes came.

    A line longer than ``max_line`` is cut to ``max_line + 1`` bytes as it arrives (the caller
    refuses it for its length) and the rest of it is skipped, so the memory a line holds and the
    bytes copied to assemble it stay bounded by ``max_line``, not by the body: a 32 MiB body
    with no newline would otherwise be copied once per megabyte read."""
    read = 0
    rest = b""
    while chunk := pace.read(req.stream, pace.size(READ_BYTES)):
        read += len(chunk)
        if read > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        digest.update(chunk)
        lines = chunk.split(b"\n")
        tail = lines.pop()  # the start of a line the next chunk may go on with
        for line in lines:
            yield (rest + line)[: max_line + 1]
            rest = b""
        rest = (rest + tail)[: max_line + 1]
    if rest:
        yield rest


@dataclass(frozen=True)
class JsonBatch:
    """The JSON form of ``POST /v1/batches``, every item valid."""

    spec: TaskSpec
    items: list[Item]
    fingerprint: str
    metadata: dict[str, str] | None
    webhook: str | None
    deadline: datetime | None = None


def json_items(req: Request, settings: Settings) -> JsonBatch:
    """The JSON form, read whole (it is small) and every item validated before anything is
    written; 422 naming each bad item."""
    limit = settings.max_json_batch_body_bytes
    req.max_content_length = limit
    try:
        body = json_body(
            req,
            limit,
            UploadPace(req.environ, settings.upload_min_bytes_per_s, settings.upload_grace_s),
        )
    except PayloadTooLarge as exc:
        # Parsed whole, a JSON body costs ~24 bytes of memory per byte: large batches stream.
        raise PayloadTooLarge(
            f"{exc.detail}; send a larger batch as NDJSON (Content-Type: application/x-ndjson, "
            f"one input per line, ?task=NAME), up to {settings.max_batch_body_bytes} bytes"
        ) from exc
    if isinstance(body, dict) and len(body.get("items") or []) > settings.max_batch_items:
        raise _too_many(settings.max_batch_items)
    try:
        batch_request = BatchRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, prefix=["body"]) from exc
    spec = _spec(batch_request.task, ["body", "task"])
    max_item = settings.max_body_bytes - ITEM_OVERHEAD_BYTES
    problems = Problems()
    items: list[Item] = []
    for index, value in enumerate(batch_request.items):
        line = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        loc: list[str | int] = ["body", "items", index]
        name = f"item {index + 1}"
        if len(line) > max_item:
            problems.fail([ProblemItem(loc=loc, msg=f"an item is at most {max_item} bytes")], name)
            continue
        checked = _check_value(spec, value, loc)
        if isinstance(checked, list):
            problems.fail(checked, name)
        else:
            items.append((line, checked))
    problems.raise_if_bad("item")
    return JsonBatch(
        spec,
        items,
        fingerprint(req.path, body),
        batch_request.metadata,
        batch_request.webhook,
        batch_request.deadline,
    )


def _check_value(spec: TaskSpec, value: Any, loc: list[str | int]) -> BaseModel | list[ProblemItem]:
    """A parsed item validated against the task's input schema, or what is wrong with it (the
    body was checked for depth and surrogates as a whole)."""
    if not isinstance(value, dict):
        return [ProblemItem(loc=loc, msg=_NOT_AN_OBJECT)]
    try:
        model = spec.input_model.model_validate(value)
    except ValidationError as exc:
        return [
            ProblemItem(loc=[*loc, *e["loc"]], msg=e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
    if has_huge_int(spec.input_to_store(model.model_dump(mode="json"))):
        return [ProblemItem(loc=loc, msg=HUGE_INT)]
    return model
