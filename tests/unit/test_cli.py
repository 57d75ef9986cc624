"""omniclient/cli.py and progress.py through click's CliRunner, the API faked by MockTransport."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from omniclient import cli, progress
from omniclient.client import BatchEvent, OmniClient, UploadProgress
from omniclient.progress import BatchProgress, Tally

KEY = "key-1"
Route = Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers each (method, path) from its route and keeps every request it was sent."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, route: Route) -> None:
        self.routes[(method, path)] = route

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"title": "Not Found", "status": 404})
        return route(request)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    made: list[tuple[str, str]] = []

    def build_client(url: str, api_key: str) -> OmniClient:
        made.append((url, api_key))
        return OmniClient(url, api_key, transport=httpx.MockTransport(fake), sleep=lambda _: None)

    monkeypatch.setattr(cli, "build_client", build_client)
    monkeypatch.setenv("OMNI_API_KEY", KEY)
    monkeypatch.setenv("OMNI_URL", "http://omni.test")
    return fake


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=stdin, catch_exceptions=False)


def reply(status: int, body: dict[str, Any]) -> Route:
    return lambda _: httpx.Response(status, json=body)


def sse_reply(*events: tuple[str, dict[str, Any]]) -> Route:
    def route(_: httpx.Request) -> httpx.Response:
        text = "".join(
            f"id: {n}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
            for n, (name, data) in enumerate(events, start=1)
        )
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, text=text)

    return route


JOB = {"id": "j1", "task": "embed", "status": "queued"}


def batch(status: str, succeeded: int, failed: int = 0, total: int = 4) -> dict[str, Any]:
    counts = {"total": total, "queued": total - succeeded - failed, "running": 0}
    counts |= {"succeeded": succeeded, "failed": failed, "cancelled": 0}
    return {"id": "b1", "task": "embed", "status": status, "counts": counts}


def test_submit_prints_the_job_as_json(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs", reply(202, JOB))

    result = run("submit", "embed", "--input", '{"texts": ["hi"]}', "-m", "run=7", "-m", "a=b=c")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == JOB
    sent = api.requests[0]
    assert sent.headers["X-API-Key"] == KEY
    assert json.loads(sent.content) == {
        "task": "embed",
        "input": {"texts": ["hi"]},
        "metadata": {"run": "7", "a": "b=c"},
    }


def test_submit_reads_input_from_a_file(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/v1/jobs", reply(202, JOB))
    (tmp_path / "in.json").write_text('{"text": "Ada Lovelace"}')

    result = run("submit", "entities", "--input", f"@{tmp_path / 'in.json'}")

    assert result.exit_code == 0, result.stderr
    assert json.loads(api.requests[0].content)["input"] == {"text": "Ada Lovelace"}


@pytest.mark.parametrize("given", ["{not json", "[1, 2]", "@/nonexistent/in.json"])
def test_submit_refuses_input_that_is_not_a_json_object(api: FakeApi, given: str) -> None:
    result = run("submit", "embed", "--input", given)
    assert result.exit_code == 2
    assert "--input" in result.stderr
    assert api.requests == []


def test_submit_wait_follows_the_job_and_exits_by_its_end(api: FakeApi) -> None:
    done = {**JOB, "status": "succeeded", "result": {"dimensions": 384}}
    api.on("POST", "/v1/jobs", reply(202, JOB))
    api.on(
        "GET",
        "/v1/jobs/j1/events",
        sse_reply(("queued", JOB), ("running", {**JOB, "status": "running"}), ("succeeded", done)),
    )

    result = run("submit", "embed", "--input", '{"texts": ["hi"]}', "--wait")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == done  # only the final job: stdout stays parseable
    assert result.stderr.splitlines() == [
        "job j1 queued",
        "#1 queued",
        "#2 running",
        "#3 succeeded",
    ]


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_watch_exits_1_when_the_job_did_not_succeed(api: FakeApi, status: str) -> None:
    end = {**JOB, "status": status}
    if status == "failed":
        end["error"] = {"code": "model_error", "message": "out of memory"}
    api.on("GET", "/v1/jobs/j1/events", sse_reply(("running", JOB), (status, end)))

    result = run("watch", "j1")

    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == status
    last = result.stderr.splitlines()[-1]
    assert last == (
        "#2 failed: model_error: out of memory" if status == "failed" else "#2 cancelled"
    )


def test_get_and_cancel_print_the_job(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", reply(200, JOB))
    api.on("POST", "/v1/jobs/j1/cancel", reply(200, {**JOB, "status": "cancelled"}))

    assert json.loads(run("get", "j1").stdout) == JOB
    assert json.loads(run("cancel", "j1").stdout)["status"] == "cancelled"


def test_an_api_error_is_printed_readably_and_exits_1(api: FakeApi) -> None:
    problem = {
        "type": "/problems/validation-failed",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "2 inputs are invalid",
        "errors": [
            {"loc": ["line", 3, "texts"], "msg": "Field required"},
            {"loc": ["body", "input", "texts", 0], "msg": "Input should be a valid string"},
        ],
    }
    api.on("POST", "/v1/jobs", reply(422, problem))

    result = run("submit", "embed", "--input", "{}")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: 422 Unprocessable Content: 2 inputs are invalid",
        "  line 3 → texts: Field required",
        "  input.texts.0: Input should be a valid string",
    ]


def test_a_missing_api_key_exits_2_naming_the_variable(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMNI_API_KEY")

    result = run("get", "j1")

    assert result.exit_code == 2
    assert "OMNI_API_KEY" in result.stderr
    assert api.requests == []


def test_no_connection_exits_1_with_one_line_naming_the_url(api: FakeApi) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    api.on("GET", "/v1/batches/b1", refuse)

    result = run("--url", "http://elsewhere.test:9", "batch", "status", "b1")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "http://elsewhere.test:9" in result.stderr and "Connection refused" in result.stderr


def batch_stream(final_status: str) -> Route:
    failed = 1 if final_status == "failed" else 0
    return sse_reply(
        ("progress", batch("running", 0)),
        ("item", {"index": 0, "status": "succeeded", "attempts": 1}),
        ("progress", batch("running", 2)),
        ("item", {"index": 2, "status": "succeeded", "attempts": 1}),
        ("done", batch(final_status, 4 - failed, failed)),
    )


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1)])
def test_batch_submit_wait_shows_progress_lines_and_exits_by_status(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: str, code: int
) -> None:
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a line for every event
    api.on("POST", "/v1/batches", reply(202, batch("running", 0)))
    api.on("GET", "/v1/batches/b1/events", batch_stream(status))
    items = tmp_path / "items.jsonl"
    items.write_text('{"texts": ["a"]}\n' * 4)

    result = run("batch", "submit", str(items), "--task", "embed", "--wait")

    assert result.exit_code == code, result.stderr
    assert json.loads(result.stdout)["status"] == status
    lines = result.stderr.splitlines()
    assert lines[0] == "batch b1 accepted: 4 items of embed"
    bars = [line.split(" rate=")[0] for line in lines if line.startswith("progress ")]
    final = {"succeeded": "succeeded=4 failed=0", "failed": "succeeded=3 failed=1"}[status]
    assert bars == [
        "progress 0/4 succeeded=0 failed=0 cancelled=0",
        "progress 1/4 succeeded=1 failed=0 cancelled=0",  # an item event moves it on
        "progress 2/4 succeeded=2 failed=0 cancelled=0",
        "progress 2/4 succeeded=2 failed=0 cancelled=0",  # item 2 may be one of those: no overcount
        f"progress 4/4 {final} cancelled=0",
    ]
    assert lines[-1].startswith(f"batch b1 {status}: 4 items, ")
    sent = api.requests[0]
    assert sent.url.params["task"] == "embed"
    assert sent.headers["Content-Type"] == "application/x-ndjson"
    assert sent.content == items.read_bytes()


def test_plain_progress_lines_come_at_most_once_a_second_and_at_the_end(api: FakeApi) -> None:
    events = [("progress", batch("running", n, total=10)) for n in range(10)]
    api.on(
        "GET",
        "/v1/batches/b1/events",
        sse_reply(*events, ("done", batch("succeeded", 10, total=10))),
    )

    result = run("batch", "watch", "b1")

    assert result.exit_code == 0
    bars = [line for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert [b.split()[1] for b in bars] == ["0/10", "10/10"]


def test_batch_submit_reads_stdin(api: FakeApi) -> None:
    api.on("POST", "/v1/batches", reply(202, batch("running", 0, total=2)))
    body = b'{"texts": ["a"]}\n{"texts": ["b"]}\n'

    result = run("batch", "submit", "-", "--task", "embed", stdin=body)

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == "b1"
    assert api.requests[0].content == body
    assert api.requests[0].headers["Content-Length"] == str(len(body))


def test_batch_results_writes_the_lines_through(api: FakeApi) -> None:
    lines = [
        '{"index":0,"status":"failed","error":{"code":"x","message":"y"},"attempts":3}',
        '{"index":3,"status":"failed","error":{"code":"x","message":"z"},"attempts":3}',
    ]
    api.on(
        "GET",
        "/v1/batches/b1/results",
        lambda _: httpx.Response(200, text="\n".join(lines) + "\n"),
    )

    result = run("batch", "results", "b1", "--status", "failed")

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "".join(line + "\n" for line in lines)
    assert api.requests[0].url.params["status"] == "failed"


def test_batch_results_after_an_index_and_resumed_into_a_file(api: FakeApi, tmp_path: Path) -> None:
    def results(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params.get("after", "-1"))
        lines = [json.dumps({"index": i, "status": "succeeded", "attempts": 1}) for i in range(5)]
        return httpx.Response(200, text="".join(line + "\n" for line in lines[after + 1 :]))

    api.on("GET", "/v1/batches/b1/results", results)
    api.on("GET", "/v1/batches/b1", reply(200, batch("succeeded", 5, total=5)))

    assert [json.loads(line)["index"] for line in run("batch", "results", "b1", "--after", "2")
            .stdout.splitlines()] == [3, 4]  # fmt: skip

    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"index": 0, "status": "succeeded", "attempts": 1}\n'
        '{"index": 1, "status": "succeeded", "attempts": 1}\n{"index": 2, "sta'  # cut mid-line
    )
    result = run("batch", "results", "b1", "-o", str(out))

    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert api.requests[-2].url.params["after"] == "1"  # then the batch: was that all?
    assert "resuming after item 1" in result.stderr
    assert result.stdout == ""


def test_a_results_file_with_no_whole_line_starts_from_the_first_item(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert cli.resume_point(str(out)) is None  # no file yet
    out.write_text('{"index": 0, "st')
    assert cli.resume_point(str(out)) is None and out.read_text() == ""
    long = json.dumps({"index": 9, "result": {"v": "x" * 200_000}})
    out.write_text(f'{{"index": 8}}\n{long}\n')
    assert cli.resume_point(str(out)) == 9


def test_batch_item_and_close_print_what_the_api_answers(api: FakeApi) -> None:
    line = {"index": 3, "status": "failed", "error": {"code": "x", "message": "y"}, "attempts": 3}
    api.on("GET", "/v1/batches/b1/items/3", reply(200, line))
    api.on("POST", "/v1/batches/b1/close", reply(200, batch("running", 0)))

    assert json.loads(run("batch", "item", "b1", "3").stdout) == line
    assert json.loads(run("batch", "close", "b1").stdout)["id"] == "b1"
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("GET", "/v1/batches/b1/items/3"),
        ("POST", "/v1/batches/b1/close"),
    ]


def parts_api(api: FakeApi) -> list[bytes]:
    """Routes for an open batch taking parts; returns the list the parts' bodies go to."""
    parts: list[bytes] = []

    def create(request: httpx.Request) -> httpx.Response:
        assert request.url.params["open"] == "1"
        return httpx.Response(202, json={**batch("open", 0, total=0), "status": "open"})

    def append(request: httpx.Request) -> httpx.Response:
        parts.append(request.read())
        return httpx.Response(202, json=batch("open", 0, total=sum(p.count(b"\n") for p in parts)))

    api.on("POST", "/v1/batches", create)
    api.on("POST", "/v1/batches/b1/items", append)
    api.on("POST", "/v1/batches/b1/close", reply(200, batch("running", 0, total=10)))
    return parts


