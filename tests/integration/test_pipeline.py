"""One job through the whole pipeline: ingress → Pub/Sub → worker (MiniLM) → Firestore → back."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import pytest
import requests
from google.cloud import firestore, pubsub_v1

from schemas.messages import CHUNK_KIND, JOB_KIND, JobMessage, Topics
from tests.support import wait_for
from tests.support.stacks import KEYS, Emulators, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}


def run_job(ingress: Service, texts: list[str]) -> dict[str, Any]:
    response = requests.post(
        f"{ingress.url}/v1/jobs",
        headers=A,
        timeout=TIMEOUT,
        json={"task": "embed", "input": {"texts": texts}},
    )
    assert response.status_code == 202, response.text
    location = ingress.url + response.headers["Location"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = requests.get(location, headers=A, timeout=TIMEOUT).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 60, "the job to finish", interval_s=0.05)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embed_job_succeeds_with_unit_vectors_that_mean_something(
    ingress: Service, worker: Service, clean_firestore: object
) -> None:
    job = run_job(ingress, ["cat", "kitten", "stock market"])

    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["created_at"] <= job["started_at"] <= job["finished_at"] == job["updated_at"]
    result = job["result"]
    assert result["model"] == "all-MiniLM-L6-v2" and result["dimensions"] == 384
    cat, kitten, market = result["embeddings"]
    for vector in (cat, kitten, market):
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-4)
    assert cosine(cat, kitten) > cosine(cat, market) + 0.1
    assert "error" not in job

    # Timings agree with the job's own timestamps; the forward pass fits inside the run.
    timings = job["timings"]
    created, started, finished = (
        datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")
    )
    assert timings["queued_ms"] == pytest.approx(
        (started - created).total_seconds() * 1000, abs=0.1
    )
    assert timings["running_ms"] == pytest.approx(
        (finished - started).total_seconds() * 1000, abs=0.1
    )
    assert 0 < timings["inference_ms"] <= timings["running_ms"]
    assert timings["batch_size"] >= 1


@pytest.mark.parametrize("kind", [JOB_KIND, CHUNK_KIND])
def test_a_second_delivery_of_a_finished_job_is_acked_without_running_again(
    ingress: Service, worker: Service, emulators: Emulators, clean_firestore: object, kind: str
) -> None:
    """``kind``: the topic the duplicate comes by. A job message on the chunk topic (a publisher
    of another release, during a rollout) is read for what it is, not dropped."""
    job = run_job(ingress, ["redelivered once"])
    assert job["status"] == "succeeded"
    doc_before = (
        firestore.Client().collection("jobs").document(job["id"]).get(timeout=TIMEOUT).to_dict()
    )

    # Pub/Sub delivers at least once: publish the same job message again, as a redelivery would.
    publisher = pubsub_v1.PublisherClient()
    data, attributes = JobMessage(job_id=job["id"], task="embed", tenant="tenant-a").to_pubsub()
    topic = Topics(emulators.project).path("embed", kind)
    publisher.publish(topic, data, **attributes).result(timeout=TIMEOUT)

    def skips() -> list[dict[str, Any]]:
        return [
            line
            for line in worker.log_lines()
            if line.get("job_id") == job["id"] and line.get("skip")
        ]

    wait_for(skips, 30, "the worker to skip the redelivered job")
    # Had the worker nacked it, the emulator would redeliver at once (its first redelivery
    # ignores the subscription's 10 s minimum backoff): wait well past that, count deliveries.
    time.sleep(3)
    assert len(skips()) == 1, "the duplicate was not acked: it came back"
    assert skips()[0]["skip"] == "already succeeded"
    doc_after = (
        firestore.Client().collection("jobs").document(job["id"]).get(timeout=TIMEOUT).to_dict()
    )
    assert doc_after == doc_before  # not claimed, not re-run, not rewritten
    runs = [
        line
        for line in worker.log_lines()
        if line.get("job_id") == job["id"] and line["message"] == "job succeeded"
    ]
    assert len(runs) == 1


def test_the_worker_reports_ready_with_model_load_times(worker: Service) -> None:
    body = requests.get(f"{worker.url}/readyz", timeout=TIMEOUT).json()
    assert body["ready"] is True and body["pulling"] is True
    assert body["tasks"]["embed"]["loaded"] is True and body["tasks"]["embed"]["load_s"] > 0
    # Two streams per task, named by their subscriptions, each with its own flow control.
    streams = body["tasks"]["embed"]["subscriptions"]
    assert streams["worker-embed"]["max_messages"] == 128  # 4 × its batch of 32
    assert streams["worker-embed-chunks"] == {"pulling": True, "max_messages": 2}
    assert requests.get(f"{worker.url}/healthz", timeout=TIMEOUT).json()["ok"] is True
