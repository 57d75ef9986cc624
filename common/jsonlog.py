"""JSON log lines that Cloud Logging understands, for every Omni process.

One object per line: ``severity``, ``message``, ``time``, ``logger``, plus whatever the current
context carries (``logging.googleapis.com/trace``, ``job_id``, ``tenant``, ``task``) and any
``extra=`` fields the call passes. It lives here, beside the contract, because both services must
write the same fields and neither may import the other.

Usage: ``configure_logging("INFO")`` once at start; ``with log_context(job_id=...):`` around work
on one job; ``logger.info("claimed %s", job_id, extra={"attempt": 2})``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("omni_log_context")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

# Never let these reach a log line, whatever a caller passes in ``extra``.
_REDACTED_KEYS = frozenset({"api_key", "authorization", "x-api-key", "key"})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged in this context (thread or request)."""
    merged = {**_context.get({}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add ``fields`` to the current context until it ends (e.g. for the rest of a request)."""
    _context.set({**_context.get({}), **{k: v for k, v in fields.items() if v is not None}})


def clear_log_context() -> None:
    _context.set({})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
        }
        entry.update(_context.get({}))
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        for key in _REDACTED_KEYS & entry.keys():
            entry[key] = "[redacted]"
        if record.exc_info:
            # Cloud Error Reporting reads the stack from the message itself.
            entry["message"] = f"{entry['message']}\n{self.formatException(record.exc_info)}"
        return json.dumps(entry, default=str, ensure_ascii=False).translate(_LINE_BREAKS)


_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
"""Characters JSON may carry raw but line readers split on (Python's ``splitlines``, some log
shippers): a request path holding one would otherwise cut its access log line in two. Only
strings can hold them, so their ``\\u`` escapes keep the line the same JSON."""


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Send every logger's records to ``stream`` (stdout) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Google clients log every retry at INFO; keep their warnings, drop their chatter.
    for noisy in ("google.api_core", "google.auth", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def trace_fields(project: str, headers: Any) -> dict[str, str]:
    """Cloud Logging trace fields from an incoming request's headers, if it carries a trace.

    Reads W3C ``traceparent`` (``00-TRACE-SPAN-FLAGS``) first, then Google's
    ``X-Cloud-Trace-Context`` (``TRACE/SPAN;o=1``), which Cloud Run's front end adds.
    """
    trace = span = None
    traceparent = headers.get("traceparent", "")
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        trace, span = parts[1], parts[2]
    else:
        cloud = headers.get("X-Cloud-Trace-Context", "")
        if cloud:
            trace, _, rest = cloud.partition("/")
            span = rest.split(";", 1)[0] or None
    if not trace or not all(c in "0123456789abcdefABCDEF" for c in trace):
        return {}
    fields = {TRACE_FIELD: f"projects/{project}/traces/{trace.lower()}"}
    if span:
        fields[SPAN_FIELD] = span
    return fields


def capture_stderr(logger_name: str = "stderr") -> None:
    """Turn whatever native libraries write to file descriptor 2 into JSON log lines.

    TensorFlow's C++ runtime, absl and others print plain text to stderr before (or without)
    Python's logging; a worker's output must stay one JSON object per line. File descriptor 2
    becomes a pipe whose lines a daemon thread logs as WARNING records. Python's own ``sys.stderr``
    follows, since it writes to the same descriptor.
    """
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    captured = logging.getLogger(logger_name)

    def _relay() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # Never let the relay die: a full pipe would block every writer of stderr.
                with contextlib.suppress(Exception):
                    if line.strip():
                        captured.warning(line.rstrip("\n"))

    threading.Thread(target=_relay, name="omni-stderr", daemon=True).start()
