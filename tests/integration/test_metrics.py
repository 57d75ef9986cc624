"""``GET /metrics`` of a gunicorn ingress with several workers and of the real worker, scraped
before and after real traffic: the counters and histograms move by what was sent, summed over
every gunicorn worker, and a dead gunicorn worker's open streams stop counting.

The ingress here is a private one (``WEB_CONCURRENCY=3``, its own ``PROMETHEUS_MULTIPROC_DIR``),
so its numbers move only with this module's requests; the worker is the session's, so its
numbers are checked as lower bounds.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from emulators.process import stop_group
from schemas.jobs import new_job_document, new_job_id
from schemas.tasks import get_task
from tests.support import descendants, sse_messages, wait_for
from tests.support.stacks import KEYS, Emulators, Service, start_ingress

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
GUNICORN_WORKERS = 3
JOBS = 30
"""Jobs submitted at once, from fresh connections, so that every gunicorn worker gets some."""
SENDERS = 10
"""Requests in flight at once."""
FRESH = {"Connection": "close"}
"""No keep-alive: each request is a new connection, which any gunicorn worker may accept."""


class Scrape:
    """One scrape of ``/metrics``: each sample's value by name and labels."""

    def __init__(self, url: str):
        response = requests.get(f"{url}/metrics", headers=FRESH, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        self.content_type = response.headers["Content-Type"]
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples


def moved(before: Scrape, after: Scrape) -> Callable[..., float]:
    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    return delta


@pytest.fixture(scope="module")
def multiproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus-multiproc")


@pytest.fixture(scope="module")
def ingress3(emulators: Emulators, log_dir: Path, multiproc_dir: Path) -> Iterator[Service]:
    """A gunicorn ingress with three workers, each of them booted."""
    service = start_ingress(
        emulators,
        log_dir,
        "ingress-metrics",
        WEB_CONCURRENCY=str(GUNICORN_WORKERS),
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
    )
    try:
        wait_for(
            lambda: len(descendants(service.process.pid)) == GUNICORN_WORKERS,
            TIMEOUT,
            "every gunicorn worker to boot",
        )
        yield service
    finally:
        stop_group(service.process, 30)


def metric_file_pids(directory: Path) -> set[int]:
    """The processes that wrote counters or histograms into the multiprocess directory."""
    pattern = re.compile(r"(?:counter|histogram)_(\d+)\.db")
    return {int(m.group(1)) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))}


