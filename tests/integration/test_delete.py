"""DELETE /v1/jobs/ID and DELETE /v1/batches/ID against the emulators, gunicorn and a real worker:
the resource goes with its result, events, webhook ledger and cache entry; one still in flight
stops counting against its tenant at once; another tenant's id is 404 and deletes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from schemas.quota import in_flight_of, shard_paths
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
B = {"X-API-Key": KEYS["tenant-b"]}


def in_flight(tenant: str) -> int:
    db = firestore.Client()
    refs = [db.document(*parts) for parts in shard_paths(tenant)]
    return in_flight_of([s.to_dict() or {} for s in db.get_all(refs, timeout=TIMEOUT) if s.exists])


def delete(ingress: Service, path: str, headers: dict[str, str]) -> requests.Response:
    return requests.delete(f"{ingress.url}{path}", headers=headers, timeout=TIMEOUT)


def test_a_finished_job_goes_with_its_ledger_and_cache_entry(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": ["delete me after"]}, "cache": False}
    job = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT).json()
    path = f"/v1/jobs/{job['id']}"
    done = requests.get(f"{ingress.url}{path}?wait=30", headers=A, timeout=60).json()
    assert done["status"] == "succeeded", done
    db = firestore.Client()
    stored = db.collection("jobs").document(job["id"]).get(timeout=TIMEOUT).to_dict() or {}
    cache_entry = db.collection("result_cache").document(stored["cache_key"])
    assert cache_entry.get(timeout=TIMEOUT).exists
    ledger = db.collection("webhook_deliveries").document(f"job-{job['id']}")
    ledger.set({"tenant": "tenant-a", "kind": "job"}, timeout=TIMEOUT)  # as the sender leaves it

    assert delete(ingress, path, B).status_code == 404  # another tenant's: nothing happens
    assert requests.get(f"{ingress.url}{path}", headers=A, timeout=TIMEOUT).status_code == 200
    answer = delete(ingress, path, A)

    assert answer.status_code == 204 and answer.text == ""
    assert requests.get(f"{ingress.url}{path}", headers=A, timeout=TIMEOUT).status_code == 404
    assert delete(ingress, path, A).status_code == 404
    assert not cache_entry.get(timeout=TIMEOUT).exists and not ledger.get(timeout=TIMEOUT).exists
    again = requests.post(f"{ingress.url}/v1/jobs", json={**body, "cache": True}, headers=A)
    assert again.status_code == 202  # the entry went with the job


@pytest.fixture(scope="module")
def capped() -> dict[str, str]:
    return fresh_tenants("capped", "other")


@pytest.fixture(scope="module")
def sink_ingress(emulators: Emulators, log_dir: Path, capped: dict[str, str]) -> Iterator[Service]:
    """An ingress whose jobs and chunks nobody reads (they stay queued), ``capped`` at 3 items in
    flight."""
    sink = sink_topic_named(emulators, "delete-sink")
    limits = {capped["capped"]: {"in_flight": 3}}
    with limited_ingress(
        emulators, log_dir, "ingress-delete", list(capped.values()), limits, JOBS_TOPIC=sink
    ) as service:
        yield service


def test_a_queued_job_deleted_frees_its_slot_at_once(
    sink_ingress: Service, capped: dict[str, str]
) -> None:
    headers = tenant_key(capped["capped"])

    def submit(n: int) -> requests.Response:
        body = {"task": "embed", "input": {"texts": [f"queued {n}"]}}
        return requests.post(f"{sink_ingress.url}/v1/jobs", json=body, headers=headers)

    jobs = [submit(n).json()["id"] for n in range(3)]
    assert submit(3).status_code == 429
    assert delete(sink_ingress, f"/v1/jobs/{jobs[0]}", headers).status_code == 204

    assert in_flight(capped["capped"]) == 2
    assert submit(4).status_code == 202
    for job_id in jobs[1:]:
        assert delete(sink_ingress, f"/v1/jobs/{job_id}", headers).status_code == 204
    listed = requests.get(f"{sink_ingress.url}/v1/jobs", headers=headers).json()["jobs"]
    assert not {j["id"] for j in listed} & set(jobs)


def test_a_queued_batch_goes_with_its_chunks_and_its_items_leave_the_count(
    sink_ingress: Service, capped: dict[str, str]
) -> None:
    tenant = capped["other"]
    headers = tenant_key(tenant)
    before = in_flight(tenant)
    items = [{"texts": [f"item {n}"]} for n in range(600)]  # several chunks
    batch: dict[str, Any] = requests.post(
        f"{sink_ingress.url}/v1/batches",
        json={"task": "embed", "items": items},
        headers=headers,
        timeout=TIMEOUT,
    ).json()
    assert in_flight(tenant) == before + 600
    ref = firestore.Client().collection("batches").document(batch["id"])
    assert len(list(ref.collection("chunks").stream(timeout=TIMEOUT))) >= 3

    assert (
        delete(sink_ingress, f"/v1/batches/{batch['id']}", tenant_key("nobody")).status_code == 401
    )
    answer = delete(sink_ingress, f"/v1/batches/{batch['id']}", headers)

    assert answer.status_code == 204
    assert in_flight(tenant) == before
    assert not ref.get(timeout=TIMEOUT).exists
    assert not list(ref.collection("chunks").stream(timeout=TIMEOUT))
    assert not list(ref.collection("counters").stream(timeout=TIMEOUT))
    url = f"{sink_ingress.url}/v1/batches/{batch['id']}"
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{url}/results", headers=headers, timeout=TIMEOUT).status_code == 404


def test_a_finished_batch_is_deleted_and_another_tenants_is_not(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "items": [{"texts": ["a"]}, {"texts": ["b"]}]}
    batch = requests.post(f"{ingress.url}/v1/batches", json=body, headers=A, timeout=TIMEOUT)
    url = f"{ingress.url}/v1/batches/{batch.json()['id']}"
    events = requests.get(f"{url}/events", headers=A, timeout=60).text
    assert "event: done" in events

    assert delete(ingress, f"/v1/batches/{batch.json()['id']}", B).status_code == 404
    assert requests.get(url, headers=A, timeout=TIMEOUT).json()["status"] == "succeeded"
    assert delete(ingress, f"/v1/batches/{batch.json()['id']}", A).status_code == 204
    assert requests.get(f"{url}/results", headers=A, timeout=TIMEOUT).status_code == 404
