"""Webhook fairness across tenants, end to end: a real sender (``python -m webhooks``) on the
emulators, on collections of its own, POSTing to receivers on 127.0.0.1 that this module runs.

One tenant's receiver answers only after the attempt deadline and has 100 deliveries due, more
than the sender's look reads at the head of the queue; another tenant has one delivery due, newer
than all of them. The delivery ledger shows the other tenant's attempt before the slow tenant's
(cap + 1)-th: an order of the ledger's attempt times, not a wall-clock limit.
"""

from __future__ import annotations

import base64
import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from emulators.process import free_port, stop_group, wait_until_answers
from schemas.jobs import new_job_document, new_job_id
from tests.support import python_env
from tests.support.stacks import Emulators

pytestmark = pytest.mark.integration

SLOW = "tenant-slow"
OTHER = "tenant-other"
SECRETS = ",".join(
    f"{tenant}:whsec_"
    + base64.b64encode(f"{tenant}-fairness-secret-32-bytes!"[:32].encode()).decode()
    for tenant in (SLOW, OTHER)
)
DEADLINE_S = 1.5
"""The test sender's attempt deadline (``WEBHOOK_TIMEOUT_S``); the slow receiver answers later."""
CONCURRENCY = 4
CAP = 2
"""``WEBHOOK_TENANT_IN_FLIGHT``."""
BACKLOG = 100
"""The slow tenant's due deliveries: far more than the head of the queue a look reads
(``HEAD_FACTOR × CONCURRENCY``, 8), so the other tenant's is found only by asking for it."""
WAIT_S = 60.0


@dataclass
class Receivers:
    """``/slow/...`` answers only after the attempt deadline; anything else at once (200)."""

    server: ThreadingHTTPServer
    stop: threading.Event

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path.startswith("/slow/"):
                stop.wait(DEADLINE_S * 4)  # the sender has given up long before
            with contextlib.suppress(OSError):  # the sender shut the connection at its deadline
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a slow answer to a connection the sender closed

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fair-receivers", daemon=True)
    thread.start()
    yield Receivers(server, stop)
    stop.set()
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Collections:
    jobs: str
    deliveries: str


@pytest.fixture(scope="module")
def fair_sender(emulators: Emulators, log_dir: Path) -> Iterator[Collections]:
    """``python -m webhooks`` on collections of its own: 4 slots, at most 2 per tenant, a
    1.5 s deadline, no retries."""
    suffix = uuid.uuid4().hex[:8]
    collections = Collections(f"fair-jobs-{suffix}", f"fair-deliveries-{suffix}")
    log_path = log_dir / "webhooks-fairness.log"
    port = free_port()
    env = python_env(
        **emulators.env(),
        JOBS_COLLECTION=collections.jobs,
        BATCHES_COLLECTION=f"fair-batches-{suffix}",
        WEBHOOK_DELIVERIES_COLLECTION=collections.deliveries,
        WEBHOOK_SECRETS=SECRETS,
        WEBHOOK_ALLOW_PRIVATE="1",
        WEBHOOK_BACKOFF_S="",
        WEBHOOK_POLL_S="0.2",
        WEBHOOK_TIMEOUT_S=str(DEADLINE_S),
        WEBHOOK_CONCURRENCY=str(CONCURRENCY),
        WEBHOOK_TENANT_IN_FLIGHT=str(CAP),
        WEBHOOK_HTTP_HOST="127.0.0.1",
        WEBHOOK_HTTP_PORT=str(port),
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
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", process, 30, "webhooks")
        yield collections
    finally:
        stop_group(process, 30)
    assert process.returncode == 0, log_path.read_text()[-3000:]


def _ended_job(tenant: str, url: str) -> dict[str, Any]:
    """A job that has ended with a webhook still pending, as the ingress and worker leave it."""
    doc = new_job_document(
        tenant=tenant,
        task="embed",
        input={"texts": ["x"]},
        metadata=None,
        now=datetime.now(UTC),
        webhook=url,
    )
    doc.update(status="cancelled")
    return doc


def by_tenant(tenant: str) -> FieldFilter:
    return FieldFilter("tenant", "==", tenant)


def _attempts(client: firestore.Client, deliveries: str) -> dict[str, list[datetime]]:
    """Every recorded attempt's time, by tenant, from the delivery ledger."""
    times: dict[str, list[datetime]] = {SLOW: [], OTHER: []}
    for snapshot in client.collection(deliveries).stream(timeout=30):
        doc = snapshot.to_dict() or {}
        times[doc["tenant"]] += [attempt["at"] for attempt in doc.get("attempts") or []]
    return {tenant: sorted(ats) for tenant, ats in times.items()}


def test_a_slow_tenants_backlog_does_not_delay_another_tenants_webhook(
    fair_sender: Collections, receivers: Receivers
) -> None:
    client = firestore.Client()
    jobs = client.collection(fair_sender.jobs)
    writes = client.batch()
    for i in range(BACKLOG):
        writes.create(jobs.document(new_job_id()), _ended_job(SLOW, receivers.url(f"/slow/{i}")))
    writes.commit(timeout=30)
    deliveries = client.collection(fair_sender.deliveries)
    deadline = time.monotonic() + WAIT_S
    while len(list(deliveries.select([]).stream(timeout=30))) < BACKLOG:  # in the ledger, due
        assert time.monotonic() < deadline, "the sender did not take the backlog in"
        time.sleep(0.1)

    other_id = new_job_id()
    jobs.document(other_id).create(_ended_job(OTHER, receivers.url("/fast")))

    deadline = time.monotonic() + WAIT_S
    while True:
        times = _attempts(client, fair_sender.deliveries)
        if times[OTHER] and len(times[SLOW]) > CAP:
            break
        assert time.monotonic() < deadline, {t: len(ats) for t, ats in times.items()}
        time.sleep(0.2)

    other = deliveries.document(f"job-{other_id}").get(timeout=30).to_dict() or {}
    assert other["state"] == "succeeded", other
    (other_at,) = times[OTHER]
    # The other tenant's attempt came before the slow tenant's (cap + 1)-th, although all of the
    # slow tenant's were due first: the slow tenant never held more than its cap of the slots.
    assert other_at < times[SLOW][CAP], (other_at, times[SLOW][: CAP + 1])
    slow = [doc.to_dict() or {} for doc in deliveries.where(filter=by_tenant(SLOW)).stream()]
    tried = [attempt for doc in slow for attempt in doc.get("attempts") or []]
    assert len(tried) > CAP and all(a["status_code"] is None and a["error"] for a in tried)
