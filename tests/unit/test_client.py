"""omniclient/client.py against httpx.MockTransport: errors, retries, event streams, uploads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omniclient import client as omniclient
from omniclient.client import OmniClient
from omniclient.errors import MissingApiKey, OmniConnectionError, OmniError
from omniclient.upload import UPLOAD_CHUNK_BYTES

URL = "http://omni.test"
KEY = "key-1"
JOB = {"id": "j1", "task": "embed", "status": "queued"}
BATCH = {"id": "b1", "task": "embed", "status": "running", "counts": {"total": 2}}

Handler = Callable[[httpx.Request], httpx.Response]


class Sleeps(list[float]):
    """Stands in for time.sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Breaking(httpx.SyncByteStream):
    """A response body that sends ``chunks`` and then breaks with ``error`` (or just ends)."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error


def make(handler: Handler, sleeps: Sleeps | None = None) -> OmniClient:
    transport = httpx.MockTransport(handler)
    return OmniClient(
        URL, KEY, transport=transport, sleep=sleeps if sleeps is not None else Sleeps()
    )


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def event_stream(chunks: list[bytes], error: Exception | None = None) -> httpx.Response:
    return httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=Breaking(chunks, error)
    )


def problem(status: int, title: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "/problems/x", "title": title, "status": status, "detail": detail, **extra}
    return httpx.Response(
        status, content=json.dumps(body), headers={"Content-Type": "application/problem+json"}
    )


def test_requests_carry_the_api_key_and_answers_are_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=JOB)

    assert make(handler).get_job("j1") == JOB
    assert seen[0].headers["X-API-Key"] == KEY
    assert seen[0].url == httpx.URL(f"{URL}/v1/jobs/j1")


def test_a_problem_body_becomes_an_omni_error_with_every_field() -> None:
    errors = [{"loc": ["body", "input", "texts"], "msg": "Field required"}]
    client = make(lambda _: problem(422, "Unprocessable Content", "input.texts", errors=errors))

    with pytest.raises(OmniError) as info:
        client.submit("embed", {})

    error = info.value
    assert (error.status, error.title, error.detail) == (
        422,
        "Unprocessable Content",
        "input.texts",
    )
    assert error.errors == errors
    assert isinstance(error.body, dict) and error.body["type"] == "/problems/x"
    assert str(error) == "422 Unprocessable Content: input.texts"


def test_a_body_that_is_not_a_problem_keeps_the_status_and_its_text() -> None:
    client = make(lambda _: httpx.Response(502, text="<html>bad gateway</html>"))

    with pytest.raises(OmniError) as info:
        client.get_batch("b1")

    assert (info.value.status, info.value.title, info.value.detail) == (502, "Bad Gateway", None)
    assert info.value.body == "<html>bad gateway</html>"


def test_503_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    keys: list[str] = []
    answers = [
        problem(503, "Service Unavailable", "store down"),
        httpx.Response(202, json=JOB),
    ]
    answers[0].headers["Retry-After"] = "2"

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return answers.pop(0)

    sleeps = Sleeps()
    assert make(handler, sleeps).submit("embed", {"texts": ["a"]}) == JOB

    assert sleeps == [2.0]
    assert len(keys) == 2 and keys[0] == keys[1]
    uuid.UUID(keys[0])  # a fresh UUID, not a constant


def test_each_submit_has_its_own_idempotency_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json=JOB)

    client = make(handler)
    client.submit("embed", {"texts": ["a"]})
    client.submit("embed", {"texts": ["a"]})
    assert keys[0] != keys[1]


def test_429_without_retry_after_backs_off_and_gives_up_after_max_tries() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return problem(429, "Too Many Requests", "slow down")

    sleeps = Sleeps()
    with pytest.raises(OmniError) as info:
        make(handler, sleeps).get_job("j1")

    assert info.value.status == 429
    assert len(calls) == omniclient.MAX_TRIES
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


def test_retries_stop_when_the_next_wait_would_pass_the_budget() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        response = problem(503, "Service Unavailable", "down")
        response.headers["Retry-After"] = "40"
        return response

    sleeps = Sleeps()
    with pytest.raises(OmniError):
        make(handler, sleeps).get_job("j1")
    assert (calls, sleeps) == (2, [40.0])


def test_4xx_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return problem(409, "Conflict", "job already terminal")

    with pytest.raises(OmniError):
        make(handler).cancel_job("j1")
    assert calls == 1


def test_a_refused_connection_names_the_url_and_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(OmniConnectionError, match="http://omni.test"):
        make(handler).get_job("j1")
    assert calls == 1


def test_a_job_post_that_broke_in_flight_is_replayed_with_its_key_but_a_cancel_is_not() -> None:
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(202, json=JOB)

    assert make(handler).submit("embed", {"texts": ["a"]}) == JOB
    assert keys[0] is not None and keys == [keys[0], keys[0]]

    keys.clear()
    with pytest.raises(OmniConnectionError):
        make(handler).cancel_job("j1")
    assert len(keys) == 1


def test_wait_goes_out_as_prefer_header_or_query_and_is_bounded() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=JOB)

    client = make(handler)
    client.submit("embed", {"texts": ["a"]}, metadata={"k": "v"}, wait=10)
    client.get_job("j1", wait=2.5)

    assert seen[0].headers["Prefer"] == "wait=10"
    assert json.loads(seen[0].content) == {
        "task": "embed",
        "input": {"texts": ["a"]},
        "metadata": {"k": "v"},
    }
    assert seen[1].url.params["wait"] == "3"
    with pytest.raises(ValueError, match="at most 60"):
        client.get_job("j1", wait=61)


def test_an_id_is_one_path_segment() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, json=BATCH)

    make(handler).get_batch("../jobs/x")
    assert paths == ["/v1/batches/..%2Fjobs%2Fx"]


def test_job_events_reconnect_after_a_drop_with_last_event_id() -> None:
    seen: list[httpx.Request] = []
    running = {**JOB, "status": "running"}
    done = {**JOB, "status": "succeeded", "result": {"ok": True}}
    answers = [
        # A ping after an id must not surface as an event of its own.
        lambda r: event_stream(
            [sse("queued", JOB, 1), b": ping\n\n", sse("running", running, 2)],
            httpx.ReadError("connection reset", request=r),
        ),
        lambda r: event_stream([sse("succeeded", done, 3), sse("queued", JOB, 4)]),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)(request)

    sleeps = Sleeps()
    events = list(make(handler, sleeps).job_events("j1"))

    assert [(e.name, e.id) for e in events] == [
        ("queued", "1"),
        ("running", "2"),
        ("succeeded", "3"),
    ]
    assert events[-1].data == done  # nothing read after the terminal event
    assert "Last-Event-ID" not in seen[0].headers
    assert seen[1].headers["Last-Event-ID"] == "2"
    assert seen[1].headers["Accept"] == "text/event-stream"
    assert len(sleeps) == 1


def test_job_events_reconnect_when_the_stream_ends_early() -> None:
    seen: list[httpx.Request] = []
    answers = [
        event_stream([sse("queued", JOB, 1)]),
        event_stream([sse("cancelled", {**JOB, "status": "cancelled"}, 2)]),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    names = [e.name for e in make(handler).job_events("j1")]
    assert names == ["queued", "cancelled"]
    assert seen[1].headers["Last-Event-ID"] == "1"


def test_streams_the_server_ends_cleanly_are_resumed_however_many_there_are() -> None:
    # The server ends each stream at its maximum lifetime, between two events; a job that stays
    # running longer than STREAM_RECONNECTS lifetimes must still be followed to its end.
    seen: list[httpx.Request] = []
    quiet_lifetimes = omniclient.STREAM_RECONNECTS + 3
    answers = [event_stream([sse("running", {**JOB, "status": "running"}, 2), b": ping\n\n"])]
    answers += [event_stream([b": ping\n\n"]) for _ in range(quiet_lifetimes)]
    answers += [event_stream([sse("succeeded", {**JOB, "status": "succeeded"}, 3)])]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    sleeps = Sleeps()
    events = list(make(handler, sleeps).job_events("j1"))

    assert [(e.name, e.id) for e in events] == [("running", "2"), ("succeeded", "3")]
    assert "Last-Event-ID" not in seen[0].headers
    assert [r.headers["Last-Event-ID"] for r in seen[1:]] == ["2"] * (quiet_lifetimes + 1)
    assert sleeps == [omniclient.BACKOFF_S] * (quiet_lifetimes + 1)  # no growing backoff


def test_streams_that_end_cleanly_with_nothing_sent_still_count_as_failures() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return event_stream([sse("running", JOB, 2)] if calls == 1 else [])

    with pytest.raises(OmniConnectionError, match="ended before its last event"):
        list(make(handler).job_events("j1"))
    assert calls == omniclient.STREAM_RECONNECTS + 1  # the first stream, then the empty ones


def test_a_refused_reconnect_is_one_more_try_once_the_stream_was_open() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return event_stream([sse("running", JOB, 4)], httpx.ReadError("reset", request=request))
        if calls == 2:  # the ingress instance is restarting
            raise httpx.ConnectError("Connection refused", request=request)
        assert request.headers["Last-Event-ID"] == "4"
        return event_stream([sse("failed", {**JOB, "status": "failed"}, 5)])

    assert [e.id for e in make(handler).job_events("j1")] == ["4", "5"]
    assert calls == 3


def test_job_events_give_up_after_a_run_of_drops() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return event_stream(
            [b": ping\n\n"], httpx.RemoteProtocolError("peer closed", request=request)
        )

    with pytest.raises(OmniConnectionError, match="broke"):
        list(make(handler).job_events("j1"))
    assert calls == omniclient.STREAM_RECONNECTS + 1


def test_job_events_answer_errors_as_omni_error() -> None:
    client = make(lambda _: problem(404, "Not Found", "no such job"))
    with pytest.raises(OmniError) as info:
        list(client.job_events("nope"))
    assert info.value.status == 404


def test_batch_events_reconnect_and_end_with_done() -> None:
    progress = {**BATCH, "counts": {"total": 2, "succeeded": 1}}
    final = {**BATCH, "status": "succeeded", "counts": {"total": 2, "succeeded": 2}}
    item = {"index": 1, "job_id": "j2", "status": "succeeded"}
    answers = [
        lambda r: event_stream([sse("progress", progress)], httpx.ReadError("reset", request=r)),
        lambda r: event_stream([sse("progress", progress), sse("item", item), sse("done", final)]),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/batches/b1/events"
        return answers.pop(0)(request)

    events = list(make(handler).batch_events("b1"))
    assert [e.name for e in events] == ["progress", "progress", "item", "done"]
    assert events[-1].data == final and events[2].data == item


def test_batch_results_yield_each_line_as_sent() -> None:
    lines = [
        '{"index":0,"job_id":"j1","status":"succeeded","result":{"x":1}}',
        '{"index":1,"job_id":"j2","status":"failed","error":{"code":"e","message":"m"}}',
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = Breaking(
            [(lines[0] + "\n" + lines[1][:20]).encode(), (lines[1][20:] + "\n").encode()]
        )
        return httpx.Response(200, headers={"Content-Type": "application/x-ndjson"}, stream=body)

    client = make(handler)
    assert list(client.batch_results("b1")) == lines
    assert list(client.batch_results("b1", status="failed")) == lines
    assert "status" not in seen[0].url.params
    assert seen[1].url.params["status"] == "failed"


def test_batch_results_that_break_midway_say_how_far_they_got() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = Breaking([b'{"index":0}\n'], httpx.ReadError("reset", request=request))
        return httpx.Response(200, stream=body)

    results = make(handler).batch_results("b1")
    assert next(results) == '{"index":0}'
    with pytest.raises(OmniConnectionError, match="after 1 lines"):
        next(results)


class Recording(httpx.BaseTransport):
    """Reads each request body as the client streams it, piece by piece."""

    def __init__(self, answers: list[httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[tuple[httpx.Request, list[bytes]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        chunks = list(request.stream)
        self.requests.append((request, chunks))
        return self.answers.pop(0)


def ndjson_file(tmp_path: Path, lines: int) -> Path:
    path = tmp_path / "items.jsonl"
    with path.open("w") as file:
        for i in range(lines):
            file.write(json.dumps({"texts": [f"sentence number {i}"]}) + "\n")
    return path


def test_an_ndjson_file_is_streamed_in_pieces_with_its_type_and_task(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 5000)  # ~190 KB: several upload pieces
    transport = Recording([httpx.Response(202, json=BATCH)])
    client = OmniClient(URL, KEY, transport=transport, sleep=Sleeps())

    assert client.submit_batch("embed", path) == BATCH

    request, chunks = transport.requests[0]
    assert request.method == "POST" and request.url.path == "/v1/batches"
    assert request.url.params["task"] == "embed"
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.headers["Content-Length"] == str(path.stat().st_size)
    assert "Idempotency-Key" in request.headers
    assert len(chunks) > 1 and max(map(len, chunks)) <= UPLOAD_CHUNK_BYTES
    assert b"".join(chunks) == path.read_bytes()


def test_an_ndjson_upload_is_read_again_from_the_start_for_a_retry(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 100)
    busy = problem(503, "Service Unavailable", "down")
    busy.headers["Retry-After"] = "1"
    transport = Recording([busy, httpx.Response(202, json=BATCH)])
    client = OmniClient(URL, KEY, transport=transport, sleep=Sleeps())

    with path.open("rb") as file:
        client.submit_batch("embed", file)

    (first, first_body), (second, second_body) = transport.requests
    assert b"".join(first_body) == b"".join(second_body) == path.read_bytes()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_a_list_of_items_is_sent_as_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=BATCH)

    items = ({"texts": [str(i)]} for i in range(3))
    make(handler).submit_batch("embed", items, metadata={"run": "7"})

    assert seen[0].headers["Content-Type"] == "application/json"
    assert json.loads(seen[0].content) == {
        "task": "embed",
        "items": [{"texts": ["0"]}, {"texts": ["1"]}, {"texts": ["2"]}],
        "metadata": {"run": "7"},
    }


def test_batch_actions_post_to_their_paths() -> None:
    paths: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append((request.method, request.url.path))
        return httpx.Response(200, json=BATCH)

    client = make(handler)
    client.cancel_batch("b1")
    client.retry_batch("b1")
    client.get_batch("b1")
    assert paths == [
        ("POST", "/v1/batches/b1/cancel"),
        ("POST", "/v1/batches/b1/retry"),
        ("GET", "/v1/batches/b1"),
    ]


def test_a_client_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="OMNI_API_KEY"):
        OmniClient(URL)
    monkeypatch.setenv("OMNI_API_KEY", "from-env")
    monkeypatch.setenv("OMNI_URL", "http://env.test/")
    with OmniClient() as client:
        assert client.url == "http://env.test"
