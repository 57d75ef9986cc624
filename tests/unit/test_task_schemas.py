"""The new tasks' input rules (a 422 at submit) and their stored forms."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.tasks import TASKS, get_task

SERIES = [{"ds": "2026-01-01", "y": 1}, {"ds": "2026-01-02", "y": 2.5}]


@pytest.mark.parametrize(
    ("task", "task_input"),
    [
        ("similar", {"query": "q", "documents": ["a"]}),
        ("similar", {"query": "q", "documents": ["a", "b"], "top_k": 100}),
        ("entities", {"text": "Paris"}),
        ("forecast", {"series": SERIES, "horizon": 1, "frequency": "M"}),
        ("predict", {"model": "m-1.v2", "instances": [[1, 2], [3, 4]]}),
        ("predict", {"model": "m", "version": 3, "instances": ["text"]}),
    ],
)
def test_valid_inputs(task: str, task_input: dict[str, Any]) -> None:
    get_task(task).input_model.model_validate(task_input)


@pytest.mark.parametrize(
    ("task", "task_input"),
    [
        ("similar", {"query": "", "documents": ["a"]}),
        ("similar", {"query": "q", "documents": []}),
        ("similar", {"query": "q", "documents": ["a"], "top_k": 0}),
        ("similar", {"query": "q", "documents": ["a" * 2000] * 300}),  # over 512 KiB
        ("entities", {"text": ""}),
        ("entities", {"text": "x", "lang": "en"}),
        ("forecast", {"series": SERIES[:1], "horizon": 1, "frequency": "D"}),
        (
            "forecast",
            {"series": [SERIES[0], {"ds": "2026-01-02", "y": "2"}], "horizon": 1, "frequency": "D"},
        ),  # fmt: skip
        (
            "forecast",
            {
                "series": [SERIES[0], {"ds": "2026-01-02", "y": True}],
                "horizon": 1,
                "frequency": "D",
            },
        ),  # fmt: skip
        ("forecast", {"series": [SERIES[0], SERIES[0]], "horizon": 1, "frequency": "D"}),
        ("forecast", {"series": SERIES, "horizon": 0, "frequency": "D"}),
        ("forecast", {"series": SERIES, "horizon": 1, "frequency": "Y"}),
        ("predict", {"model": "../etc", "instances": [1]}),
        ("predict", {"model": "m", "instances": []}),
        ("predict", {"model": "m", "version": 0, "instances": [1]}),
    ],
)
def test_invalid_inputs_are_refused(task: str, task_input: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        get_task(task).input_model.model_validate(task_input)


def test_predict_keeps_nested_arrays_as_json_text_in_firestore() -> None:
    spec = get_task("predict")
    task_input = {"model": "m", "version": None, "instances": [[1.5, 2], [3, 4]]}
    stored = spec.input_to_store(task_input)
    assert "instances" not in stored and isinstance(stored["instances_json"], str)
    assert spec.input_from_store(stored) == task_input
    result = {"model": "m", "version": 2, "predictions": [[0.25, 0.75]]}
    assert spec.result_from_store(spec.result_to_store(result)) == result


def test_every_task_publishes_its_schemas() -> None:
    assert set(TASKS) == {"embed", "similar", "entities", "forecast", "predict"}
    for spec in TASKS.values():
        described = spec.describe()
        assert described["input_schema"]["type"] == "object"
        assert described["output_schema"]["type"] == "object"
