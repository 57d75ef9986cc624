"""omniclient/client.py against httpx.MockTransport: errors, retries, event streams, uploads."""

from __future__ import annotations

import hashlib
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
from omniclient.upload import UPLOAD_CHUNK_BYTES, Part, plan_parts

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


def test_batch_events_resume_after_the_last_event_id_and_end_with_done() -> None:
    progress = {**BATCH, "counts": {"total": 2, "succeeded": 1}}
    final = {**BATCH, "status": "succeeded", "counts": {"total": 2, "succeeded": 2}}
    first = {"index": 0, "status": "succeeded", "attempts": 1}
    item = {"index": 1, "status": "succeeded", "attempts": 1}
    seen: list[httpx.Request] = []
    answers = [
        lambda r: event_stream(
            [sse("progress", progress), f"id: 17.0000000000.00000\nevent: item\ndata: "
             f"{json.dumps(first)}\n\n".encode()],
            httpx.ReadError("reset", request=r),
        ),
        lambda r: event_stream([sse("progress", progress), sse("item", item), sse("done", final)]),
    ]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/batches/b1/events"
        seen.append(request)
        return answers.pop(0)(request)

    events = list(make(handler).batch_events("b1"))
    assert [e.name for e in events] == ["progress", "item", "progress", "item", "done"]
    assert events[1].id == "17.0000000000.00000" and events[1].data == first
    assert events[-1].data == final and events[3].data == item
    assert "Last-Event-ID" not in seen[0].headers
    assert seen[1].headers["Last-Event-ID"] == "17.0000000000.00000"


def test_batch_results_yield_each_line_as_sent() -> None:
    lines = [
        '{"index":0,"status":"succeeded","result":{"x":1},"attempts":1}',
        '{"index":1,"status":"failed","error":{"code":"e","message":"m"},"attempts":3}',
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/b1":
            return httpx.Response(200, json=BATCH)  # total 2: the download was whole
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


def results_line(index: int) -> bytes:
    return json.dumps({"index": index, "status": "succeeded", "attempts": 1}).encode() + b"\n"


def test_a_results_download_that_breaks_resumes_after_the_last_index_it_yielded() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        after = int(request.url.params.get("after", "-1"))
        if len(seen) == 1:  # two whole lines and half of the third, then the connection drops
            body = [results_line(0) + results_line(1) + results_line(2)[:9]]
            return httpx.Response(200, stream=Breaking(body, httpx.ReadError("reset")))
        return httpx.Response(200, content=b"".join(results_line(i) for i in range(after + 1, 5)))

    sleeps = Sleeps()
    lines = list(make(handler, sleeps).batch_results("b1", status="succeeded"))

    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3, 4]
    assert "after" not in seen[0].url.params
    assert seen[1].url.params["after"] == "1"
    assert seen[1].url.params["status"] == "succeeded"
    assert sleeps == [omniclient.BACKOFF_S]


def test_a_results_download_cut_short_cleanly_resumes_until_the_batch_s_last_item() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/b1":  # 4 items; the first answer stops after 2
            return httpx.Response(200, json={**BATCH, "counts": {"total": 4}})
        after = int(request.url.params.get("after", "-1"))
        seen.append(str(after))
        last = 1 if after < 0 else 3
        return httpx.Response(
            200, content=b"".join(results_line(i) for i in range(after + 1, last + 1))
        )

    lines = list(make(handler).batch_results("b1"))

    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    assert seen == ["-1", "1"]


def test_results_start_after_an_index_and_give_up_after_a_run_of_breaks() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=Breaking([], httpx.ReadError("reset")))

    with pytest.raises(OmniConnectionError, match="after 0 lines"):
        list(make(handler).batch_results("b1", after=41))
    assert len(seen) == omniclient.STREAM_RECONNECTS + 1
    assert {r.url.params["after"] for r in seen} == {"41"}


def test_a_results_line_index_is_read_from_its_start_or_parsed() -> None:
    assert omniclient.line_index('{"index":12,"status":"queued","attempts":0}') == 12
    assert omniclient.line_index('{"status":"queued","index":3}') == 3
    assert omniclient.line_index("not json") is None


def test_one_item_is_read_by_its_index() -> None:
    seen: list[str] = []
    line = {"index": 7, "status": "succeeded", "result": {"x": 1}, "attempts": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=line)

    assert make(handler).get_batch_item("b1", 7) == line
    assert seen == ["/v1/batches/b1/items/7"]


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


