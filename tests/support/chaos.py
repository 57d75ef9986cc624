"""The chaos stack's parts, as the chaos tests drive them: its processes (``Proc``), the stack
itself (``ChaosStack``: start, kill and stop workers; read jobs; submit), job bodies and the wait
for a drain. Why its workers' settings differ from production's: tests/chaos/conftest.py, whose
fixtures build the stack."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
import requests
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

from emulators.process import Emulator, free_port, stop_group, wait_until_answers
from emulators.provision import Resources
from tests.support import python_env, wait_for

TENANT, KEY = "chaos", "chaos-key-0123456789"
HEADERS = {"X-API-Key": KEY}
FIGURES: dict[str, dict[str, Any]] = {}
"""Measured per test; printed at the end of the session."""


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


def dump_logs(log_dir: Path) -> None:
    """On failure, the tail of every process's log goes to the test output."""
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-40:]
        sys.stdout.write(f"\n----- {path.name} (last {len(lines)} lines) -----\n")
        sys.stdout.write("\n".join(lines) + "\n")


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
