"""GET /v1/jobs and GET /v1/batches against the emulators and gunicorn: a tenant pages through its
jobs (and its batches) with every filter, newest first, with no item repeated or skipped across
pages, and never sees another tenant's, whatever page token it sends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from schemas.jobs import new_job_document, new_job_id
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
SINK_TOPIC = "listing-sink"
"""A topic no subscription reads: the jobs submitted here stay queued."""
T0 = datetime(2026, 12, 1, tzinfo=UTC)
STATUSES = ("queued", "failed", "succeeded", "cancelled")
STORED_JOBS = 240
SUBMITTED_JOBS = 10


@pytest.fixture(scope="module")
def tenants() -> dict[str, str]:
    return fresh_tenants("a", "b")


@pytest.fixture(scope="module")
def listing_ingress(
    emulators: Emulators, log_dir: Path, tenants: dict[str, str]
) -> Iterator[Service]:
    sink = sink_topic_named(emulators, SINK_TOPIC)
    with limited_ingress(
        emulators, log_dir, "ingress-listing", list(tenants.values()), {}, JOBS_TOPIC=sink
    ) as service:
        yield service


@pytest.fixture(scope="module")
def stored(emulators: Emulators, tenants: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Tenant a's jobs written straight to Firestore: two tasks, four statuses, and creation
    times that repeat (every third job shares its time with the one before), so that ties are
    broken by id. Tenant b gets a few of its own at the same times."""
    db = firestore.Client()
    jobs: list[tuple[str, dict[str, Any]]] = []
    writes = db.batch()
    for n in range(STORED_JOBS):
        created = T0 + timedelta(seconds=n - (n % 3 == 2))
        doc = new_job_document(
            tenant=tenants["a"],
            task="embed" if n % 2 else "similar",
            input={"texts": [f"text {n}"]},
            metadata=None,
            now=created,
        )
        doc["status"] = STATUSES[n % 4]
        if doc["status"] == "failed":
            doc["error"] = {"code": "model_error", "message": "broken"}
        jobs.append((new_job_id(), doc))
        writes.set(db.collection("jobs").document(jobs[-1][0]), doc)
        if n % 40 == 0:
            other = new_job_document(
                tenant=tenants["b"],
                task="embed",
                input={"texts": ["b"]},
                metadata=None,
                now=created,
            )
            writes.set(db.collection("jobs").document(new_job_id()), other)
        if len(writes) >= 400:
            writes.commit(timeout=TIMEOUT)
            writes = db.batch()
    writes.commit(timeout=TIMEOUT)
    return jobs


def _newest_first(jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [i for i, _ in sorted(jobs, key=lambda j: (j[1]["created_at"], j[0]), reverse=True)]


def _all_pages(
    ingress: Service, tenant: str, limit: int, kind: str = "jobs", **filters: str
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {**filters, "limit": limit}
    for _ in range(STORED_JOBS + SUBMITTED_JOBS + 1):  # more pages than there can be: a cycle fails
        answer = requests.get(
            f"{ingress.url}/v1/{kind}", params=params, headers=tenant_key(tenant), timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page[kind]) <= limit
        seen += page[kind]
        if page["next_page_token"] is None:
            return seen
        params["page_token"] = page["next_page_token"]
    raise AssertionError("the pages did not end")


def test_every_filter_pages_through_exactly_the_matching_jobs(
    listing_ingress: Service, tenants: dict[str, str], stored: list[tuple[str, dict[str, Any]]]
) -> None:
    window = (T0 + timedelta(seconds=50), T0 + timedelta(seconds=150))
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, lambda d: True),
        ({"status": "failed"}, lambda d: d["status"] == "failed"),
        ({"task": "similar"}, lambda d: d["task"] == "similar"),
        (
            {"status": "queued", "task": "similar"},
            lambda d: (d["status"], d["task"]) == ("queued", "similar"),
        ),
        (
            {"created_after": window[0].isoformat(), "created_before": window[1].isoformat()},
            lambda d: window[0] <= d["created_at"] < window[1],
        ),
    ]
    for filters, matches in cases:
        listed = _all_pages(listing_ingress, tenants["a"], 37, **filters)
        ids = [job["id"] for job in listed]
        assert len(ids) == len(set(ids)), f"{filters}: a job on two pages"
        assert ids == _newest_first([j for j in stored if matches(j[1])]), filters


