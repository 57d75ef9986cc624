"""worker/metrics.py: what the consumer and the processor count, with the processor tests' fake
store and model; and ``/metrics`` on the health server."""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.support.pipeline_fakes import (
    JOB_ID,
    FakeModel,
    FakeStore,
    claim,
    job_message,
    processor,
    run,
)
from worker import metrics
from worker.errors import TransientError
from worker.health import HealthServer
from worker.store import Skip


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """The values of some of the worker's samples, read again to see what a test moved."""

    SAMPLES = {
        "succeeded": ("omni_worker_jobs_total", {"outcome": "succeeded"}),
        "failed": ("omni_worker_jobs_total", {"outcome": "failed"}),
        "retried": ("omni_worker_jobs_total", {"outcome": "retried"}),
        "skipped": ("omni_worker_jobs_total", {"outcome": "skipped"}),
        "released": ("omni_worker_jobs_total", {"outcome": "released"}),
        "cancelled": ("omni_worker_jobs_total", {"outcome": "cancelled"}),
        "aborted": ("omni_worker_jobs_total", {"outcome": "aborted"}),
        "in_flight": ("omni_worker_jobs_in_flight", {}),
        "batches": ("omni_worker_batch_size_count", {}),
        "batched_jobs": ("omni_worker_batch_size_sum", {}),
        "inferences": ("omni_worker_inference_seconds_count", {}),
    }

    def __init__(self, task: str = "embed"):
        self.task = task
        self.before = self.read()

    def read(self) -> dict[str, float]:
        return {
            key: value(name, task=self.task, **labels)
            for key, (name, labels) in self.SAMPLES.items()
        }

    def moved(self) -> dict[str, float]:
        """Only the samples that changed, by how much."""
        now = self.read()
        return {key: now[key] - self.before[key] for key in now if now[key] != self.before[key]}


@dataclass
class Received:
    publish_time: datetime
    delivery_attempt: int | None = 1


def test_a_first_delivery_observes_its_time_in_the_queue() -> None:
    count = value("omni_worker_queue_seconds_count", task="forecast")
    total = value("omni_worker_queue_seconds_sum", task="forecast")

    metrics.received("forecast", Received(datetime.now(UTC) - timedelta(seconds=30)))

    assert value("omni_worker_queue_seconds_count", task="forecast") - count == 1
    assert value("omni_worker_queue_seconds_sum", task="forecast") - total >= 30


def test_a_publish_time_ahead_of_this_clock_waited_nothing() -> None:
    total = value("omni_worker_queue_seconds_sum", task="similar")

    metrics.received("similar", Received(datetime.now(UTC) + timedelta(seconds=5), None))

    assert value("omni_worker_queue_seconds_sum", task="similar") == total
    assert value("omni_worker_queue_seconds_bucket", task="similar", le="0.005") >= 1


def test_a_redelivery_is_counted_not_timed() -> None:
    redeliveries = value("omni_worker_redeliveries_total", task="entities")
    count = value("omni_worker_queue_seconds_count", task="entities")

    metrics.received("entities", Received(datetime.now(UTC) - timedelta(minutes=5), 3))

    assert value("omni_worker_redeliveries_total", task="entities") - redeliveries == 1
    assert value("omni_worker_queue_seconds_count", task="entities") == count


def test_a_model_load_time_is_kept_by_task() -> None:
    metrics.model_loaded("predict", 2.5)

    assert value("omni_worker_model_load_seconds", task="predict") == 2.5


def test_a_job_that_succeeds_is_counted_once_its_message_is_settled() -> None:
    counts = Counts()

    assert run(FakeStore([claim()]), FakeModel()).settled == ["ack"]

    assert counts.moved() == {"succeeded": 1, "batches": 1, "batched_jobs": 1, "inferences": 1}


def test_a_job_is_in_flight_from_its_claim_until_its_message_is_settled() -> None:
    counts = Counts()
    store, model = FakeStore([claim()]), FakeModel(sleep_s=0.5)
    worker = processor(store, model)
    worker.start()
    handler = threading.Thread(target=worker.handle, args=([job_message()],))
    handler.start()
    try:
        seen = [counts.moved().get("in_flight", 0.0)]
        while handler.is_alive() and seen[-1] == 0:
            handler.join(timeout=0.01)
            seen.append(counts.moved().get("in_flight", 0.0))
    finally:
        handler.join(timeout=10)
        worker.close()

    assert 1 in seen
    assert "in_flight" not in counts.moved()


@pytest.mark.parametrize(
    ("store", "model", "outcome"),
    [
        (FakeStore([Skip(JOB_ID, "already succeeded")]), FakeModel(), "skipped"),
        (FakeStore([claim(input={"texts": []})]), FakeModel(), "failed"),
        (FakeStore([claim()]), FakeModel(TransientError("busy")), "retried"),
    ],
    ids=["skipped", "failed", "retried"],
)
def test_each_outcome_is_counted_by_name(store: FakeStore, model: FakeModel, outcome: str) -> None:
    counts = Counts()

    run(store, model)

    moved = counts.moved()
    others = {"succeeded", "failed", "retried", "skipped", "aborted"} - {outcome}
    assert moved[outcome] == 1 and not others & set(moved)


def test_a_job_cancelled_while_it_runs_is_cancelled() -> None:
    counts = Counts()
    store = FakeStore([claim()])
    store.check = lambda claims: {c.token: "cancelled" for c in claims}  # type: ignore[method-assign]

    run(store, FakeModel(sleep_s=5), watch_interval_s=0.05)

    assert counts.moved()["cancelled"] == 1


def test_a_job_released_at_shutdown_is_released() -> None:
    counts = Counts()
    worker = processor(FakeStore([claim()]), FakeModel(sleep_s=5))
    worker.start()
    threading.Timer(0.1, worker.abandon).start()

    worker.handle([job_message()])
    worker.close()

    assert counts.moved().get("released") == 1 and "in_flight" not in counts.moved()


def test_a_claimed_job_nacked_by_an_unexpected_error_is_aborted() -> None:
    class BrokenEnd(FakeStore):
        def end_many(self, ends):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    counts = Counts()

    assert run(BrokenEnd([claim()]), FakeModel()).settled == ["nack"]

    assert counts.moved().get("aborted") == 1 and "in_flight" not in counts.moved()


def test_the_health_server_serves_the_metrics() -> None:
    metrics.model_loaded("embed", 1.25)
    server = HealthServer("127.0.0.1", 0, lambda: (True, {}))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            content_type = response.headers["Content-Type"]
            text = response.read().decode()
    finally:
        server.stop()

    assert content_type == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = [
        s for s in families["omni_worker_model_load_seconds"].samples if s.labels["task"] == "embed"
    ]
    assert sample.value == 1.25
    assert {"omni_worker_jobs", "omni_worker_queue_seconds", "omni_worker_batch_size"} <= set(
        families
    )
