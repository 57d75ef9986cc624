"""The task catalogue: each task's name, description, input and output schema, stored form.

Adding a task means adding one module here (its pydantic models) and one adapter under
``worker/tasks/``; ``GET /v1/tasks`` and the ingress's validation follow from ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas.tasks import embed, entities, forecast, predict, similar


class UnknownTaskError(KeyError):
    """No task of that name is in the catalogue."""


def _identity(value: dict[str, Any]) -> dict[str, Any]:
    return value


@dataclass(frozen=True)
class TaskSpec:
    """What both sides know about a task; the worker's adapter adds the model."""

    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    # One attempt's time limit, seconds: past it the job fails with code ``timeout``. Sized for
    # the largest valid input on a CPU, with room to spare.
    timeout_s: float = 60.0
    # Result as the worker produced it (API shape) -> what Firestore can store, and back.
    result_to_store: Callable[[dict[str, Any]], dict[str, Any]] = field(default=_identity)
    result_from_store: Callable[[dict[str, Any]], dict[str, Any]] = field(default=_identity)
    # The same for the validated input (Firestore stores no arrays of arrays).
    input_to_store: Callable[[dict[str, Any]], dict[str, Any]] = field(default=_identity)
    input_from_store: Callable[[dict[str, Any]], dict[str, Any]] = field(default=_identity)
    # The identity of the model behind a deterministic task, for the result cache
    # (schemas/resultcache.py); None: never cached; resultcache.PER_VERSION: the version a
    # request is served (predict).
    model: str | None = None

    def describe(self) -> dict[str, Any]:
        """The entry ``GET /v1/tasks`` lists."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="embed",
            description=embed.DESCRIPTION,
            input_model=embed.EmbedInput,
            output_model=embed.EmbedResult,
            result_to_store=embed.result_to_store,
            result_from_store=embed.result_from_store,
            model=embed.MODEL_IDENTITY,
        ),
        TaskSpec(
            name="similar",
            description=similar.DESCRIPTION,
            input_model=similar.SimilarInput,
            output_model=similar.SimilarResult,
            model=embed.MODEL_IDENTITY,  # the same MiniLM
        ),
        TaskSpec(
            name="entities",
            description=entities.DESCRIPTION,
            input_model=entities.EntitiesInput,
            output_model=entities.EntitiesResult,
            model=entities.MODEL_IDENTITY,
        ),
        TaskSpec(
            name="forecast",
            description=forecast.DESCRIPTION,
            input_model=forecast.ForecastInput,
            output_model=forecast.ForecastResult,
            # Fitting Prophet on 10,000 points takes seconds; leave room.
            timeout_s=300.0,
        ),
        TaskSpec(
            name="predict",
            description=predict.DESCRIPTION,
            input_model=predict.PredictInput,
            output_model=predict.PredictResult,
            result_to_store=predict.result_to_store,
            result_from_store=predict.result_from_store,
            input_to_store=predict.input_to_store,
            input_from_store=predict.input_from_store,
            model="@version",  # schemas.resultcache.PER_VERSION
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name) from None
