"""The chaos stack: a private pair of emulators and every long-running part, as processes.

Each chaos module gets its own emulators (a pause, kill or restart there disturbs nothing else),
provisioned as production is (dead-letter policy, push subscription to the dead-letter function).
Workers differ from production in two settings, named here: **the retry backoff starts at 1 s
instead of 10 s** (``WORKER_RETRY_BACKOFF_S``), so a poison job's five deliveries take seconds,
not minutes; and fault injection is on, so tests can submit poison and long jobs. Workers form an
``embed`` pool (``WORKER_TASKS=embed``), the only task the chaos tests submit: they start in half
the time of a worker with every model. And they lease 8 messages at a time, not 64
(``WORKER_MAX_MESSAGES=8``; batches of up to 8 still form): **an emulator limit** — it keeps
feeding a stream after its worker stopped, up to that stream's flow-control limit, and those
messages come back only as the stream's ack deadlines lapse (10-30 s). With 64, every worker
restart swallowed the next few jobs for half a minute; production Pub/Sub does not do this. The
ingress
(gunicorn), the dead-letter function (functions-framework) and workers run as real processes
against real models; tests start, kill and restart workers through ``ChaosStack``.

Figures the tests measure (jobs, kills, redeliveries, time to drain) are printed at the end of
the run under "chaos figures".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
import requests
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from emulators.localrun import ROOT, deadletter_command
from emulators.process import Emulator, free_port, running_emulators, stop_group, wait_until_answers
from emulators.provision import Resources, provision
from emulators.reset import reset_firestore, reset_pubsub
from tests.support import python_env, wait_for

TENANT, KEY = "chaos", "chaos-key-0123456789"
HEADERS = {"X-API-Key": KEY}
FIGURES: dict[str, dict[str, Any]] = {}
"""Measured per test; printed at the end of the session."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for name, figures in FIGURES.items():
        shown = ", ".join(f"{key}={value}" for key, value in figures.items())
        terminalreporter.write_line(f"{name}: {shown}")


@dataclass
class Proc:
    name: str
    process: Popen[bytes]
    log_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON line (functions-framework's own start-up lines are plain text)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def messages(self) -> list[str]:
        return [str(line.get("message")) for line in self.log_lines()]


@dataclass
class ChaosStack:
    project: str
    pubsub: Emulator
    firestore_emulator: Emulator
    log_dir: Path
    ingress: Proc | None = None
    deadletter: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    resources: Resources | None = None
    _started: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        return python_env(
            GOOGLE_CLOUD_PROJECT=self.project,
            PUBSUB_EMULATOR_HOST=self.pubsub.address,
            FIRESTORE_EMULATOR_HOST=self.firestore_emulator.address,
            API_KEYS=f"{TENANT}:{KEY}",
            **extra,
        )

    def spawn(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Proc:
        self._started += 1
        log_path = self.log_dir / f"{self._started:02d}-{name}.log"
        with log_path.open("wb") as log:
            process = Popen(
                argv, env=env, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True
            )
        return Proc(name, process, log_path, port)

    # -- workers -----------------------------------------------------------------------------
    def start_worker(self, wait: bool = True, **settings: str) -> Proc:
        port = free_port()
        env = self.env(
            WORKER_HTTP_PORT=str(port),
            WORKER_FAULT_INJECTION="1",
            WORKER_RETRY_BACKOFF_S="1",
            WORKER_TASKS="embed",
            WORKER_MAX_MESSAGES="8",
            **settings,
        )
        worker = self.spawn("worker", [sys.executable, "-m", "worker"], env, port)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Proc) -> None:
        wait_until_answers(worker.url + "/readyz", worker.process, 180, worker.name)

    def kill(self, worker: Proc) -> None:
        """SIGKILL the worker's whole group: no handler runs, nothing is acked or released."""
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

    def stop_workers(self) -> None:
        for worker in self.workers:
            stop_group(worker.process, 40)
        self.workers.clear()

    # -- clients -----------------------------------------------------------------------------
    def _with_env(self, build: Any) -> Any:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PUBSUB_EMULATOR_HOST", self.pubsub.address)
            patch.setenv("FIRESTORE_EMULATOR_HOST", self.firestore_emulator.address)
            return build()

    def firestore(self) -> firestore.Client:
        return self._with_env(lambda: firestore.Client(project=self.project))

    def publisher(self) -> pubsub_v1.PublisherClient:
        return self._with_env(pubsub_v1.PublisherClient)

    def jobs(self) -> dict[str, dict[str, Any]]:
        client = self.firestore()
        return {doc.id: doc.to_dict() or {} for doc in client.collection("jobs").stream()}

    def job(self, job_id: str) -> dict[str, Any]:
        return self.firestore().collection("jobs").document(job_id).get().to_dict() or {}

    def count(self, status: str) -> int:
        query = self.firestore().collection("jobs").where("status", "==", status).count()
        return int(query.get()[0][0].value)

    def submit(self, body: dict[str, Any], **headers: str) -> requests.Response:
        assert self.ingress is not None
        return requests.post(
            f"{self.ingress.url}/v1/jobs", json=body, headers={**HEADERS, **headers}, timeout=30
        )

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            doc = self.job(job_id)
            return doc if doc.get("status") in statuses else None

        return wait_for(reached, timeout_s, f"job {job_id} to reach {statuses}", interval_s=0.05)


def embed(*texts: str, fault: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "embed", "input": {"texts": list(texts) or ["chaos"]}}
    if fault is not None:
        body["metadata"] = {"omni-fault": fault}
    return body


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[ChaosStack]:
    """A fresh chaos stack per module: emulators, dead-letter function, ingress; no workers."""
    project = "omni-chaos"
    with (
        running_emulators(project) as (pubsub, fs),
        tempfile.TemporaryDirectory(prefix="omni-chaos-") as log_dir,
    ):
        stack = ChaosStack(project, pubsub, fs, Path(log_dir))
        try:
            port = free_port()
            stack.deadletter = stack.spawn(
                "deadletter", deadletter_command("127.0.0.1", port), stack.env(), port
            )
            wait_until_answers(
                stack.deadletter.url + "/", stack.deadletter.process, 60, "deadletter", status=405
            )
            stack.resources = Resources(
                project=project, dead_letter_endpoint=stack.deadletter.url + "/"
            )
            provision(stack.resources, emulator_host=pubsub.address)
            port = free_port()
            argv = [
                sys.executable,
                *("-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")),
            ]
            env = stack.env(HOST="127.0.0.1", PORT=str(port), PUBLISH_TIMEOUT_S="3")
            stack.ingress = stack.spawn("ingress", argv, env, port)
            wait_until_answers(stack.ingress.url + "/health", stack.ingress.process, 60, "ingress")
            yield stack
        finally:
            stack.stop_workers()
            for proc in (stack.ingress, stack.deadletter):
                if proc is not None:
                    stop_group(proc.process, 30)
            if request.session.testsfailed:
                _dump_logs(Path(log_dir))
                if keep := os.environ.get("OMNI_KEEP_LOGS"):
                    shutil.copytree(log_dir, Path(keep) / Path(log_dir).name)