class PartsApi(httpx.BaseTransport):
    """An ingress that takes open batches and their parts: records each request and its body,
    appends a part once per Idempotency-Key, and answers ``refuse[part number]`` instead."""

    def __init__(self, refuse: dict[int, Callable[[httpx.Request], httpx.Response]] | None = None):
        self.refuse = refuse or {}
        self.requests: list[tuple[httpx.Request, bytes]] = []
        self.parts: dict[str, bytes] = {}  # Idempotency-Key -> body, in the order appended
        self.state = "open"

    def batch(self) -> dict[str, Any]:
        items = sum(1 for body in self.parts.values() for line in body.split(b"\n") if line.strip())
        return {"id": "b9", "task": "embed", "status": self.state, "counts": {"total": items}}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join(request.stream) if isinstance(request.stream, httpx.SyncByteStream) else b""
        self.requests.append((request, body))
        path = request.url.path
        if path == "/v1/batches" and request.url.params.get("open") == "1":
            return httpx.Response(202, json=self.batch())
        if path == "/v1/batches/b9/items":
            number = len(self.parts) + 1
            if number in self.refuse:
                return self.refuse.pop(number)(request)
            self.parts.setdefault(request.headers["Idempotency-Key"], body)
            return httpx.Response(202, json=self.batch())
        if path == "/v1/batches/b9/close":
            self.state = "running"
            return httpx.Response(200, json=self.batch())
        if path == "/v1/batches/b9/cancel":
            self.state = "cancelled"
            return httpx.Response(200, json=self.batch())
        return httpx.Response(404, json={"title": "Not Found", "status": 404})

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r, _ in self.requests]


def lines_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "parts.jsonl"
    path.write_bytes(text.encode())
    return path


def test_a_file_over_the_item_limit_goes_as_an_open_batch_its_parts_and_a_close(
    tmp_path: Path,
) -> None:
    path = ndjson_file(tmp_path, 10)
    api = PartsApi()
    client = OmniClient(URL, KEY, transport=api, sleep=Sleeps())
    told: list[omniclient.UploadProgress] = []

    closed = client.submit_batch("embed", path, part_items=4, on_upload=told.append)

    assert closed == {"id": "b9", "task": "embed", "status": "running", "counts": {"total": 10}}
    assert api.paths() == [
        "POST /v1/batches",
        "POST /v1/batches/b9/items",
        "POST /v1/batches/b9/items",
        "POST /v1/batches/b9/items",
        "POST /v1/batches/b9/close",
    ]
    opened, empty = api.requests[0]
    assert (opened.url.params["task"], opened.url.params["open"], empty) == ("embed", "1", b"")
    bodies = [body for _, body in api.requests[1:4]]
    assert [body.count(b"\n") for body in bodies] == [4, 4, 2]
    assert b"".join(bodies) == path.read_bytes()
    keys = [r.headers["Idempotency-Key"] for r, _ in api.requests[1:4]]
    assert len(set(keys)) == 3 and all(k.startswith("part-b9-") for k in keys)
    assert all(r.headers["Content-Type"] == "application/x-ndjson" for r, _ in api.requests[1:4])
    accepted = [
        (t.parts_done, t.items_accepted) for t in told if t.sent_bytes in (0, t.total_bytes)
    ]
    assert accepted[0] == (0, 0) and told[-1].parts_done == 3 and told[-1].items_accepted == 10
    assert {t.parts for t in told} == {3} and {t.items for t in told} == {10}
    assert told[-1].sent_bytes == told[-1].total_bytes == path.stat().st_size
    assert [t.sent_bytes for t in told] == sorted(t.sent_bytes for t in told)


def test_a_small_file_is_one_request(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 4)
    transport = Recording([httpx.Response(202, json=BATCH)])
    client = OmniClient(URL, KEY, transport=transport, sleep=Sleeps())
    told: list[omniclient.UploadProgress] = []

    client.submit_batch("embed", path, part_items=4, on_upload=told.append)

    ((request, _),) = transport.requests
    assert request.url.path == "/v1/batches" and "open" not in request.url.params
    assert told[-1].parts == told[-1].parts_done == 1 and told[-1].items_accepted == 4


