"""worker/health.py and the worker's readiness, on a loopback port of its own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from worker.health import HealthServer
from worker.main import Worker
from worker.settings import WorkerSettings


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def worker() -> Worker:
    return Worker(WorkerSettings(http_port=0))


def test_not_ready_before_models_load_but_alive(worker: Worker) -> None:
    server = HealthServer("127.0.0.1", 0, worker._readiness)
    server.start()
    try:
        assert get(server.port, "/healthz") == (200, {"ok": True, "service": "worker"})
        status, body = get(server.port, "/readyz")
        assert status == 503 and body["ready"] is False and body["pulling"] is False
        embed = body["tasks"]["embed"]
        assert (embed["loaded"], embed["load_s"]) == (False, None)
        assert embed["batch"] == {"max_size": 32, "max_wait_s": 0.005}
        assert set(body["tasks"]) == {"embed", "similar", "entities", "forecast", "predict"}
        assert get(server.port, "/nothing")[0] == 404
    finally:
        server.stop()


def test_readiness_lists_only_the_served_tasks() -> None:
    worker = Worker(WorkerSettings(http_port=0, tasks=("forecast",)))
    ready, body = worker._readiness()
    assert not ready and list(body["tasks"]) == ["forecast"]


def test_a_stop_request_makes_it_unready_and_repeats_within_the_window(worker: Worker) -> None:
    worker.request_stop(15)
    worker.request_stop(15)  # the group's signal and the supervisor's: one request, no exit
    ready, _ = worker._readiness()
    assert not ready and worker._stop.is_set()