def _dump_logs(log_dir: Path) -> None:
    """On failure, the tail of every process's log goes to the test output."""
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-40:]
        sys.stdout.write(f"\n----- {path.name} (last {len(lines)} lines) -----\n")
        sys.stdout.write("\n".join(lines) + "\n")


@pytest.fixture
def clean(stack: ChaosStack) -> ChaosStack:
    """No documents, no messages and no workers at the start of the test.

    Pub/Sub is reset and provisioned again, not just left to drain: **an emulator limit** keeps
    the earlier test's stopped workers' streams alive in the emulator, which goes on sending them a
    share of the messages, and a message that lands on such a dead stream comes back only after the
    stream's ack deadline (10 s) — possibly to a dead stream again. Five such rounds and a fresh
    job of the next test is dead-lettered without ever reaching its live worker (seen in CI, once
    in each of two modules). Dropping the subscriptions ends those streams; production Pub/Sub
    closes a stream whose client went away."""
    stack.stop_workers()
    assert stack.resources is not None
    reset_pubsub(stack.pubsub.address)
    provision(stack.resources, emulator_host=stack.pubsub.address)
    reset_firestore(stack.firestore_emulator.address, stack.project)
    return stack


def drained(stack: ChaosStack, total: int, started: float, timeout_s: float) -> float:
    """Wait until ``total`` jobs are terminal; seconds since ``started``."""
    terminal = ("succeeded", "failed", "cancelled")
    try:
        wait_for(
            lambda: sum(stack.count(s) for s in terminal) >= total,
            timeout_s,
            f"{total} jobs to finish",
            interval_s=0.5,
        )
    except AssertionError as exc:
        stuck = [
            {"id": job_id, **{k: str(doc.get(k)) for k in ("status", "attempts", "updated_at")}}
            for job_id, doc in stack.jobs().items()
            if doc.get("status") not in terminal
        ]
        raise AssertionError(f"{exc}; {len(stuck)} unfinished, e.g. {stuck[:5]}") from None
    return round(time.monotonic() - started, 1)