def test_items_are_summaries_and_carry_their_error(
    listing_ingress: Service, tenants: dict[str, str], stored: list[tuple[str, dict[str, Any]]]
) -> None:
    page = requests.get(
        f"{listing_ingress.url}/v1/jobs",
        params={"limit": 1, "status": "failed"},
        headers=tenant_key(tenants["a"]),
        timeout=TIMEOUT,
    ).json()
    (job,) = page["jobs"]
    assert job["error"] == {"code": "model_error", "message": "broken"}
    assert "input" not in job and "result" not in job
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"


def test_another_tenants_page_token_is_refused_and_its_jobs_are_never_listed(
    listing_ingress: Service, tenants: dict[str, str], stored: list[tuple[str, dict[str, Any]]]
) -> None:
    first = requests.get(
        f"{listing_ingress.url}/v1/jobs",
        params={"limit": 5},
        headers=tenant_key(tenants["a"]),
        timeout=TIMEOUT,
    ).json()
    stolen = requests.get(
        f"{listing_ingress.url}/v1/jobs",
        params={"limit": 5, "page_token": first["next_page_token"]},
        headers=tenant_key(tenants["b"]),
        timeout=TIMEOUT,
    )
    assert stolen.status_code == 400
    assert stolen.headers["Content-Type"] == "application/problem+json"
    own = _all_pages(listing_ingress, tenants["b"], 50)
    a_ids = {i for i, _ in stored}
    assert own and not a_ids & {job["id"] for job in own}


def test_a_token_sent_with_other_filters_and_bad_parameters_get_400(
    listing_ingress: Service, tenants: dict[str, str], stored: list[tuple[str, dict[str, Any]]]
) -> None:
    headers = tenant_key(tenants["a"])
    first = requests.get(
        f"{listing_ingress.url}/v1/jobs", params={"limit": 5}, headers=headers, timeout=TIMEOUT
    ).json()
    for params in (
        {"page_token": first["next_page_token"], "status": "failed"},
        {"status": "lost"},
        {"task": "nope"},
        {"limit": "0"},
        {"created_after": "yesterday"},
    ):
        answer = requests.get(
            f"{listing_ingress.url}/v1/jobs", params=params, headers=headers, timeout=TIMEOUT
        )
        assert answer.status_code == 400, params


def test_submitted_jobs_are_listed_first_while_queued(
    listing_ingress: Service, tenants: dict[str, str], stored: list[tuple[str, dict[str, Any]]]
) -> None:
    headers = tenant_key(tenants["a"])
    submitted = []
    for n in range(SUBMITTED_JOBS):
        answer = requests.post(
            f"{listing_ingress.url}/v1/jobs",
            json={"task": "embed", "input": {"texts": [f"listed {n}"]}},
            headers=headers,
            timeout=TIMEOUT,
        )
        assert answer.status_code == 202, answer.text
        submitted.append(answer.json()["id"])
    page = requests.get(
        f"{listing_ingress.url}/v1/jobs",
        params={"limit": SUBMITTED_JOBS, "status": "queued", "task": "embed"},
        headers=headers,
        timeout=TIMEOUT,
    ).json()
    assert sorted(job["id"] for job in page["jobs"]) == sorted(submitted)


# -- batches --------------------------------------------------------------------------------------
STORED_BATCHES = 45
BATCH_COUNTS = {  # the counts each status follows from (schemas.batches.batch_status)
    "running": {"total": 4, "queued": 3, "succeeded": 1},
    "succeeded": {"total": 4, "succeeded": 4},
    "failed": {"total": 4, "succeeded": 3, "failed": 1},
    "cancelled": {"total": 4, "cancelled": 2, "succeeded": 2},
}


