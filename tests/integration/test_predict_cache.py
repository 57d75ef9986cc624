"""``predict`` keeps bounded memory and cheap misses, through the whole pipeline on real Keras
models (worker/tasks/predict.py; docs/tasks.md).

- Twenty versions of one model asked for in turn: each job is answered by its own version (the
  model predicts its version number) while the worker's ``/metrics`` never shows more than
  ``PREDICT_MAX_LOADED`` versions loaded.
- A flood of jobs naming unknown models lists the repository at most once per
  ``PREDICT_MISS_CACHE_S`` (the worker's listing counter), not once per job.
- A model whose file arrives in an existing version folder (no folder's time shows it) is found
  once the window has passed.

The session worker runs with the default settings (worker/settings.py).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_for
from tests.support.predictmodels import build_versions
from tests.support.stacks import KEYS, Service
from worker.settings import PREDICT_MAX_LOADED, PREDICT_MISS_CACHE_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
VERSIONS = 20
UNKNOWN_JOBS = 30


@pytest.fixture(scope="module")
def staging() -> Iterator[Path]:
    """``VERSIONS`` versions of a model, built once in a child process (TensorFlow stays out of
    the test process); tests publish them by moving folders into the worker's repository."""
    with tempfile.TemporaryDirectory(prefix="omni-predict-staging-") as path:
        build_versions(Path(path), VERSIONS)
        yield Path(path)


def run_jobs(ingress: Service, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit every input at once; the finished jobs, in order."""

    def submit(task_input: dict[str, Any]) -> str:
        body = {"task": "predict", "input": task_input}
        response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    with ThreadPoolExecutor(8) as pool:
        job_ids = list(pool.map(submit, inputs))

    def finished() -> list[dict[str, Any]] | None:
        jobs = [
            requests.get(f"{ingress.url}/v1/jobs/{job_id}", headers=A, timeout=TIMEOUT).json()
            for job_id in job_ids
        ]
        return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None

    return wait_for(finished, 120, f"{len(job_ids)} predict jobs to finish", interval_s=0.05)


def metric(worker: Service, name: str) -> float:
    text = requests.get(f"{worker.url}/metrics", timeout=TIMEOUT).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not in the worker's /metrics")


def test_twenty_versions_in_turn_keep_at_most_the_configured_number_loaded(
    ingress: Service, worker: Service, model_repository: Path, staging: Path
) -> None:
    shutil.copytree(staging, model_repository / "lru")
    evicted_before = metric(worker, "omni_worker_predict_evictions_total")
    loaded = []
    for version in range(1, VERSIONS + 1):
        (job,) = run_jobs(ingress, [{"model": "lru", "version": version, "instances": [[1.0]]}])
        assert job["status"] == "succeeded", job
        assert job["result"]["version"] == version
        assert job["result"]["predictions"] == [[float(version)]]  # its own version's answer
        loaded.append(metric(worker, "omni_worker_predict_loaded_versions"))
    assert max(loaded) == PREDICT_MAX_LOADED, loaded
    evicted = metric(worker, "omni_worker_predict_evictions_total") - evicted_before
    assert evicted >= VERSIONS - PREDICT_MAX_LOADED


def test_unknown_models_list_the_repository_once_per_window(
    ingress: Service, worker: Service
) -> None:
    listed_before = metric(worker, "omni_worker_predict_repository_listings_total")
    started = time.monotonic()
    inputs = [{"model": f"nobody-{i}", "instances": [[1.0]]} for i in range(UNKNOWN_JOBS)]
    jobs = run_jobs(ingress, inputs)
    elapsed_s = time.monotonic() - started
    assert all(j["status"] == "failed" and j["error"]["code"] == "unknown_model" for j in jobs)
    listings = metric(worker, "omni_worker_predict_repository_listings_total") - listed_before
    # One listing per window at most (the first miss may list), however many jobs missed.
    assert listings <= 1 + elapsed_s // PREDICT_MISS_CACHE_S, (listings, elapsed_s)
    assert listings < UNKNOWN_JOBS / 3


def test_a_model_published_later_is_found_after_the_window(
    ingress: Service, worker: Service, model_repository: Path, staging: Path
) -> None:
    folder = model_repository / "late" / "1"
    folder.mkdir(parents=True)
    (early,) = run_jobs(ingress, [{"model": "late", "instances": [[1.0]]}])
    assert early["status"] == "failed" and early["error"]["code"] == "unknown_model"
    # The model file arrives in the folder that was already there: no folder's time moves for
    # the repository or the model, so only the end of the window makes it visible.
    shutil.copy(staging / "7" / "model.keras", folder / "model.keras.part")
    (folder / "model.keras.part").rename(folder / "model.keras")
    time.sleep(PREDICT_MISS_CACHE_S)
    (late,) = run_jobs(ingress, [{"model": "late", "instances": [[1.0]]}])
    assert late["status"] == "succeeded", late
    assert (late["result"]["version"], late["result"]["predictions"]) == (1, [[7.0]])
