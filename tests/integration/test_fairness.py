"""Fair share between batches, and single jobs first, against the emulators, gunicorn and a real
worker (docs/scheduling.md): tenant A's large batch does not hold tenant B's small batch or B's
single jobs behind it, and still finishes.

The ingress here cuts embed batches into chunks of 16 items and keeps 2 chunks of each batch
published (``BATCH_WINDOW_CHUNKS``). A's batch is 20 chunks (320 items), B's one chunk (16 items,
20 times fewer). Pub/Sub then holds at most A's 2 chunks ahead of B's, and the worker leases at
most 2 chunk messages, so B's chunk runs after at most ``AHEAD`` of A's: the bound tested is that
A has at most ``AHEAD`` chunks done when B's batch ends (without windows B's chunk would queue
behind all 20). B's single jobs go before any chunk's next sub-batch (worker/modellock.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import wait_for
from tests.support.stacks import (
    KEYS,
    Emulators,
    Service,
    fresh_tenants,
    limited_ingress,
    tenant_key,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30
CHUNK = 16
A_CHUNKS = 20
WINDOW = 2
AHEAD = WINDOW + 2 + 1
"""A's chunks that can run before B's: its window in Pub/Sub, the two the worker may have leased
before B's was published, and one released as the first of those ended."""


@pytest.fixture(scope="module")
def tenants() -> dict[str, str]:
    return fresh_tenants("big", "small")


@pytest.fixture(scope="module")
def fair_ingress(emulators: Emulators, log_dir: Path, tenants: dict[str, str]) -> Iterator[Service]:
    with limited_ingress(
        emulators,
        log_dir,
        "ingress-fair",
        list(tenants.values()),
        {},
        CHUNK_ITEMS_EMBED=str(CHUNK),
        BATCH_WINDOW_CHUNKS=str(WINDOW),
    ) as service:
        yield service


def submit_batch(ingress: Service, tenant: str, items: int, tag: str) -> dict[str, Any]:
    body = {"task": "embed", "items": [{"texts": [f"{tag} item {n}"]} for n in range(items)]}
    answer = requests.post(
        f"{ingress.url}/v1/batches", json=body, headers=tenant_key(tenant), timeout=TIMEOUT
    )
    assert answer.status_code == 202, answer.text
    batch: dict[str, Any] = answer.json()
    return batch


def read(ingress: Service, tenant: str, path: str) -> dict[str, Any]:
    answer = requests.get(f"{ingress.url}{path}", headers=tenant_key(tenant), timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_small_tenant_is_not_held_behind_a_large_batch(
    fair_ingress: Service, worker: Service, tenants: dict[str, str]
) -> None:
    big, small = tenants["big"], tenants["small"]
    large = submit_batch(fair_ingress, big, A_CHUNKS * CHUNK, "large")
    small_batch = submit_batch(fair_ingress, small, CHUNK, "small")
    jobs = [
        requests.post(
            f"{fair_ingress.url}/v1/jobs",
            json={"task": "embed", "input": {"texts": [f"small job {n}"]}, "cache": False},
            headers=tenant_key(small),
            timeout=TIMEOUT,
        ).json()["id"]
        for n in range(3)
    ]
    large_path, small_path = f"/v1/batches/{large['id']}", f"/v1/batches/{small_batch['id']}"

    done_at: dict[str, int] = {}  # what A had done when each of B's things finished
    deadline = time.monotonic() + 240
    while len(done_at) < 2 and time.monotonic() < deadline:
        a_done = read(fair_ingress, big, large_path)["counts"]["succeeded"]
        if "jobs" not in done_at and all(
            read(fair_ingress, small, f"/v1/jobs/{j}")["status"] == "succeeded" for j in jobs
        ):
            done_at["jobs"] = a_done
        if "batch" not in done_at:
            b = read(fair_ingress, small, small_path)
            if b["status"] == "succeeded":
                done_at["batch"] = a_done
        time.sleep(0.05)

    assert set(done_at) == {"jobs", "batch"}, done_at
    assert done_at["batch"] <= AHEAD * CHUNK, (done_at, "B's batch waited for A's")
    assert done_at["jobs"] <= AHEAD * CHUNK, (done_at, "B's jobs waited for A's batch")
    # A's batch still finishes, every item once, with no chunk left held.
    while time.monotonic() < deadline:
        finished = read(fair_ingress, big, large_path)
        if finished["status"] != "running":
            break
        time.sleep(0.2)
    assert finished["status"] == "succeeded", finished
    assert finished["counts"]["succeeded"] == A_CHUNKS * CHUNK


def test_a_job_sent_as_batch_priority_runs_as_batch_work(ingress: Service, worker: Service) -> None:
    body = {
        "task": "embed",
        "input": {"texts": ["whenever you can"]},
        "priority": "batch",
        "cache": False,
    }
    headers = {"X-API-Key": KEYS["tenant-a"]}
    job = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=TIMEOUT)
    assert job.status_code == 202 and job.json()["priority"] == "batch", job.text
    url = f"{ingress.url}/v1/jobs/{job.json()['id']}"
    done = requests.get(url, params={"wait": 30}, headers=headers, timeout=60).json()
    assert done["status"] == "succeeded" and done["priority"] == "batch", done

    def logged() -> bool:
        lines = [line for line in worker.log_lines() if line.get("job_id") == done["id"]]
        return any(line.get("message") == "job succeeded" for line in lines)

    wait_for(logged, 10, "the worker's line of the batch-priority job")
    bad = requests.post(
        f"{ingress.url}/v1/jobs", json={**body, "priority": "urgent"}, headers=headers
    )
    assert bad.status_code == 422
