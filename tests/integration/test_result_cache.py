"""The result cache through the whole pipeline (emulators, gunicorn, a real worker, real models;
schemas/resultcache.py): a tenant's identical input to a deterministic task is answered at submit,
200 with a ``succeeded`` job whose ``timings.cache_hit`` is true, without a message or a worker;
another tenant's identical input, ``"cache": false`` and a newer ``predict`` version all run the
model."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from tests.support import wait_for
from tests.support.predictmodels import build_versions
from tests.support.stacks import KEYS, Service

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}


def submit(ingress: Service, body: dict[str, Any], headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=TIMEOUT)


def finished(ingress: Service, answer: requests.Response, headers: dict[str, str]) -> Any:
    """The job ``answer`` accepted, once it is terminal."""
    assert answer.status_code in (200, 202), answer.text
    job_id = answer.json()["id"]
    url = f"{ingress.url}/v1/jobs/{job_id}"
    return requests.get(url, params={"wait": 30}, headers=headers, timeout=60).json()


def worker_saw(worker: Service, job_id: str) -> bool:
    return any(line.get("job_id") == job_id for line in worker.log_lines())


def worker_ran(worker: Service, job_id: str) -> bool:
    """Whether the worker logged the job: its line may follow the write a reader saw."""
    return bool(wait_for(lambda: worker_saw(worker, job_id), 10, f"the worker's line of {job_id}"))


def test_the_same_input_twice_is_answered_from_the_cache_the_second_time(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": [f"cache me {uuid.uuid4().hex}", "and me"]}}
    first = finished(ingress, submit(ingress, body, A), A)
    assert first["status"] == "succeeded" and "cache_hit" not in first["timings"], first

    again = submit(ingress, body, A)

    assert again.status_code == 200, again.text
    job = again.json()
    assert job["id"] != first["id"] and job["status"] == "succeeded"
    assert again.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["timings"]["cache_hit"] is True and job["attempts"] == 0
    assert job["result"] == first["result"]  # the very vectors, bit for bit
    # A job like any other: readable, listed, with its one terminal event; no worker touched it.
    read = requests.get(f"{ingress.url}/v1/jobs/{job['id']}", headers=A, timeout=TIMEOUT).json()
    assert read["result"] == first["result"] and read["timings"]["cache_hit"] is True
    listed = requests.get(f"{ingress.url}/v1/jobs", headers=A, timeout=TIMEOUT).json()["jobs"]
    assert job["id"] in {j["id"] for j in listed}
    events = requests.get(
        f"{ingress.url}/v1/jobs/{job['id']}/events", headers=A, timeout=TIMEOUT
    ).text
    assert events.count("event: succeeded") == 1
    doc = firestore.Client().collection("jobs").document(job["id"]).get(timeout=TIMEOUT).to_dict()
    assert doc is not None and doc["terminal_writes"] == 1 and "worker" not in doc
    assert worker_ran(worker, first["id"]) and not worker_saw(worker, job["id"])


def test_another_tenant_and_cache_false_run_the_model(ingress: Service, worker: Service) -> None:
    body = {"task": "entities", "input": {"text": f"Ada Lovelace met {uuid.uuid4().hex} in London"}}
    first = finished(ingress, submit(ingress, body, A), A)
    assert first["status"] == "succeeded", first

    other = submit(ingress, body, B)
    uncached = submit(ingress, {**body, "cache": False}, A)

    assert other.status_code == 202 and uncached.status_code == 202
    for answer, headers in ((other, B), (uncached, A)):
        job = finished(ingress, answer, headers)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert "cache_hit" not in job["timings"] and job["result"] == first["result"]
        assert worker_ran(worker, job["id"])
    # Tenant B's run left an entry of its own: its next identical job is B's hit.
    assert submit(ingress, body, B).status_code == 200


def test_an_idempotent_replay_of_a_hit_answers_the_same_job(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": [f"replay {uuid.uuid4().hex}"]}}
    assert finished(ingress, submit(ingress, body, A), A)["status"] == "succeeded"
    key = {"Idempotency-Key": uuid.uuid4().hex}

    hit = submit(ingress, body, {**A, **key})
    replay = submit(ingress, body, {**A, **key})

    assert hit.status_code == 200, hit.text
    assert replay.json()["id"] == hit.json()["id"]
    assert replay.headers.get("Idempotent-Replayed") == "true"


@pytest.fixture(scope="module")
def two_versions() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="omni-cache-models-") as path:
        build_versions(Path(path), 2)
        yield Path(path)


def test_a_new_predict_version_is_not_served_from_the_old_versions_entry(
    ingress: Service, worker: Service, model_repository: Path, two_versions: Path
) -> None:
    name = f"cached-{uuid.uuid4().hex[:8]}"
    (model_repository / name).mkdir()
    shutil.copytree(two_versions / "1", model_repository / name / "1")
    unversioned = {"task": "predict", "input": {"model": name, "instances": [[0.5]]}}
    first = finished(ingress, submit(ingress, unversioned, A), A)
    assert first["result"]["version"] == 1 and first["result"]["predictions"] == [[1.0]]
    hit = submit(ingress, unversioned, A)
    assert hit.status_code == 200 and hit.json()["result"]["version"] == 1

    # Version 2 is published; a job naming it makes the worker list the repository again.
    shutil.copytree(two_versions / "2", model_repository / name / "2")
    pinned = {"task": "predict", "input": {"model": name, "version": 2, "instances": [[0.5]]}}
    assert finished(ingress, submit(ingress, pinned, A), A)["result"]["version"] == 2

    # An unversioned job would now be served version 2: version 1's entry is no answer.
    after = submit(ingress, unversioned, A)
    assert after.status_code == 202, after.text
    job = finished(ingress, after, A)
    assert job["result"]["version"] == 2 and job["result"]["predictions"] == [[2.0]]
    again = submit(ingress, unversioned, A)
    assert again.status_code == 200 and again.json()["result"]["version"] == 2
    # Version 1 named explicitly still has its own entry.
    v1 = {"task": "predict", "input": {"model": name, "version": 1, "instances": [[0.5]]}}
    assert finished(ingress, submit(ingress, v1, A), A)["result"]["version"] == 1
    assert submit(ingress, v1, A).status_code == 200


def test_forecast_is_never_cached(ingress: Service, worker: Service) -> None:
    series = [{"ds": f"2026-01-{day:02d}", "y": float(day % 7)} for day in range(1, 29)]
    body = {"task": "forecast", "input": {"series": series, "horizon": 3, "frequency": "D"}}
    assert finished(ingress, submit(ingress, body, A), A)["status"] == "succeeded"
    assert submit(ingress, body, A).status_code == 202


def chunk_lines(worker: Service, batch_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in worker.log_lines()
        if line.get("batch_id") == batch_id and "sub_batches" in line
    ]


def run_batch(ingress: Service, items: list[dict[str, Any]], headers: dict[str, str]) -> str:
    body = {"task": "embed", "items": items}
    answer = requests.post(f"{ingress.url}/v1/batches", json=body, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 202, answer.text
    batch_id: str = answer.json()["id"]
    url = f"{ingress.url}/v1/batches/{batch_id}"
    wait_for(
        lambda: requests.get(url, headers=headers, timeout=TIMEOUT).json()["status"] != "running",
        120,
        f"batch {batch_id}",
        interval_s=0.2,
    )
    return batch_id


def results_of(ingress: Service, batch_id: str, headers: dict[str, str]) -> list[Any]:
    url = f"{ingress.url}/v1/batches/{batch_id}/results"
    text = requests.get(url, headers=headers, timeout=TIMEOUT).text
    return [json.loads(line)["result"] for line in text.splitlines()]


def test_a_batch_sent_again_runs_no_model_and_identical_items_run_once(
    ingress: Service, worker: Service
) -> None:
    tag = uuid.uuid4().hex
    items = [{"texts": [f"{tag} {n % 50}"]} for n in range(300)]  # 50 distinct, two chunks
    first = run_batch(ingress, items, A)
    wait_for(lambda: len(chunk_lines(worker, first)) == 2, 10, "the first batch's chunk lines")
    assert all(line["sub_batches"] >= 1 for line in chunk_lines(worker, first))

    again = run_batch(ingress, items, A)
    other = run_batch(ingress, items, B)

    wait_for(lambda: len(chunk_lines(worker, again)) == 2, 10, "the second batch's chunk lines")
    assert [line["sub_batches"] for line in chunk_lines(worker, again)] == [0, 0]
    assert results_of(ingress, again, A) == results_of(ingress, first, A)
    wait_for(lambda: len(chunk_lines(worker, other)) == 2, 10, "tenant b's chunk lines")
    assert all(line["sub_batches"] >= 1 for line in chunk_lines(worker, other))
    assert results_of(ingress, other, B) == results_of(ingress, first, A)
