"""Webhooks end to end: the real ingress, worker and sender (``python -m webhooks``) on the
emulators, POSTing to a receiver on 127.0.0.1 that this module runs.

The webhook ingress and sender allow private addresses (``WEBHOOK_ALLOW_PRIVATE=1``): a test may
only send traffic to loopback. The guard that refuses private addresses is tested against the
session's strict ingress (at submit) and an in-process strict sender on collections of its own
(at delivery), where the receiver shows that no connection was made.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
import requests
from google.cloud import firestore
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from emulators.process import free_port, stop_group, wait_until_answers
from schemas.batches import COUNTERS
from schemas.jobs import new_job_document, new_job_id
from schemas.webhooks import SigningSecrets
from tests.support import json_lines, python_env
from tests.support.stacks import KEYS, Emulators, Service, start_ingress
from webhooks.delivery import attempt
from webhooks.outbox import Outbox
from webhooks.sender import Sender
from webhooks.settings import SenderSettings

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"omni-webhook-test-secret-32bytes").decode()
SECRET_B = "whsec_" + base64.b64encode(b"tenant-b's-own-webhook-secret-32").decode()
SECRETS = f"tenant-a:{SECRET},tenant-b:{SECRET_B}"
BACKOFF_S = (0.3, 0.6)
"""The test sender's retry schedule: three attempts in all, within a second."""
TIMEOUT_S = 10
WAIT_S = 60.0
"""Longest a test waits for a POST to arrive (a job runs on the shared worker first)."""
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers each path from its script (then 200), records
    every request, and counts every connection it accepts."""

    server: ThreadingHTTPServer
    scripts: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, statuses: list[int]) -> None:
        with self.lock:
            self.scripts[path] = list(statuses)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = WAIT_S) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(got := self.on(path)) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.on(path))} of {count} POSTs in {timeout_s} s")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            rec = state["r"]
            with rec.lock:
                rec.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.monotonic())
                )
                script = rec.scripts.get(self.path) or []
                status = script.pop(0) if script else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    class CountingServer(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            with state["r"].lock:
                state["r"].connections += 1
            return True

    server = CountingServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hook_ingress(emulators: Emulators, log_dir: Path, worker: Service) -> Iterator[Service]:
    """An ingress where tenant-a has a signing secret (tenant-b has none) and loopback is
    allowed; it shares the session's jobs, so the session's worker runs them."""
    service = start_ingress(
        emulators,
        log_dir,
        "ingress-webhooks",
        WEBHOOK_SECRETS=SECRETS,
        WEBHOOK_ALLOW_PRIVATE="1",
    )
    yield service
    stop_group(service.process, 30)


@dataclass(frozen=True)
class RunningSender:
    log_path: Path
    url: str
    """Its health and metrics server."""


@pytest.fixture(scope="module")
def sender(emulators: Emulators, log_dir: Path) -> Iterator[RunningSender]:
    """``python -m webhooks`` on the session's collections, polling every 0.2 s."""
    log_path = log_dir / "webhooks.log"
    port = free_port()
    env = python_env(
        WEBHOOK_HTTP_HOST="127.0.0.1",
        WEBHOOK_HTTP_PORT=str(port),
        **emulators.env(),
        WEBHOOK_SECRETS=SECRETS,
        WEBHOOK_ALLOW_PRIVATE="1",
        WEBHOOK_BACKOFF_S=",".join(str(s) for s in BACKOFF_S),
        WEBHOOK_POLL_S="0.2",
        WEBHOOK_BATCH_CHECK_S="0.5",
        WEBHOOK_TIMEOUT_S="5",
    )
    with log_path.open("wb") as log:
        process = Popen(
            [sys.executable, "-m", "webhooks"],
            env=env,
            stdin=DEVNULL,
            stdout=log,
            stderr=STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not any(
            line.get("message") == "webhook sender running" for line in json_lines(log_path)
        ):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the sender did not start"
            time.sleep(0.1)
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", process, 30, "webhooks")
        yield RunningSender(log_path, f"http://127.0.0.1:{port}")
    finally:
        stop_group(process, 30)
    assert process.returncode == 0, log_path.read_text()[-3000:]


def submit(ingress: Service, body: dict[str, Any], headers: dict[str, str] = A) -> Any:
    return requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=TIMEOUT_S)


