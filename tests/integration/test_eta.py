"""Estimates against the emulators, gunicorn and a real worker (schemas/eta.py): a queued batch's
``progress.eta_s``, checked against when it really finishes (a generous bound: within a factor of
four, plus the report interval), and a queued job's place in its task's queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore
from prometheus_client.parser import text_string_to_metric_families

from schemas.eta import RATES_COLLECTION, pool_rates
from tests.support import wait_for
from tests.support.stacks import (
    KEYS,
    Emulators,
    Service,
    fresh_tenants,
    limited_ingress,
    sink_topic_named,
    tenant_key,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
ITEMS = 1280  # five chunks of 256


def run_batch(ingress: Service, items: int, tag: str) -> tuple[dict[str, Any], float]:
    """Submit a batch; its first read (with ``progress``) and its seconds to finish."""
    body = {"task": "embed", "items": [{"texts": [f"{tag} {n} eta"]} for n in range(items)]}
    started = time.monotonic()
    answer = requests.post(f"{ingress.url}/v1/batches", json=body, headers=A, timeout=TIMEOUT)
    assert answer.status_code == 202, answer.text
    url = f"{ingress.url}/v1/batches/{answer.json()['id']}"
    first = requests.get(url, headers=A, timeout=TIMEOUT).json()
    while requests.get(url, headers=A, timeout=TIMEOUT).json()["status"] == "running":
        assert time.monotonic() - started < 300, "the batch did not finish"
        time.sleep(0.2)
    return first, time.monotonic() - started


def embed_rates() -> dict[str, float] | None:
    reports = [s.to_dict() or {} for s in firestore.Client().collection(RATES_COLLECTION).stream()]
    rates = pool_rates(reports, datetime.now(UTC)).get("embed", {})
    return rates if "chunk_items_per_s" in rates and "jobs_per_s" in rates else None


def test_a_queued_batch_s_eta_is_near_its_real_finish(ingress: Service, worker: Service) -> None:
    # The worker has run chunks and jobs of embed and reported its rates.
    run_batch(ingress, 300, "warm")
    requests.post(
        f"{ingress.url}/v1/jobs",
        json={"task": "embed", "input": {"texts": ["warm eta"]}, "cache": False},
        headers=A,
        timeout=TIMEOUT,
    )
    wait_for(embed_rates, 60, "the worker's drain-rate report")
    time.sleep(6)  # past the ingress's rate cache

    first, took_s = run_batch(ingress, ITEMS, "measured")

    assert first["status"] == "running" and "progress" in first, first
    estimate = first["progress"]["eta_s"]
    assert first["progress"]["items_per_s"] > 0
    assert estimate / 4 - 2 <= took_s <= estimate * 4 + 10, (estimate, took_s)


@pytest.fixture(scope="module")
def sink_ingress(emulators: Emulators, log_dir: Path) -> Iterator[tuple[Service, str]]:
    tenant = fresh_tenants("queued")["queued"]
    sink = sink_topic_named(emulators, "eta-sink")
    with limited_ingress(emulators, log_dir, "ingress-eta", [tenant], {}, JOBS_TOPIC=sink) as svc:
        yield svc, tenant


def test_queued_jobs_show_their_place_in_the_queue(
    sink_ingress: tuple[Service, str], worker: Service
) -> None:
    ingress, tenant = sink_ingress
    places = []
    for n in range(3):
        body = {"task": "similar", "input": {"query": f"q{n}", "documents": ["d"], "top_k": 1}}
        job = requests.post(
            f"{ingress.url}/v1/jobs", json=body, headers=tenant_key(tenant), timeout=TIMEOUT
        ).json()
        read = requests.get(
            f"{ingress.url}/v1/jobs/{job['id']}", headers=tenant_key(tenant), timeout=TIMEOUT
        ).json()
        assert read["status"] == "queued"
        places.append(read["queue"]["position_estimate"])
    assert places[1] == places[0] + 1 and places[2] == places[1] + 1, places


def held_gauge(worker: Service, task: str) -> float:
    text = requests.get(f"{worker.url}/metrics", timeout=TIMEOUT).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "omni_worker_held_chunks" and sample.labels.get("task") == task:
                return float(sample.value)
    return 0.0


def test_held_chunks_are_reported_for_the_autoscaler(
    sink_ingress: tuple[Service, str], worker: Service
) -> None:
    ingress, tenant = sink_ingress  # its chunks go where nobody pulls: the held ones stay held
    items = [{"texts": [f"held {n}"]} for n in range(12 * 256)]  # 12 chunks: 8 queued, 4 held
    answer = requests.post(
        f"{ingress.url}/v1/batches",
        json={"task": "embed", "items": items},
        headers=tenant_key(tenant),
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    chunks = firestore.Client().collection("batches").document(answer.json()["id"])
    held = [s for s in chunks.collection("chunks").stream() if s.to_dict()["status"] == "held"]
    assert len(held) == 4

    # The one worker holds the lease and counts every held embed chunk (this batch's among them).
    wait_for(lambda: held_gauge(worker, "embed") >= 4, 60, "the held-chunks gauge")