def test_batch_submit_sends_a_large_file_in_parts_with_one_line_per_part(
    api: FakeApi, tmp_path: Path
) -> None:
    parts = parts_api(api)
    items = tmp_path / "items.jsonl"
    items.write_text('{"texts": ["a"]}\n' * 10)

    result = run("batch", "submit", str(items), "--task", "embed", "--part-items", "4")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["total"] == 10
    assert result.stderr.splitlines() == [
        "upload part 1/3: 4/10 items accepted",
        "upload part 2/3: 8/10 items accepted",
        "upload part 3/3: 10/10 items accepted",
        "batch b1 accepted: 10 items of embed",
    ]
    assert b"".join(parts) == items.read_bytes()
    assert [r.url.path for r in api.requests] == [
        "/v1/batches",
        *["/v1/batches/b1/items"] * 3,
        "/v1/batches/b1/close",
    ]


def test_batch_submit_resumes_an_upload_into_its_open_batch_and_waits(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    parts = parts_api(api)
    api.on("GET", "/v1/batches/b1/events", sse_reply(("done", batch("succeeded", 10, total=10))))
    items = tmp_path / "items.jsonl"
    items.write_text('{"texts": ["a"]}\n' * 10)

    result = run(
        "batch", "submit", str(items), "-t", "embed", "--part-items", "4", "--batch", "b1", "--wait"
    )

    assert result.exit_code == 0, result.stderr
    assert api.requests[0].url.path == "/v1/batches/b1/items"  # no new batch
    assert len(parts) == 3
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert result.stderr.splitlines()[-2] == "progress 10/10 succeeded=10 failed=0 cancelled=0 "\
        "rate=- eta=-"  # fmt: skip


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_batch_cancel_and_retry_print_the_batch(api: FakeApi, action: str) -> None:
    api.on("POST", f"/v1/batches/b1/{action}", reply(200, batch("running", 1)))

    result = run("batch", action, "b1")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == "b1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events(*pairs: tuple[str, dict[str, Any]]) -> Iterator[BatchEvent]:
    return (BatchEvent(name, data) for name, data in pairs)


def test_tally_counts_never_overcount_whichever_order_items_and_progress_come() -> None:
    tally = Tally(Clock())
    for event in events(
        ("progress", batch("running", 1, total=4)),
        ("item", {"index": 0, "status": "succeeded"}),  # already in the progress above
        ("item", {"index": 1, "status": "failed"}),
        ("item", {"index": 1, "status": "succeeded"}),  # retried: its latest status counts
    ):
        tally.apply(event)
    assert (tally.completed, tally.count("succeeded"), tally.count("failed")) == (2, 2, 0)


def test_tally_rate_and_eta_come_from_items_finished_since_watching_began() -> None:
    clock = Clock()
    tally = Tally(clock)
    tally.apply(BatchEvent("progress", batch("running", 2, total=12)))
    assert (tally.rate, tally.eta_s) == (None, None)

    clock.now += 2.0
    tally.apply(BatchEvent("progress", batch("running", 6, total=12)))

    assert tally.rate == 2.0 and tally.eta_s == 3.0
    assert tally.line() == "progress 6/12 succeeded=6 failed=0 cancelled=0 rate=2.0/s eta=3s"


def test_on_a_terminal_one_rich_bar_shows_the_upload_then_the_run() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150)
    sending = UploadProgress("b1", 50, 100, 0, 2, 0, 4)

    with BatchProgress(Tally(), console) as bar:
        bar.upload(sending)
        bar.upload(sending._replace(sent_bytes=100, parts_done=2, items_accepted=4))
        bar.note("batch b1 accepted: 4 items of embed")
        for event in events(("progress", batch("running", 1)), ("done", batch("succeeded", 4))):
            bar.update(event)

    text = out.getvalue()
    assert "upload 2/2" in text and "accepted=4" in text
    assert "batch b1 accepted: 4 items of embed" in text
    assert "batch b1" in text and "4/4" in text and "succeeded=4 failed=0 cancelled=0" in text
    assert "progress " not in text and "upload part" not in text


