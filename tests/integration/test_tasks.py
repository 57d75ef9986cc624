"""Every task of the catalogue through the whole pipeline, on the real models.

ingress (validation) → Pub/Sub → worker (spaCy, MiniLM + FAISS, Prophet, TensorFlow/Keras) →
Firestore → ``GET /v1/jobs/ID``. Bad input for a task is a 422 at submit, never a failed job.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import python_env, wait_for
from tests.support.stacks import KEYS, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}


def submit(ingress: Service, task: str, task_input: dict[str, Any]) -> requests.Response:
    body = {"task": task, "input": task_input}
    return requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT)


def run(ingress: Service, task: str, task_input: dict[str, Any]) -> dict[str, Any]:
    response = submit(ingress, task, task_input)
    assert response.status_code == 202, response.text
    location = ingress.url + response.headers["Location"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = requests.get(location, headers=A, timeout=TIMEOUT).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 120, f"the {task} job to finish", interval_s=0.05)


def test_entities_finds_people_and_places_with_exact_offsets(
    ingress: Service, worker: Service
) -> None:
    text = "Angela Merkel met Emmanuel Macron in Paris on Tuesday."
    job = run(ingress, "entities", {"text": text})
    assert job["status"] == "succeeded", job
    found = {(e["text"], e["label"]) for e in job["result"]["entities"]}
    assert {("Angela Merkel", "PERSON"), ("Emmanuel Macron", "PERSON"), ("Paris", "GPE")} <= found
    for entity in job["result"]["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]


def test_similar_ranks_the_relevant_document_first(ingress: Service, worker: Service) -> None:
    documents = [
        "Quarterly earnings beat analysts' expectations.",
        "The kitten curled up and slept on the warm rug.",
        "Heavy rain is expected across the north tomorrow.",
    ]
    job = run(ingress, "similar", {"query": "a cat napping", "documents": documents, "top_k": 3})
    assert job["status"] == "succeeded", job
    matches = job["result"]["matches"]
    assert [m["index"] for m in matches][0] == 1
    assert matches[0]["text"] == documents[1]
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True) and len(matches) == 3


def test_forecast_follows_a_weekly_season_with_ordered_intervals(
    ingress: Service, worker: Service
) -> None:
    start = date(2026, 1, 5)  # a Monday
    # Eight weeks of a daily series: high on weekends, low on weekdays, plus a slow trend.
    series = [
        {"ds": (start + timedelta(days=i)).isoformat(), "y": 10 + 0.05 * i + 8 * (i % 7 >= 5)}
        for i in range(56)
    ]
    job = run(ingress, "forecast", {"series": series, "horizon": 14, "frequency": "D"})
    assert job["status"] == "succeeded", job
    rows = job["result"]["forecast"]
    assert len(rows) == 14
    for row in rows:
        assert row["yhat_lower"] <= row["yhat"] <= row["yhat_upper"]
    # The forecast starts the day after the last point and keeps the weekly shape.
    assert rows[0]["ds"].startswith((start + timedelta(days=56)).isoformat())
    weekend = [r["yhat"] for i, r in enumerate(rows) if (56 + i) % 7 >= 5]
    weekday = [r["yhat"] for i, r in enumerate(rows) if (56 + i) % 7 < 5]
    assert min(weekend) > max(weekday) + 4


@pytest.mark.parametrize(
    ("task_input", "loc"),
    [
        ({"series": [{"ds": "2026-01-01", "y": 1}], "horizon": 3, "frequency": "D"}, "series"),
        (
            {
                "series": [{"ds": "2026-01-01", "y": 1}, {"ds": "2026-01-02", "y": "high"}],
                "horizon": 3,
                "frequency": "D",
            },
            "series",
        ),
        (
            {
                "series": [{"ds": "2026-01-01", "y": 1}, {"ds": "2026-01-02", "y": 2}],
                "horizon": 3,
                "frequency": "Y",
            },
            "frequency",
        ),
    ],
    ids=["one-point", "non-numeric-y", "unknown-frequency"],
)
def test_bad_forecast_input_is_a_422_at_submit(
    ingress: Service, task_input: dict[str, Any], loc: str
) -> None:
    response = submit(ingress, "forecast", task_input)
    assert response.status_code == 422, response.text
    assert any(e["loc"][:3] == ["body", "input", loc] for e in response.json()["errors"])


BUILD_MODEL = """
import json, sys
import keras, numpy as np
repository = sys.argv[1]
keras.utils.set_random_seed(7)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.save(f"{repository}/tiny/1/model.keras")
model.export(f"{repository}/tiny/2", verbose=False)
instances = np.array([[1, 2, 3], [4, 5, 6]], dtype="float32")
print(json.dumps(model.predict(instances, verbose=0).tolist()))
"""


def build_model(repository: Path) -> list[list[float]]:
    """A small Keras model saved as version 1 (``model.keras``) and version 2 (a SavedModel, by
    ``model.export``); returns what it predicts for the test's instances. Built in a child
    process: TensorFlow stays out of the test process (and its deprecation warnings with it)."""
    (repository / "tiny" / "1").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", BUILD_MODEL, str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=python_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    expected: list[list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return expected


def test_predict_serves_keras_and_savedmodel_versions(
    ingress: Service, worker: Service, model_repository: Path
) -> None:
    expected = build_model(model_repository)
    instances = [[1, 2, 3], [4, 5, 6]]
    latest = run(ingress, "predict", {"model": "tiny", "instances": instances})
    assert latest["status"] == "succeeded", latest
    assert latest["result"]["version"] == 2  # the highest: the SavedModel
    first = run(ingress, "predict", {"model": "tiny", "version": 1, "instances": instances})
    assert first["result"]["version"] == 1  # model.keras
    for job in (latest, first):
        got = job["result"]["predictions"]
        assert all(
            math.isclose(g, e, rel_tol=1e-4, abs_tol=1e-5)
            for grow, erow in zip(got, expected, strict=True)
            for g, e in zip(grow, erow, strict=True)
        )
    # Nested arrays round-trip through Firestore (stored as compact JSON text).
    assert latest["input"]["instances"] == instances


def test_predict_with_an_unknown_model_fails_with_unknown_model(
    ingress: Service, worker: Service
) -> None:
    job = run(ingress, "predict", {"model": "no-such-model", "instances": [[1.0]]})
    assert job["status"] == "failed" and job["error"]["code"] == "unknown_model"
