"""Micro-batching and routing, through the whole pipeline on the real model and emulators.

- Jobs submitted together share forward passes: the worker's ``/readyz`` counts MiniLM's passes,
  and each job records the batch size it ran in.
- A worker started with ``WORKER_TASKS=forecast`` never receives an ``embed`` job: it pulls only
  forecast's subscriptions (jobs and chunks), on forecast's own topics, so the emulator (which
  ignores subscription filters, ../shared/ENV.md) routes as production does. No embed job reaches
  it (no claim, no log line, no job run by it); test_routing.py pulls the subscriptions directly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from emulators.process import free_port, stop_group
from tests.support import python_env, wait_for
from tests.support.stacks import KEYS, Emulators, Service, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
JOBS = 32


def submit(ingress: Service, task: str, task_input: dict[str, Any]) -> str:
    # These tests count what the worker runs: a text sent again must run again, not hit the
    # result cache.
    body = {"task": task, "input": task_input, "cache": False}
    response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_all(ingress: Service, job_ids: list[str]) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        jobs = [
            requests.get(f"{ingress.url}/v1/jobs/{job_id}", headers=A, timeout=TIMEOUT).json()
            for job_id in job_ids
        ]
        done = all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs)
        return jobs if done else None

    return wait_for(finished, 180, f"{len(job_ids)} jobs to finish", interval_s=0.2)


def readiness(service: Service) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{service.url}/readyz", timeout=TIMEOUT).json()
    return body


def test_jobs_submitted_together_share_forward_passes(ingress: Service, worker: Service) -> None:
    before = readiness(worker)["tasks"]["embed"]
    texts = [f"Sentence number {i} about a quiet harbour town." for i in range(JOBS)]
    with ThreadPoolExecutor(JOBS) as pool:
        job_ids = list(pool.map(lambda text: submit(ingress, "embed", {"texts": [text]}), texts))
    jobs = wait_all(ingress, job_ids)
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    after = readiness(worker)["tasks"]["embed"]
    passes = after["forward_passes"] - before["forward_passes"]
    batches = after["batches"] - before["batches"]
    assert 1 <= passes < JOBS and batches < JOBS, (passes, batches)
    docs = firestore.Client().get_all(
        [firestore.Client().collection("jobs").document(job_id) for job_id in job_ids]
    )
    sizes = [doc.to_dict()["batch_size"] for doc in docs]
    assert max(sizes) > 1 and all(1 <= size <= 32 for size in sizes), sizes

    # Batching changes nothing in a result: the same text alone gives the same vector.
    alone = wait_all(ingress, [submit(ingress, "embed", {"texts": [texts[0]]})])[0]
    a, b = jobs[0]["result"]["embeddings"][0], alone["result"]["embeddings"][0]
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    assert math.isclose(dot, 1.0, abs_tol=1e-4), dot


@pytest.fixture
def forecast_worker(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """A second worker on the session's emulators serving ``forecast`` only."""
    port = free_port()
    env = python_env(**emulators.env(), WORKER_HTTP_PORT=str(port), WORKER_TASKS="forecast")
    argv = [sys.executable, "-m", "worker"]
    service = start_service("forecast-worker", argv, env, "/readyz", port, log_dir, 180)
    yield service
    stop_group(service.process, 30)


def test_a_forecast_worker_never_receives_an_embed_job(
    ingress: Service, worker: Service, forecast_worker: Service
) -> None:
    pool = readiness(forecast_worker)
    assert list(pool["tasks"]) == ["forecast"]
    embed_ids = [submit(ingress, "embed", {"texts": [f"text {i}"]}) for i in range(20)]
    series = [{"ds": f"2026-01-{day:02d}", "y": day % 7} for day in range(1, 29)]
    forecast_ids = [
        submit(ingress, "forecast", {"series": series, "horizon": 3, "frequency": "D"})
        for _ in range(4)
    ]
    jobs = wait_all(ingress, embed_ids + forecast_ids)
    assert all(job["status"] == "succeeded" for job in jobs), jobs

    client = firestore.Client()
    docs = {
        doc.id: doc.to_dict()
        for doc in client.get_all([client.collection("jobs").document(i) for i in embed_ids])
    }
    assert all(doc["worker"] != pool["worker"] for doc in docs.values())
    # Its streams: forecast's jobs and forecast's chunks, each named, nothing else.
    streams = readiness(forecast_worker)["tasks"]["forecast"]["subscriptions"]
    assert {name: stream["pulling"] for name, stream in streams.items()} == {
        "worker-forecast": True,
        "worker-forecast-chunks": True,
    }
    logged = forecast_worker.log_path.read_text()
    assert not [job_id for job_id in embed_ids if job_id in logged]
