"""common/jsonlog.py: one JSON object per line, with the fields Cloud Logging reads."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common.jsonlog import (
    SPAN_FIELD,
    TRACE_FIELD,
    configure_logging,
    log_context,
    trace_fields,
)


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", stream)
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_carry_severity_message_context_and_extra(captured: io.StringIO) -> None:
    log = logging.getLogger("omni.test")
    with log_context(job_id="j1", tenant="acme"):
        log.warning("claimed %s", "j1", extra={"attempt": 2})
    log.info("outside")
    first, second = lines(captured)
    assert first["severity"] == "WARNING" and first["message"] == "claimed j1"
    assert (first["job_id"], first["tenant"], first["attempt"]) == ("j1", "acme", 2)
    assert "job_id" not in second and second["logger"] == "omni.test"


def test_exceptions_stay_on_one_line_with_the_stack(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("omni.test").exception("failed")
    (entry,) = lines(captured)
    assert entry["severity"] == "ERROR" and "RuntimeError: boom" in str(entry["message"])


def test_characters_line_readers_split_on_stay_escaped(captured: io.StringIO) -> None:
    """A fuzzed request path with U+2028 cut the ingress's access line in two for readers that
    split on it (the tests' own ``splitlines``)."""
    path = "/v1/jobs/a\u2028b\x85c\u2029d"
    logging.getLogger("omni.test").info("GET %s 404", path, extra={"path": path})
    (entry,) = lines(captured)
    assert entry["message"] == f"GET {path} 404" and entry["path"] == path


def test_key_like_extras_are_redacted(captured: io.StringIO) -> None:
    logging.getLogger("omni.test").info("x", extra={"api_key": "sekrit"})
    assert "sekrit" not in captured.getvalue()


def test_trace_fields_from_w3c_and_cloud_headers() -> None:
    w3c = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert trace_fields("p", w3c) == {
        TRACE_FIELD: "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736",
        SPAN_FIELD: "00f067aa0ba902b7",
    }
    cloud = {"X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1"}
    assert (
        trace_fields("p", cloud)[TRACE_FIELD]
        == "projects/p/traces/105445aa7843bc8bf206b12000100000"
    )
    assert trace_fields("p", {}) == {} and trace_fields("p", {"traceparent": "junk"}) == {}