def submit(ingress: Service, text: str) -> str:
    response = requests.post(
        f"{ingress.url}/v1/jobs",
        headers={**A, **FRESH},
        json={"task": "embed", "input": {"texts": [text]}},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_until_done(ingress: Service, job_id: str) -> dict[str, Any]:
    """One long poll (one ``GET /v1/jobs/<job_id>``) that answers once the job has ended."""
    response = requests.get(
        f"{ingress.url}/v1/jobs/{job_id}?wait=60", headers={**A, **FRESH}, timeout=90
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def test_counters_and_histograms_move_with_the_traffic_summed_over_every_worker(
    ingress3: Service, worker: Service, multiproc_dir: Path
) -> None:
    ingress_before, worker_before = Scrape(ingress3.url), Scrape(worker.url)

    with ThreadPoolExecutor(SENDERS) as pool:
        ids = list(pool.map(lambda i: submit(ingress3, f"metrics job {i}"), range(JOBS)))
        jobs = list(pool.map(lambda job_id: wait_until_done(ingress3, job_id), ids))
        unmatched = list(
            pool.map(
                lambda i: (
                    requests.get(
                        f"{ingress3.url}/v1/no-such-route/{i}",
                        headers={**A, **FRESH},
                        timeout=TIMEOUT,
                    ).status_code
                ),
                range(5),
            )
        )
    assert [job["status"] for job in jobs] == ["succeeded"] * JOBS
    assert unmatched == [404] * 5

    # The ingress: exactly what was sent, whichever worker served it.
    ingress_after = Scrape(ingress3.url)
    delta = moved(ingress_before, ingress_after)
    assert ingress_after.content_type.startswith("text/plain")
    requests_total = "omni_ingress_requests_total"
    assert delta(requests_total, route="/v1/jobs", method="POST", status="202") == JOBS
    assert delta("omni_ingress_request_seconds_count", route="/v1/jobs", method="POST") == JOBS
    get_job = {"route": "/v1/jobs/<job_id>", "method": "GET"}
    assert delta(requests_total, **get_job, status="200") == JOBS
    assert delta("omni_ingress_request_seconds_count", **get_job) == JOBS
    assert delta(requests_total, route="unmatched", method="GET", status="404") == 5
    assert delta("omni_ingress_publish_seconds_count", outcome="ok") == JOBS
    assert delta("omni_ingress_publish_seconds_count", outcome="failed") == 0
    assert delta("omni_ingress_jobs_submitted_total", task="embed") == JOBS
    # Every observation lands in the +Inf bucket, whichever worker made it.
    assert delta("omni_ingress_request_seconds_bucket", **get_job, le="+Inf") == JOBS
    routes = {
        dict(labels)["route"] for name, labels in ingress_after.samples if name == requests_total
    }
    assert not {route for route in routes for job_id in ids if job_id in route}  # templates only
    # More than one worker served them, so the sums above are sums over processes.
    workers = descendants(ingress3.process.pid)
    assert len(metric_file_pids(multiproc_dir) & workers) >= 2

    # The worker: at least these jobs (the session's worker may have run others meanwhile).
    def worker_settled() -> Scrape | None:
        scrape = Scrape(worker.url)
        done = moved(worker_before, scrape)(
            "omni_worker_jobs_total", task="embed", outcome="succeeded"
        )
        in_flight = scrape.get("omni_worker_jobs_in_flight", task="embed")
        return scrape if done >= JOBS and in_flight == 0 else None

    worker_after = wait_for(worker_settled, TIMEOUT, "the worker to count the jobs settled")
    wdelta = moved(worker_before, worker_after)
    assert wdelta("omni_worker_queue_seconds_count", task="embed") >= JOBS
    assert wdelta("omni_worker_batch_size_sum", task="embed") >= JOBS  # jobs through the model
    assert wdelta("omni_worker_batch_size_count", task="embed") >= 1  # model calls
    assert wdelta("omni_worker_inference_seconds_count", task="embed") == wdelta(
        "omni_worker_batch_size_count", task="embed"
    )
    assert wdelta("omni_worker_inference_seconds_sum", task="embed") > 0
    assert worker_after.get("omni_worker_model_load_seconds", task="embed") > 0
    assert worker_after.has("omni_worker_model_load_seconds", task="forecast")
    assert worker_after.content_type.startswith("text/plain")


def queued_job() -> str:
    """A queued ``entities`` job of tenant-a that no message carries: it stays queued, so its
    event stream stays open until the test cancels the job."""
    job_id = new_job_id()
    spec = get_task("entities")
    doc = new_job_document(
        tenant="tenant-a",
        task="entities",
        input=spec.input_to_store({"text": "Ada Lovelace met Charles Babbage."}),
        metadata=None,
        now=datetime.now(UTC),
    )
    firestore.Client().collection("jobs").document(job_id).create(doc, timeout=TIMEOUT)
    return job_id


class Stream:
    def __init__(self, ingress: Service, job_id: str):
        self.response = requests.get(
            f"{ingress.url}/v1/jobs/{job_id}/events",
            headers={**A, **FRESH},
            stream=True,
            timeout=(5, TIMEOUT),
        )
        assert self.response.status_code == 200
        lines = self.response.iter_lines(chunk_size=None, decode_unicode=True)
        self.messages = (m for m in sse_messages(lines) if "comment" not in m)


def open_streams(ingress: Service) -> float:
    return Scrape(ingress.url).get("omni_ingress_event_streams_open")


def test_an_open_event_stream_counts_until_it_closes(ingress3: Service) -> None:
    assert open_streams(ingress3) == 0
    job_id = queued_job()
    stream = Stream(ingress3, job_id)
    try:
        assert next(stream.messages)["event"] == "queued"

        assert open_streams(ingress3) == 1

        cancel = requests.post(
            f"{ingress3.url}/v1/jobs/{job_id}/cancel", headers={**A, **FRESH}, timeout=TIMEOUT
        )
        assert cancel.status_code == 200
        assert [m["event"] for m in stream.messages] == ["cancelled"]  # then the server closes
    finally:
        stream.response.close()

    wait_for(lambda: open_streams(ingress3) == 0, TIMEOUT, "the stream to stop counting")


def stream_holder(directory: Path) -> int:
    """The gunicorn worker whose live gauge counts one open event stream."""
    for path in directory.glob("gauge_livesum_*.db"):
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == "omni_ingress_event_streams_open" and any(
                s.value == 1 for s in metric.samples
            ):
                return int(path.stem.rsplit("_", 1)[1])
    raise AssertionError("no worker file shows the open stream")


def test_a_killed_worker_s_streams_stop_counting_and_its_counters_stay(
    ingress3: Service, multiproc_dir: Path
) -> None:
    stream = Stream(ingress3, queued_job())
    try:
        next(stream.messages)
        before = Scrape(ingress3.url)
        assert before.get("omni_ingress_event_streams_open") == 1
        holder = stream_holder(multiproc_dir)
        assert holder in descendants(ingress3.process.pid)
        assert holder in metric_file_pids(multiproc_dir)  # it counted the stream's request

        os.kill(holder, signal.SIGKILL)  # no finally runs: only gunicorn's child_exit can help

        wait_for(lambda: open_streams(ingress3) == 0, TIMEOUT, "the dead worker's stream to go")
    finally:
        stream.response.close()
    after = Scrape(ingress3.url)
    streams = {"route": "/v1/jobs/<job_id>/events", "method": "GET", "status": "200"}
    assert after.get("omni_ingress_requests_total", **streams) >= 1
    assert after.get("omni_ingress_requests_total", **streams) == before.get(
        "omni_ingress_requests_total", **streams
    )
    assert not (multiproc_dir / f"gauge_livesum_{holder}.db").exists()
    assert holder in metric_file_pids(multiproc_dir)
