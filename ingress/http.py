"""HTTP helpers every view shares: JSON request bodies (content type, size and syntax, each with
its own 4xx), server-sent event framing, and the ``?wait=`` / ``Prefer: wait=`` parameters."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Request

from ingress.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ingress.limits.uploads import UploadPace
from schemas.jobs import MAX_CANCEL_AFTER_S

JSON_TYPES = ("application/json",)
MAX_WAIT_S = 60.0
"""Longest ``?wait=`` or ``Prefer: wait=``, seconds (the contract's limit)."""
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Proxies (nginx, Cloud Run's front end with some setups) must pass each event on at once.
    "X-Accel-Buffering": "no",
}
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a body may have. No task input needs more than a few
levels; Firestore refuses documents nested past 20 maps, and Python's parser would overflow its
stack on a body of ``[`` repeated (a 500) long before the size limit."""


def _is_json(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def json_body(request: Request, max_bytes: int, pace: UploadPace | None = None) -> Any:
    """The parsed JSON body. 415 if not JSON, 413 if over ``max_bytes``, 400 if malformed;
    read at ``pace`` when given (a body that may hold an upload slot), else in one read.

    The size is checked before the body is read (from Content-Length) and while it is read
    (chunked bodies), so an oversized body is never held in memory whole.
    """
    if not _is_json(request.mimetype):
        raise UnsupportedMediaType(
            f"send Content-Type: application/json (got {request.mimetype or 'none'})"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {max_bytes}")
    if pace is None:
        raw = request.stream.read(max_bytes + 1)
    else:
        parts: list[bytes] = []
        got = 0
        while got <= max_bytes and (
            chunk := pace.read(request.stream, pace.size(max_bytes + 1 - got))
        ):
            parts.append(chunk)
            got += len(chunk)
        raw = b"".join(parts)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
    body = parsed_json(raw)
    if may_hold_surrogate(raw) and has_lone_surrogate(body):
        # JSON may spell one ("\ud800"), but no store can encode it as UTF-8.
        raise BadRequest("body contains an unpaired UTF-16 surrogate escape")
    return body


def parsed_json(raw: bytes, where: str = "body") -> Any:
    """``raw`` parsed, or ``BadRequest`` naming ``where``: not UTF-8, malformed, too deep.

    Linear in ``raw``: the C parser reads it once (it raises ``RecursionError`` on nesting past
    Python's recursion limit, long before it could overflow the stack), and the depth is then
    measured on the parsed value, whose size is linear in the text. No regular expression runs
    over the body: one that skips strings is quadratic on an unterminated string of escaped
    quotes (32 KiB took 5.7 s, holding the GIL)."""
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{where} is not valid UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise BadRequest(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels") from exc
    if nesting_depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def nesting_depth(value: Any) -> int:
    """The deepest nesting of arrays and objects in a parsed JSON value (``{}`` is 1, a scalar
    0), found without recursion, in one visit of each container."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


INT64 = (-(2**63), 2**63 - 1)
"""The integers Firestore stores; JSON allows any, and one outside would fail the write (a 500)."""


HUGE_INT = f"holds an integer outside {INT64[0]}..{INT64[1]}, which cannot be stored"


def has_huge_int(value: Any) -> bool:
    """Whether ``value`` (an input in its *stored* form: predict's instances, for one, are stored
    as JSON text and may hold any number) has an integer Firestore cannot store. The task
    schemas bound their integers; this is the net under a schema that forgets to."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT64[0] <= value <= INT64[1]
    if isinstance(value, dict):
        return any(has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(has_huge_int(item) for item in value)
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A ``\\uD800``..``\\uDFFF`` escape: the only way JSON text can carry a surrogate (UTF-8 cannot
encode one). Fixed length, no repetition: one linear pass, nothing to backtrack."""


def may_hold_surrogate(raw: bytes) -> bool:
    """Whether JSON text ``raw`` might hold an unpaired surrogate: without a surrogate escape it
    cannot, and the walk over the parsed value (``has_lone_surrogate``) is skipped."""
    return _SURROGATE_ESCAPE.search(raw) is not None


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(item) for item in value)
    return False


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One server-sent event: ``event`` named, ``data`` as compact JSON, ``id`` when given."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def wait_param(raw: str | None) -> float | None:
    """``?wait=N`` as seconds, None when absent; 400 unless 0 ≤ N ≤ 60."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_S:
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}")
    return seconds


def prefer_wait(header: str | None) -> float | None:
    """``Prefer: wait=N`` (RFC 7240) as seconds, capped at 60; None when absent or unreadable.

    A preference the server cannot honour is ignored, not refused (RFC 7240 §2)."""
    match = _PREFER_WAIT.search(header or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else None


def request_deadline(req: Request, requested: datetime | None) -> datetime | None:
    """A job's or batch's deadline: the one the request names (``deadline``) or ``Cancel-After:
    <seconds>`` from now, whichever comes first; 400 for a ``Cancel-After`` that is not
    0..``MAX_CANCEL_AFTER_S``."""
    raw = req.headers.get("Cancel-After")
    if raw is None:
        return requested
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_CANCEL_AFTER_S:
        raise BadRequest(f"Cancel-After must be a number of seconds from 0 to {MAX_CANCEL_AFTER_S}")
    after = datetime.now(UTC) + timedelta(seconds=seconds)
    return min(after, requested) if requested is not None else after