def wait_terminal(ingress: Service, job_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{ingress.url}/v1/jobs/{job_id}", params={"wait": 50}, headers=A, timeout=60
    )
    job: dict[str, Any] = response.json()
    assert job["status"] in ("succeeded", "failed", "cancelled"), job
    return job


def ledger(ingress: Service, kind: str, rid: str, until: str | None = None) -> dict[str, Any]:
    """The ledger; with ``until``, once it reaches that state (the sender records an attempt
    just after its POST was answered)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = requests.get(
            f"{ingress.url}/v1/{kind}/{rid}/webhook-deliveries", headers=A, timeout=TIMEOUT_S
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if until is None or body["state"] == until:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def verified(post: Received) -> dict[str, Any]:
    """The event, once the standardwebhooks package's own verifier accepts its signature."""
    event: dict[str, Any] = Webhook(SECRET).verify(post.body, post.headers)
    return event


def test_a_finished_job_posts_one_signed_event_and_records_it(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/succeeded"
    response = submit(
        hook_ingress,
        {"task": "embed", "input": {"texts": ["a cat"]}, "webhook": receiver.url(path)},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["webhook"] == receiver.url(path)
    assert job["links"]["webhook_deliveries"] == f"/v1/jobs/{job['id']}/webhook-deliveries"
    final = wait_terminal(hook_ingress, job["id"])

    (post,) = receiver.wait_for(path, 1)
    event = verified(post)
    assert event["type"] == "job.succeeded"
    assert event["data"] == final  # the job exactly as GET answers it
    assert post.headers["webhook-id"] == f"msg_job_{job['id']}"
    assert abs(int(post.headers["webhook-timestamp"]) - time.time()) < 60

    book = ledger(hook_ingress, "jobs", job["id"], until="succeeded")
    assert book["webhook_id"] == f"msg_job_{job['id']}" and book["event"] == "job.succeeded"
    (only,) = book["attempts"]
    assert only["attempt"] == 1 and only["status_code"] == 200 and only["latency_ms"] >= 0
    assert "next_attempt_at" not in book
    time.sleep(1.0)  # several more looks of the sender: still exactly one POST
    assert len(receiver.on(path)) == 1


def test_failed_attempts_are_retried_with_backoff_under_one_webhook_id(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/flaky"
    receiver.script(path, [500, 503])
    job = submit(
        hook_ingress, {"task": "embed", "input": {"texts": ["x"]}, "webhook": receiver.url(path)}
    ).json()

    posts = receiver.wait_for(path, 3)
    assert {p.headers["webhook-id"] for p in posts} == {f"msg_job_{job['id']}"}
    assert all(verified(p)["type"] == "job.succeeded" for p in posts)
    # Each retry waited at least its step of the schedule.
    assert posts[1].at - posts[0].at >= BACKOFF_S[0] * 0.9
    assert posts[2].at - posts[1].at >= BACKOFF_S[1] * 0.9
    book = ledger(hook_ingress, "jobs", job["id"], until="succeeded")
    assert [a["status_code"] for a in book["attempts"]] == [500, 503, 200]
    assert [a["attempt"] for a in book["attempts"]] == [1, 2, 3]


def test_exhausted_attempts_fail_and_a_redelivery_sends_again(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/down"
    receiver.script(path, [500] * (len(BACKOFF_S) + 1))
    job = submit(
        hook_ingress, {"task": "embed", "input": {"texts": ["x"]}, "webhook": receiver.url(path)}
    ).json()
    book = ledger(hook_ingress, "jobs", job["id"], until="failed")
    assert [a["status_code"] for a in book["attempts"]] == [500] * (len(BACKOFF_S) + 1)
    time.sleep(1.0)
    assert len(receiver.on(path)) == len(BACKOFF_S) + 1  # nothing after the schedule ran out

    response = requests.post(
        f"{hook_ingress.url}/v1/jobs/{job['id']}/webhook-deliveries", headers=A, timeout=TIMEOUT_S
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] in ("pending", "delivering", "succeeded")
    posts = receiver.wait_for(path, len(BACKOFF_S) + 2)
    assert len({p.headers["webhook-id"] for p in posts}) == 1  # the same event, again
    book = ledger(hook_ingress, "jobs", job["id"], until="succeeded")
    assert [a["status_code"] for a in book["attempts"]][-1] == 200
    assert book["attempts"][-1]["attempt"] == len(BACKOFF_S) + 2


def test_a_failed_job_and_a_cancelled_job_post_their_events(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    failed = submit(
        hook_ingress,
        {
            "task": "predict",
            "input": {"model": "no-such-model", "instances": [[1.0]]},
            "webhook": receiver.url("/hooks/failed"),
        },
    ).json()
    (post,) = receiver.wait_for("/hooks/failed", 1)
    event = verified(post)
    assert event["type"] == "job.failed" and event["data"]["id"] == failed["id"]
    assert event["data"]["error"]["code"] == "unknown_model"

    queued = submit(
        hook_ingress,
        {
            "task": "forecast",
            "input": {
                "series": [{"ds": f"2026-01-{d:02d}", "y": float(d)} for d in range(1, 29)],
                "horizon": 7,
                "frequency": "D",
            },
            "webhook": receiver.url("/hooks/cancelled"),
        },
    ).json()
    cancel = requests.post(
        f"{hook_ingress.url}/v1/jobs/{queued['id']}/cancel", headers=A, timeout=TIMEOUT_S
    )
    assert cancel.status_code == 200, cancel.text  # forecast runs for far longer than this takes
    (post,) = receiver.wait_for("/hooks/cancelled", 1)
    event = verified(post)
    assert event["type"] == "job.cancelled" and event["data"]["status"] == "cancelled"


def test_a_batch_posts_once_every_item_has_ended(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/batch"
    lines = "\n".join(json.dumps({"texts": [f"item {i}"]}) for i in range(5))
    response = requests.post(
        f"{hook_ingress.url}/v1/batches",
        params={"task": "embed", "webhook": receiver.url(path)},
        data=lines,
        headers={**A, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["webhook"] == receiver.url(path)

    (post,) = receiver.wait_for(path, 1)
    event = verified(post)
    assert event["type"] == "batch.succeeded"
    assert event["data"]["id"] == batch["id"]
    assert event["data"]["counts"]["succeeded"] == 5 and event["data"]["status"] == "succeeded"
    assert post.headers["webhook-id"] == f"msg_batch_{batch['id']}"
    book = ledger(hook_ingress, "batches", batch["id"], until="succeeded")
    assert book["event"] == "batch.succeeded" and len(book["attempts"]) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/h", "only https"),
        ("https://127.0.0.1/h", "not a public address"),
        ("https://10.0.0.1/h", "not a public address"),
        ("https://[::1]/h", "not a public address"),
        ("https://169.254.169.254/h", "not a public address"),
        ("https://localhost/h", "not a public host"),
        ("not-a-url", "https://host/path"),
        ("https://hooks.example.com/a b", "no spaces"),
    ],
)
def test_the_strict_ingress_refuses_private_and_plain_http_webhooks(
    ingress: Service, url: str, reason: str
) -> None:
    response = submit(ingress, {"task": "embed", "input": {"texts": ["x"]}, "webhook": url})
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "webhook"] and reason in error["msg"]


def test_each_tenant_signs_with_its_own_secret(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/tenant-b"
    job = submit(
        hook_ingress,
        {"task": "embed", "input": {"texts": ["x"]}, "webhook": receiver.url(path)},
        headers=B,
    ).json()
    (post,) = receiver.wait_for(path, 1)
    event = Webhook(SECRET_B).verify(post.body, post.headers)
    assert event["data"]["id"] == job["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(post.body, post.headers)  # tenant-a's secret does not verify it


def test_webhook_refusals_name_where_the_url_came_from(
    ingress: Service, hook_ingress: Service
) -> None:
    no_secret = submit(  # the session's ingress has no signing secrets at all
        ingress,
        {"task": "embed", "input": {"texts": ["x"]}, "webhook": "https://hooks.example.com/h"},
    )
    assert no_secret.status_code == 422
    assert "signing secret" in no_secret.json()["errors"][0]["msg"]
    ndjson = requests.post(
        f"{hook_ingress.url}/v1/batches",
        params={"task": "embed", "webhook": "ftp://hooks.example.com/h"},
        data='{"texts": ["x"]}',
        headers={**A, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT_S,
    )
    assert ndjson.status_code == 422
    assert ndjson.json()["errors"][0]["loc"] == ["query", "webhook"]
    body = {"task": "embed", "items": [{"texts": ["x"]}], "webhook": "https://u:p@h.example/"}
    as_json = requests.post(
        f"{hook_ingress.url}/v1/batches", json=body, headers=A, timeout=TIMEOUT_S
    )
    assert as_json.status_code == 422
    assert as_json.json()["errors"][0]["loc"] == ["body", "webhook"]


def test_the_ledger_routes(hook_ingress: Service, sender: RunningSender) -> None:
    # A job that stays queued: written directly, with no message for the worker.
    job_id = new_job_id()
    doc = new_job_document(
        tenant="tenant-a",
        task="embed",
        input={"texts": ["x"]},
        metadata=None,
        now=datetime.now(UTC),
        webhook="http://127.0.0.1:9/never",
    )
    firestore.Client().collection("jobs").document(job_id).create(doc)
    book = ledger(hook_ingress, "jobs", job_id)
    assert book["state"] == "waiting" and book["attempts"] == []
    early = requests.post(
        f"{hook_ingress.url}/v1/jobs/{job_id}/webhook-deliveries", headers=A, timeout=TIMEOUT_S
    )
    assert early.status_code == 409 and "has not finished" in early.json()["detail"]

    other = requests.get(
        f"{hook_ingress.url}/v1/jobs/{job_id}/webhook-deliveries", headers=B, timeout=TIMEOUT_S
    )
    assert other.status_code == 404
    plain = submit(hook_ingress, {"task": "embed", "input": {"texts": ["x"]}}).json()
    assert "webhook_deliveries" not in plain["links"]
    none = requests.get(
        f"{hook_ingress.url}/v1/jobs/{plain['id']}/webhook-deliveries", headers=A, timeout=10
    )
    assert none.status_code == 404 and "no webhook" in none.json()["detail"]
    firestore.Client().collection("jobs").document(job_id).delete()


def test_the_sender_refuses_a_host_resolving_to_loopback_before_connecting(
    emulators: Emulators, receiver: Receiver
) -> None:
    """A strict sender (private addresses not allowed), in this process, on collections of its
    own: ``2130706433`` passes the submit-time check (it is no literal address) and resolves to
    127.0.0.1; the sender refuses it, and the receiver never sees a connection."""
    settings = SenderSettings(
        jobs_collection="webhook-guard-jobs",
        batches_collection="webhook-guard-batches",
        deliveries_collection="webhook-guard-deliveries",
        allow_private=False,
        backoff_s=BACKOFF_S,
        timeout_s=2,
    )
    client = firestore.Client()
    job_id = new_job_id()
    doc = new_job_document(
        tenant="tenant-a",
        task="embed",
        input={"texts": ["x"]},
        metadata=None,
        now=datetime.now(UTC),
        webhook=f"https://2130706433:{receiver.port}/hooks/guard",
    )
    doc.update(status="cancelled")
    client.collection(settings.jobs_collection).document(job_id).create(doc)
    before = receiver.connections
    sender = Sender(Outbox(client, settings), SigningSecrets({"tenant-a": SECRET}), settings)

    sender.look()  # takes the job in and starts its attempt
    assert sender.wait_idle(10)
    book = client.collection(settings.deliveries_collection).document(f"job-{job_id}").get()
    stored = book.to_dict() or {}
    assert stored["state"] == "failed", stored  # refused: final, no retries
    (only,) = stored["attempts"]
    assert only["status_code"] is None
    assert "refused" in only["error"] and "127.0.0.1" in only["error"]
    assert receiver.connections == before and receiver.on("/hooks/guard") == []


def test_a_retried_batch_that_ends_again_posts_a_new_event(
    hook_ingress: Service, sender: RunningSender, receiver: Receiver
) -> None:
    path = "/hooks/batch-retried"
    body = {
        "task": "predict",
        "items": [{"model": "no-such-model", "instances": [[1.0]]} for _ in range(3)],
        "webhook": receiver.url(path),
    }
    batch = requests.post(
        f"{hook_ingress.url}/v1/batches", json=body, headers=A, timeout=TIMEOUT_S
    ).json()
    (first,) = receiver.wait_for(path, 1)
    assert verified(first)["type"] == "batch.failed"
    assert first.headers["webhook-id"] == f"msg_batch_{batch['id']}"
    ledger(hook_ingress, "batches", batch["id"], until="succeeded")

    retried = requests.post(
        f"{hook_ingress.url}/v1/batches/{batch['id']}/retry", headers=A, timeout=TIMEOUT_S
    )
    assert retried.status_code == 200, retried.text
    _, second = receiver.wait_for(path, 2)
    event = verified(second)
    assert event["type"] == "batch.failed" and event["data"]["counts"]["failed"] == 3
    assert second.headers["webhook-id"] == f"msg_batch_{batch['id']}_2"  # a new event
    book = ledger(hook_ingress, "batches", batch["id"], until="succeeded")
    assert book["webhook_id"] == f"msg_batch_{batch['id']}_2"
    assert [a["webhook_id"] for a in book["attempts"]] == [
        f"msg_batch_{batch['id']}",
        f"msg_batch_{batch['id']}_2",
    ]
    time.sleep(1.0)
    assert len(receiver.on(path)) == 2


def test_the_senders_health_and_metrics_show_what_it_did(sender: RunningSender) -> None:
    """Runs after the delivery tests above (file order): their attempts are counted."""
    health = requests.get(f"{sender.url}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 200 and health.json()["ok"] is True
    text = requests.get(f"{sender.url}/metrics", timeout=TIMEOUT_S).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['omni_webhook_attempts_total{kind="job",outcome="delivered"}'] >= 5
    assert samples['omni_webhook_attempts_total{kind="job",outcome="rejected"}'] >= 5
    assert samples['omni_webhook_attempts_total{kind="batch",outcome="delivered"}'] >= 1
    assert samples['omni_webhook_deliveries_failed_total{kind="job"}'] >= 1
    assert samples["omni_webhook_attempt_seconds_count"] >= 11
    assert samples['omni_webhook_looks_total{result="ok"}'] > 10
    assert samples["omni_webhook_last_look_timestamp_seconds"] > time.time() - 30


def test_an_attempt_ends_at_its_deadline_however_slowly_the_receiver_answers() -> None:
    """httpx's timeouts bound each read; a receiver sending its status line a byte every 0.5 s
    would keep an attempt (and a sender's slot) for ever without the attempt's own deadline."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" * 10:
                if stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    connection.sendall(bytes([byte]))
                stop.wait(0.5)

    thread = threading.Thread(target=trickle, name="trickle", daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        outcome = attempt(
            f"http://127.0.0.1:{port}/slow", b"{}", {}, allow_private=True, timeout_s=1.5
        )
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
        server.close()
    assert outcome.status_code is None and not outcome.final
    assert outcome.error == "no answer within 1.5 s"
    assert took < 60, "cut off at its deadline, not when the trickle ended (85 s)"


def test_a_chunked_batch_is_taken_in_once_it_is_closed_and_its_counts_have_ended(
    emulators: Emulators,
) -> None:
    """The outbox reads a batch's counts (its document and counter shards, as chunk writers
    move them), never its items: an open batch has not ended even with nothing in flight, and
    a closed one is taken in once, when its last items end. In this process, on collections of
    its own, with no sender running."""
    settings = SenderSettings(
        jobs_collection="webhook-open-jobs",
        batches_collection="webhook-open-batches",
        deliveries_collection="webhook-open-deliveries",
        batch_check_s=0,
    )
    client = firestore.Client()
    outbox = Outbox(client, settings)
    batch_id = new_job_id()
    ref = client.collection(settings.batches_collection).document(batch_id)
    now = datetime.now(UTC)
    ref.create(
        {
            "tenant": "tenant-a",
            "task": "embed",
            "created_at": now,
            "counts": {},
            "cancel_requested": False,
            "open": True,
            "webhook": "https://hooks.example/batch",
            "webhook_pending": True,
        }
    )
    ledger = client.collection(settings.deliveries_collection).document(f"batch-{batch_id}")
    assert outbox.discover(now) == 0, "an open batch with no part yet has not ended"
    shard = ref.collection(COUNTERS).document("0")
    shard.set({"total": 3, "queued": 3, "at": now})  # a part of three items, accepted
    ref.update({"open": False, "closed_at": now})
    assert outbox.discover(now) == 0 and not ledger.get().exists
    # The chunk's claim and terminal commit: every item ended, one of them failed.
    shard.set({"total": 3, "queued": 0, "succeeded": 2, "failed": 1, "at": now})
    assert outbox.discover(now) == 1
    book = ledger.get().to_dict() or {}
    assert book["event"] == "batch.failed" and book["kind"] == "batch"
    assert outbox.discover(now) == 0, "taken in once"