def test_items_sent_are_estimated_from_bytes_and_never_below_those_accepted() -> None:
    assert progress.items_sent(UploadProgress("b1", 25, 100, 0, 4, 0, 1000)) == 250
    assert progress.items_sent(UploadProgress("b1", 0, 100, 1, 4, 300, 1000)) == 300
    assert progress.items_sent(UploadProgress(None, 10, None, 0, 1, 0, None)) == 0


@pytest.mark.parametrize("kind", ["jobs", "batches"])
def test_listings_page_through_with_their_filters_one_line_an_item(api: FakeApi, kind: str) -> None:
    pages = {
        None: {kind: [{"id": "j3"}, {"id": "j2"}], "next_page_token": "p2"},
        "p2": {kind: [{"id": "j1"}], "next_page_token": None},
    }
    api.on(
        "GET",
        f"/v1/{kind}",
        lambda r: httpx.Response(200, json=pages[r.url.params.get("page_token")]),
    )

    listed = run(kind, "--status", "failed", "--task", "embed", "--after", "2026-12-01T00:00:00Z")

    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == ["j3", "j2", "j1"]
    first = api.requests[0].url.params
    assert (first["status"], first["task"], first["created_after"]) == (
        "failed",
        "embed",
        "2026-12-01T00:00:00Z",
    )
    assert api.requests[1].url.params["page_token"] == "p2"
    assert api.requests[1].url.params["status"] == "failed"


def test_jobs_stops_at_its_limit_without_reading_further_pages(api: FakeApi) -> None:
    api.on(
        "GET",
        "/v1/jobs",
        reply(200, {"jobs": [{"id": "j3"}, {"id": "j2"}], "next_page_token": "p2"}),
    )

    listed = run("jobs", "--limit", "1")

    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == ["j3"]
    assert len(api.requests) == 1


def test_retry_prints_the_new_job(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs/j1/retry", reply(202, {**JOB, "id": "j2", "retry_of": "j1"}))

    printed = json.loads(run("retry", "j1").stdout)

    assert (printed["id"], printed["retry_of"]) == ("j2", "j1")


def test_delete_and_batch_delete_send_delete_and_say_so(api: FakeApi) -> None:
    api.on("DELETE", "/v1/jobs/j1", lambda _: httpx.Response(204))
    api.on("DELETE", "/v1/batches/b1", lambda _: httpx.Response(204))

    assert "job j1 deleted" in run("delete", "j1").stderr
    assert "batch b1 deleted" in run("batch", "delete", "b1").stderr
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("DELETE", "/v1/jobs/j1"),
        ("DELETE", "/v1/batches/b1"),
    ]
