"""The body of ``POST /v1/batches``: an NDJSON stream or a JSON document, every item validated
against the task's input schema before anything is created (422 naming each bad line or item)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from flask import Request
from pydantic import ValidationError

from ingress.errors import MAX_REPORTED_ERRORS, BadRequest, PayloadTooLarge, ValidationFailed
from ingress.idempotency import fingerprint
from ingress.requests import (
    HUGE_INT,
    MAX_JSON_DEPTH,
    has_huge_int,
    has_lone_surrogate,
    json_body,
    may_hold_surrogate,
    nesting_depth,
)
from ingress.settings import Settings
from schemas import TASKS, ProblemItem, TaskSpec, UnknownTaskError, get_task
from schemas.batches import BatchRequest

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
ITEM_OVERHEAD_BYTES = 64 * 1024
"""Room a job document needs beside its input: an item may be ``MAX_BODY_BYTES`` less this."""
READ_BYTES = 1024 * 1024
"""How much of an NDJSON body is read at a time."""
_TOO_DEEP = object()
"""Stands for a line the parser refused as too deep (``null`` is a value a line may hold)."""


class Items:
    """The validated inputs of a batch, in their stored form, with their sizes in bytes."""

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []
        self.sizes: list[int] = []
        self.errors: list[ProblemItem] = []
        self.bad = 0
        self.first_bad: str | None = None

    def check(
        self,
        spec: TaskSpec,
        value: Any,
        size: int,
        loc: list[str | int],
        name: str,
        surrogates: bool = True,
    ) -> None:
        """Validate one item against the task's input schema; keep it, or record why not.
        ``surrogates``: whether its text may hold an unpaired surrogate (walked only then)."""
        problems: list[ProblemItem] = []
        if not isinstance(value, dict):
            problems = [ProblemItem(loc=loc, msg="an item is a JSON object: the task's input")]
        elif surrogates and has_lone_surrogate(value):
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
                stored = spec.input_to_store(model.model_dump(mode="json"))
                if not has_huge_int(stored):
                    self.inputs.append(stored)
                    self.sizes.append(size)
                    return
                problems = [ProblemItem(loc=loc, msg=HUGE_INT)]
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


def ndjson_items(req: Request, settings: Settings) -> tuple[TaskSpec, Items, str]:
    """Read an NDJSON body a line at a time, validating each; only the valid inputs are kept
    (in their stored form), never the body itself. Line numbers count every line, blank ones
    included, as an editor does; blank lines carry no item."""
    spec = _spec(req.args.get("task"), ["query", "task"])
    limit = settings.max_batch_body_bytes
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"body is {req.content_length} bytes; the limit is {limit}")
    req.max_content_length = limit  # Flask's app-wide backstop is the single job's limit
    max_item = settings.max_body_bytes - ITEM_OVERHEAD_BYTES
    digest = hashlib.sha256(f"{req.path}\x00{spec.name}\x00".encode())
    if webhook := ndjson_webhook(req):
        digest.update(f"webhook\x00{webhook}\x00".encode())  # another webhook, another request
    items = Items()
    for number, raw in enumerate(_body_lines(req, limit, digest, max_item), start=1):
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
            value = json.loads(text)  # linear; too deep raises RecursionError, not a crash
        except UnicodeDecodeError as exc:
            raise BadRequest(f"line {number} is not valid UTF-8") from exc
        except json.JSONDecodeError as exc:
            msg = f"not valid JSON: {exc.msg} at column {exc.colno}"
            items.fail([ProblemItem(loc=loc, msg=msg)], f"line {number}")
            continue
        except RecursionError:
            value = _TOO_DEEP
        if value is _TOO_DEEP or nesting_depth(value) > MAX_JSON_DEPTH:
            msg = f"nested deeper than {MAX_JSON_DEPTH} levels"
            items.fail([ProblemItem(loc=loc, msg=msg)], f"line {number}")
            continue
        items.check(spec, value, len(raw), loc, f"line {number}", may_hold_surrogate(text))
    if not items.inputs and not items.bad:
        raise ValidationFailed([ProblemItem(loc=["body"], msg="the batch has no items")])
    items.raise_if_bad("line")
    return spec, items, digest.hexdigest()


def _body_lines(req: Request, limit: int, digest: Any, max_line: int) -> Iterator[bytes]:
    """The body's lines, read a megabyte at a time (werkzeug's ``readline`` reads its input in
    small pieces: 2.5 s for 20,000 lines here); 413 as soon as more than ``limit`` bytes came.

    A line longer than ``max_line`` is cut to ``max_line + 1`` bytes as it arrives (the caller
    refuses it for its length) and the rest of it is skipped, so the memory a line holds and the
    bytes copied to assemble it stay bounded by ``max_line``, not by the body: a 32 MiB body
    with no newline would otherwise be copied once per megabyte read."""
    read = 0
    rest = b""
    while chunk := req.stream.read(READ_BYTES):
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


def json_items(
    req: Request, settings: Settings
) -> tuple[TaskSpec, Items, str, dict[str, str] | None, str | None]:
    limit = settings.max_json_batch_body_bytes
    req.max_content_length = limit
    try:
        body = json_body(req, limit)
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
    return spec, items, fingerprint(req.path, body), batch_request.metadata, batch_request.webhook