def test_a_part_sent_again_keeps_its_key_so_it_appends_nothing(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 6)
    busy = problem(503, "Service Unavailable", "store down")
    busy.headers["Retry-After"] = "1"
    api = PartsApi(refuse={2: lambda _: busy})
    client = OmniClient(URL, KEY, transport=api, sleep=Sleeps())

    client.submit_batch("embed", path, part_items=3)

    parts = [
        (r.headers["Idempotency-Key"], body) for r, body in api.requests if "items" in r.url.path
    ]
    assert len(parts) == 3 and parts[1] == parts[2]  # the retry: same key, same bytes
    assert len(api.parts) == 2 and b"".join(api.parts.values()) == path.read_bytes()

    # The same file to the same batch again (an interrupted upload resumed): the same keys.
    again = PartsApi()
    OmniClient(URL, KEY, transport=again, sleep=Sleeps()).submit_batch(
        "embed", path, part_items=3, batch_id="b9"
    )
    assert again.paths()[0] == "POST /v1/batches/b9/items"  # no new batch opened
    assert list(again.parts) == list(api.parts)


def test_a_part_replayed_while_its_first_try_is_being_accepted_asks_again(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 4)
    api = PartsApi(
        refuse={
            1: lambda _: problem(
                409, "Conflict", "another part of this batch is being appended; send it again"
            )
        }
    )
    sleeps = Sleeps()

    OmniClient(URL, KEY, transport=api, sleep=sleeps).submit_batch("embed", path, part_items=2)

    assert len(api.parts) == 2 and sleeps == [omniclient.BACKOFF_S]


def test_a_bad_part_cancels_the_batch_and_names_the_file_s_lines(tmp_path: Path) -> None:
    path = lines_file(tmp_path, '{"texts": ["a"]}\n\n{"texts": ["b"]}\n{"texts": 3}\n')
    errors = [{"loc": ["body", "line", 1, "texts"], "msg": "Input should be a valid list"}]
    api = PartsApi(
        refuse={2: lambda _: problem(422, "Unprocessable Content", "line 1", errors=errors)}
    )
    client = OmniClient(URL, KEY, transport=api, sleep=Sleeps())

    with pytest.raises(OmniError) as info:
        client.submit_batch("embed", path, part_items=2)

    assert info.value.status == 422
    assert info.value.errors == [{"loc": ["body", "line", 4, "texts"], "msg": errors[0]["msg"]}]
    assert "part 2 of 2 (lines 4-4)" in str(info.value) and "b9 was cancelled" in str(info.value)
    assert api.paths()[-1] == "POST /v1/batches/b9/cancel"


def test_a_lost_connection_leaves_the_batch_open_and_says_how_to_resume(tmp_path: Path) -> None:
    path = ndjson_file(tmp_path, 6)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    api = PartsApi(refuse={2: refused})
    with pytest.raises(OmniConnectionError, match="b9 has parts 1..1 of 3 and stays open"):
        OmniClient(URL, KEY, transport=api, sleep=Sleeps()).submit_batch(
            "embed", path, part_items=2
        )
    assert "cancel" not in " ".join(api.paths())


def part_shape(parts: list[Part]) -> list[tuple[int, int, int, int]]:
    return [(p.first_line, p.lines, p.items, p.size) for p in parts]


def test_parts_are_cut_at_lines_by_items_and_by_bytes(tmp_path: Path) -> None:
    line = b'{"texts": ["abc"]}\n'  # 19 bytes
    path = tmp_path / "f.jsonl"
    path.write_bytes(line * 5)

    assert part_shape(plan_parts(path, max_items=2)) == [
        (1, 2, 2, 38),
        (3, 2, 2, 38),
        (5, 1, 1, 19),
    ]
    assert part_shape(plan_parts(path, max_bytes=60)) == [(1, 3, 3, 57), (4, 2, 2, 38)]
    assert len(plan_parts(path)) == 1


def test_blank_lines_travel_with_the_next_item_and_a_long_line_is_a_part_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}\n' + b'{"long": "' + b"x" * 100 + b'"}\n\n')

    parts = plan_parts(path, max_items=1, max_bytes=50)

    assert [(p.first_line, p.lines, p.items) for p in parts] == [(1, 1, 1), (2, 3, 1), (5, 2, 1)]
    assert parts[-1].size > 50
    data = path.read_bytes()
    assert b"".join(data[p.start : p.end] for p in parts) == data
    assert parts[0].digest == hashlib.sha256(data[: parts[0].end]).hexdigest()


def test_a_file_of_only_blank_lines_is_one_part_the_server_refuses(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n\n")
    assert part_shape(plan_parts(path)) == [(1, 2, 0, 2)]