@pytest.fixture(scope="module")
def stored_batches(
    emulators: Emulators, tenants: dict[str, str]
) -> list[tuple[str, dict[str, Any], str]]:
    """Tenant a's accepted batches written straight to Firestore, as (id, document, status):
    two tasks, four statuses (their counts in the document; one in the shards), creation times
    that repeat; one batch still being created (never listed) and a few of tenant b's."""
    db = firestore.Client()
    batches: list[tuple[str, dict[str, Any], str]] = []
    writes = db.batch()
    for n in range(STORED_BATCHES + 1):
        created = T0 + timedelta(seconds=n - (n % 3 == 2))
        status = list(BATCH_COUNTS)[n % 4]
        counts = {"total": 0, "queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        doc = {
            "tenant": tenants["a"] if n % 10 else tenants["b"],
            "task": "embed" if n % 2 else "entities",
            "state": "accepted" if n < STORED_BATCHES else "creating",
            "created_at": created,
            "counts": {**counts, "cancelled": 0, **BATCH_COUNTS[status]},
            "cancel_requested": status == "cancelled",
            "open": False,
        }
        batch_id = new_job_id()
        ref = db.collection("batches").document(batch_id)
        if status == "running" and n % 8 == 0:
            # Its last item counted in a shard: the listing reads the shards.
            doc["counts"] = {**doc["counts"], "queued": 0, "succeeded": 4}
            shard = ref.collection("counters").document("3")
            writes.set(shard, {"queued": 1, "succeeded": -1, "at": created})
        writes.set(ref, doc)
        if doc["tenant"] == tenants["a"] and doc["state"] == "accepted":
            batches.append((batch_id, doc, status))
    writes.commit(timeout=TIMEOUT)
    return batches


def test_batches_page_through_every_filter_with_their_status(
    listing_ingress: Service,
    tenants: dict[str, str],
    stored_batches: list[tuple[str, dict[str, Any], str]],
) -> None:
    cases: list[tuple[dict[str, str], Any]] = [
        ({}, lambda d, s: True),
        ({"status": "failed"}, lambda d, s: s == "failed"),
        (
            {"status": "running", "task": "embed"},
            lambda d, s: (s, d["task"]) == ("running", "embed"),
        ),
        ({"task": "entities"}, lambda d, s: d["task"] == "entities"),
        (
            {"created_before": (T0 + timedelta(seconds=20)).isoformat()},
            lambda d, s: d["created_at"] < T0 + timedelta(seconds=20),
        ),
    ]
    by_id = {i: (d, s) for i, d, s in stored_batches}
    for filters, matches in cases:
        listed = _all_pages(listing_ingress, tenants["a"], 7, "batches", **filters)
        ids = [batch["id"] for batch in listed]
        assert len(ids) == len(set(ids)), f"{filters}: a batch on two pages"
        want = [(i, d) for i, d, s in stored_batches if matches(d, s)]
        assert ids == _newest_first(want), filters
        for batch in listed:
            assert batch["status"] == by_id[batch["id"]][1], batch
            assert batch["counts"]["total"] == 4 and batch["links"]["self"].endswith(batch["id"])
    # Another tenant's token is refused; its own listing holds none of a's.
    first = requests.get(
        f"{listing_ingress.url}/v1/batches",
        params={"limit": 2},
        headers=tenant_key(tenants["a"]),
        timeout=TIMEOUT,
    ).json()
    stolen = requests.get(
        f"{listing_ingress.url}/v1/batches",
        params={"limit": 2, "page_token": first["next_page_token"]},
        headers=tenant_key(tenants["b"]),
        timeout=TIMEOUT,
    )
    assert stolen.status_code == 400
    own = _all_pages(listing_ingress, tenants["b"], 50, "batches")
    assert len(own) == 5 and not set(by_id) & {b["id"] for b in own}


def test_a_submitted_batch_is_listed_first(
    listing_ingress: Service, tenants: dict[str, str], stored_batches: list[Any]
) -> None:
    headers = tenant_key(tenants["a"])
    answer = requests.post(
        f"{listing_ingress.url}/v1/batches",
        json={"task": "embed", "items": [{"texts": ["listed"]}, {"texts": ["too"]}]},
        headers=headers,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 202, answer.text
    page = requests.get(
        f"{listing_ingress.url}/v1/batches", params={"limit": 1}, headers=headers, timeout=TIMEOUT
    ).json()
    (batch,) = page["batches"]
    assert batch["id"] == answer.json()["id"] and batch["status"] == "running"
    assert batch["counts"] == {**batch["counts"], "total": 2, "queued": 2}
