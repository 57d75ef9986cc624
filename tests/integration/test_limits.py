"""Per-tenant limits against the emulators and gunicorn: the request rate (429 + Retry-After, the
split across instances) and the jobs-in-flight cap (429 + Retry-After, exact shared counters that
every writer moves, a replay answered at the cap).

Each test runs its own ingress with ``TENANT_LIMITS`` and its own tenants (a random suffix), so
no other test meets a limit and the counters start at zero."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ingress.jobs.store import JobStore
from schemas.chunks import RETRY_PREFIX
from schemas.jobs import new_job_document, new_job_id
from schemas.quota import in_flight_of, shard_paths
from tests.support import wait_for
from tests.support.stacks import (
    Emulators,
    Service,
    fresh_tenants,
    limited_ingress,
    sink_topic_named,
    tenant_key,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30
PROBLEM = "application/problem+json"
SINK_TOPIC = "limits-sink"
"""A topic no subscription reads: jobs published to it stay queued."""


@pytest.fixture(scope="module")
def sink_topic(emulators: Emulators) -> str:
    return sink_topic_named(emulators, SINK_TOPIC)


def in_flight(tenant: str) -> int:
    db = firestore.Client()
    refs = [db.document(*parts) for parts in shard_paths(tenant)]
    return in_flight_of([s.to_dict() or {} for s in db.get_all(refs, timeout=TIMEOUT) if s.exists])


def counted(tenant: str) -> int:
    """The tenant's queued + running jobs and batch items, counted from the documents themselves
    (a chunk's items by their status letters: a cancel or an end moves them one by one)."""
    client = firestore.Client()
    query = (
        client.collection("jobs")
        .where(filter=FieldFilter("tenant", "==", tenant))
        .where(filter=FieldFilter("status", "in", ["queued", "running"]))
    )
    jobs = int(query.count().get(timeout=TIMEOUT)[0][0].value)
    chunks = (
        client.collection_group("chunks")
        .where(filter=FieldFilter("tenant", "==", tenant))
        .where(filter=FieldFilter("status", "in", ["queued", "running"]))
    )
    items = sum(
        sum(letter in "qr" for letter in str((doc.to_dict() or {}).get("items") or ""))
        for doc in chunks.stream(timeout=TIMEOUT)
    )
    return jobs + items


def submit(ingress: Service, tenant: str, **headers: str) -> requests.Response:
    body = {"task": "embed", "input": {"texts": ["a limit"]}}
    return requests.post(
        f"{ingress.url}/v1/jobs",
        json=body,
        headers={**tenant_key(tenant), **headers},
        timeout=TIMEOUT,
    )


def submit_batch(ingress: Service, tenant: str, items: int) -> requests.Response:
    body = {"task": "embed", "items": [{"texts": [f"item {i}"]} for i in range(items)]}
    return requests.post(
        f"{ingress.url}/v1/batches", json=body, headers=tenant_key(tenant), timeout=TIMEOUT
    )


def assert_429(response: requests.Response, mentions: str) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 429 and problem["type"] == "/problems/too-many-requests"
    assert problem["title"] == "Too Many Requests" and mentions in problem["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


# -- the request rate ----------------------------------------------------------------------------


def test_over_the_rate_is_429_with_retry_after_and_other_tenants_go_on(
    emulators: Emulators, log_dir: Path
) -> None:
    t = fresh_tenants("rated", "other", "free")
    # A token every 2 s: the eight requests below take far less on any machine, so exactly the
    # burst passes however loaded this one is.
    limits = {t["rated"]: {"rate": 0.5, "burst": 3}, t["other"]: {"rate": 0.5, "burst": 3}}
    with limited_ingress(
        emulators,
        log_dir,
        "ingress-rate",
        list(t.values()),
        limits,
        INSTANCES_COLLECTION=f"instances-{t['rated']}",
    ) as ingress:
        tasks = f"{ingress.url}/v1/tasks"
        answers = [
            requests.get(tasks, headers=tenant_key(t["rated"]), timeout=TIMEOUT) for _ in range(8)
        ]

        statuses = [a.status_code for a in answers]
        assert statuses[:4] == [200, 200, 200, 429], statuses  # the burst, then none left
        refused = answers[3]
        retry_after = assert_429(refused, "request rate")
        assert refused.headers["RateLimit-Limit"] == "3"
        assert answers[0].headers["RateLimit-Limit"] == "3"
        assert answers[0].headers["RateLimit-Remaining"] == "2"

        # Another tenant's bucket is its own, and a tenant with no limit has none.
        assert (
            requests.get(tasks, headers=tenant_key(t["other"]), timeout=TIMEOUT).status_code == 200
        )
        free = [
            requests.get(tasks, headers=tenant_key(t["free"]), timeout=TIMEOUT) for _ in range(10)
        ]
        assert {a.status_code for a in free} == {200}
        assert "RateLimit-Limit" not in free[0].headers
        # Public routes are never limited.
        assert requests.get(f"{ingress.url}/health", timeout=TIMEOUT).status_code == 200

        time.sleep(retry_after)
        after = requests.get(tasks, headers=tenant_key(t["rated"]), timeout=TIMEOUT)
        assert after.status_code == 200, after.text


def test_two_instances_each_take_half_of_the_rate(emulators: Emulators, log_dir: Path) -> None:
    # A slow rate (a token every 10 s per instance), so that refills cannot blur the counts.
    t = fresh_tenants("split")
    limits = {t["split"]: {"rate": 0.2, "burst": 4}}
    collection = f"instances-{t['split']}"
    common = {"INSTANCES_COLLECTION": collection, "INSTANCE_HEARTBEAT_S": "1"}
    names = list(t.values())
    with (
        limited_ingress(emulators, log_dir, "ingress-split-1", names, limits, **common) as one,
        limited_ingress(emulators, log_dir, "ingress-split-2", names, limits, **common) as two,
    ):
        # Both registered, and each has counted both (a beat or two after the second appeared).
        registry = firestore.Client().collection(collection)

        def live() -> int:
            since = datetime.now(UTC) - timedelta(seconds=3)
            query = registry.where(filter=FieldFilter("seen_at", ">=", since))
            return int(query.count().get(timeout=TIMEOUT)[0][0].value)

        wait_for(lambda: live() == 2, 30, "two live instances in the registry")
        time.sleep(3)  # three beats: each instance has counted the other

        def admitted(ingress: Service) -> list[int]:
            url = f"{ingress.url}/v1/tasks"
            return [
                requests.get(url, headers=tenant_key(t["split"]), timeout=TIMEOUT).status_code
                for _ in range(3)
            ]

        # Each instance's bucket holds half the burst: 2 of 4, so the tenant gets 4 in all.
        assert admitted(one) == [200, 200, 429]
        assert admitted(two) == [200, 200, 429]

    # Stopped, each instance removed its own document.
    assert list(registry.limit(1).stream(timeout=TIMEOUT)) == []


# -- jobs in flight ------------------------------------------------------------------------------


def test_over_the_in_flight_cap_is_429_until_a_job_ends(
    emulators: Emulators, log_dir: Path, sink_topic: str
) -> None:
    t = fresh_tenants("capped", "uncapped")
    limits = {t["capped"]: {"in_flight": 3}}
    with limited_ingress(
        emulators, log_dir, "ingress-cap", list(t.values()), limits, JOBS_TOPIC=sink_topic
    ) as ingress:
        first = submit(ingress, t["capped"], **{"Idempotency-Key": "cap-replay"})
        jobs = [first] + [submit(ingress, t["capped"]) for _ in range(2)]
        assert [r.status_code for r in jobs] == [202, 202, 202]
        assert in_flight(t["capped"]) == counted(t["capped"]) == 3

        over = submit(ingress, t["capped"])
        assert assert_429(over, "3 of this tenant's cap of 3") == 5
        assert in_flight(t["capped"]) == 3  # nothing was created

        # A replay of an accepted request creates nothing: answered at the cap.
        replay = submit(ingress, t["capped"], **{"Idempotency-Key": "cap-replay"})
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
        assert replay.headers["Idempotent-Replayed"] == "true"

        # A refused idempotent request left its key free: the same key works once there is room.
        refused = submit(ingress, t["capped"], **{"Idempotency-Key": "cap-later"})
        assert refused.status_code == 429

        # A cancel ends a job: one slot.
        job_id = jobs[1].json()["id"]
        cancel = requests.post(
            f"{ingress.url}/v1/jobs/{job_id}/cancel",
            headers=tenant_key(t["capped"]),
            timeout=TIMEOUT,
        )
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
        assert in_flight(t["capped"]) == 2
        later = submit(ingress, t["capped"], **{"Idempotency-Key": "cap-later"})
        assert later.status_code == 202, later.text

        # Full again; one more cancel leaves one slot: a batch of 2 must wait, one of 1 fits,
        # and one larger than the whole cap never could.
        requests.post(
            f"{ingress.url}/v1/jobs/{later.json()['id']}/cancel",
            headers=tenant_key(t["capped"]),
            timeout=TIMEOUT,
        ).raise_for_status()
        assert_429(submit_batch(ingress, t["capped"], 2), "2 more would pass it")
        too_big = submit_batch(ingress, t["capped"], 4)
        assert too_big.status_code == 413 and "cap of 3" in too_big.json()["detail"]
        batch = submit_batch(ingress, t["capped"], 1)
        assert batch.status_code == 202, batch.text
        assert in_flight(t["capped"]) == counted(t["capped"]) == 3

        # Cancelling the batch ends its queued item (the sweep runs in the background).
        requests.post(
            f"{ingress.url}/v1/batches/{batch.json()['id']}/cancel",
            headers=tenant_key(t["capped"]),
            timeout=TIMEOUT,
        ).raise_for_status()
        wait_for(lambda: in_flight(t["capped"]) == 2, 30, "the batch cancel counted")
        assert counted(t["capped"]) == 2

        # A tenant without a cap is not limited.
        assert all(submit(ingress, t["uncapped"]).status_code == 202 for _ in range(5))
        assert in_flight(t["uncapped"]) == counted(t["uncapped"]) == 5


def test_a_create_counts_once_and_a_failed_publish_uncounts(emulators: Emulators) -> None:
    t = fresh_tenants("store")["store"]
    store = JobStore(firestore.Client(), "jobs", timeout_s=TIMEOUT, result_ttl_s=3600)
    doc = new_job_document(
        tenant=t, task="embed", input={"texts": ["a"]}, metadata=None, now=datetime.now(UTC)
    )
    job_id = new_job_id()

    written_at = store.create(job_id, doc)
    assert store.create(job_id, doc) == written_at  # a retried create: counted once
    assert in_flight(t) == 1

    assert store.fail_unpublished(job_id, t, written_at, "publish failed") is True
    assert in_flight(t) == counted(t) == 0


def test_counts_return_to_zero_when_the_worker_finishes_jobs(
    emulators: Emulators, log_dir: Path, worker: Service
) -> None:
    t = fresh_tenants("e2e")["e2e"]
    with limited_ingress(emulators, log_dir, "ingress-e2e", [t], {t: {"in_flight": 10}}) as ingress:
        good = submit(ingress, t)
        bad = requests.post(
            f"{ingress.url}/v1/jobs",
            json={"task": "predict", "input": {"model": "no-such-model", "instances": [[1.0]]}},
            headers=tenant_key(t),
            timeout=TIMEOUT,
        )
        batch = submit_batch(ingress, t, 3)
        assert [r.status_code for r in (good, bad, batch)] == [202, 202, 202]

        def finished(job_id: str) -> str | None:
            url = f"{ingress.url}/v1/jobs/{job_id}?wait=5"
            status = requests.get(url, headers=tenant_key(t), timeout=TIMEOUT).json()["status"]
            return status if status in ("succeeded", "failed") else None

        assert wait_for(lambda: finished(good.json()["id"]), 120, "the job") == "succeeded"
        assert wait_for(lambda: finished(bad.json()["id"]), 120, "the job") == "failed"
        wait_for(lambda: counted(t) == 0, 120, "the batch's items to finish")
        assert in_flight(t) == 0

        # A batch retry queues its failed items again: checked against the cap like a submit.
        body = {
            "task": "predict",
            "items": [{"model": "no-such-model", "instances": [[1.0]]} for _ in range(4)],
        }
        failing = requests.post(
            f"{ingress.url}/v1/batches", json=body, headers=tenant_key(t), timeout=TIMEOUT
        )
        assert failing.status_code == 202, failing.text
        batch_url = f"{ingress.url}/v1/batches/{failing.json()['id']}"

        def batch_status() -> str | None:
            status = requests.get(batch_url, headers=tenant_key(t), timeout=TIMEOUT).json()[
                "status"
            ]
            return None if status == "running" else str(status)

        assert wait_for(batch_status, 120, "the failing batch") == "failed"
        small = {t: {"in_flight": 3}}  # the same tenant, under a smaller cap on another ingress
        with limited_ingress(emulators, log_dir, "ingress-e2e-small", [t], small) as other:
            refused = requests.post(
                f"{other.url}/v1/batches/{failing.json()['id']}/retry",
                headers=tenant_key(t),
                timeout=TIMEOUT,
            )
            assert refused.status_code == 409 and "4 failed items" in refused.json()["detail"]
        assert in_flight(t) == 0  # nothing was re-queued

        def lines() -> list[dict[str, Any]]:
            results = requests.get(f"{batch_url}/results", headers=tenant_key(t), timeout=TIMEOUT)
            return [json.loads(line) for line in results.text.splitlines()]

        assert [line["status"] for line in lines()] == ["failed"] * 4
        retried = requests.post(f"{batch_url}/retry", headers=tenant_key(t), timeout=TIMEOUT)
        assert retried.status_code == 200, retried.text
        # Every failed item runs again, in a new retry chunk.
        chunks = (
            firestore.Client()
            .collection("batches")
            .document(failing.json()["id"])
            .collection("chunks")
            .stream(timeout=TIMEOUT)
        )
        retry_items = [
            int((c.to_dict() or {})["n"]) for c in chunks if c.id.startswith(RETRY_PREFIX)
        ]
        assert sum(retry_items) == 4 and len(lines()) == 4
        # They fail again (no such model); each was counted once in and once out.
        assert wait_for(batch_status, 120, "the retried batch") == "failed"
        wait_for(lambda: counted(t) == 0, 60, "the retried items to end")
        assert in_flight(t) == 0
