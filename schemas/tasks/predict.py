"""``predict``: a TensorFlow/Keras model from ``MODEL_REPOSITORY`` (TensorFlow Serving's layout).

Instances and predictions are usually nested arrays, which Firestore cannot store: both are kept
as compact JSON text in the job document and turned back into arrays when read.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DESCRIPTION = (
    "Predictions from a TensorFlow/Keras model in MODEL_REPOSITORY (<name>/<version>/, a "
    "SavedModel or model.keras); the highest version unless one is asked for."
)

MAX_INSTANCES = 1_000
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class PredictInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME_PATTERN)
    # Bounded: Firestore stores 64-bit integers, and no repository has 2**31 versions.
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    instances: list[Any] = Field(min_length=1, max_length=MAX_INSTANCES)


class PredictResult(BaseModel):
    model: str
    version: int
    predictions: list[Any]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def input_to_store(task_input: dict[str, Any]) -> dict[str, Any]:
    stored = {k: v for k, v in task_input.items() if k != "instances"}
    return {**stored, "instances_json": _compact(task_input["instances"])}


def input_from_store(stored: dict[str, Any]) -> dict[str, Any]:
    if "instances_json" not in stored:
        return stored
    rest = {k: v for k, v in stored.items() if k != "instances_json"}
    return {**rest, "instances": json.loads(stored["instances_json"])}


def result_to_store(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": result["model"],
        "version": result["version"],
        "predictions_json": _compact(result["predictions"]),
    }


def result_from_store(stored: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": stored["model"],
        "version": stored["version"],
        "predictions": json.loads(stored["predictions_json"]),
    }
