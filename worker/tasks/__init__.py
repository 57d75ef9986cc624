"""Model adapters: one module per framework, heavy imports only inside ``load()``.

An adapter turns a list of validated inputs into a list of results (API shape), in one call, so
micro-batching can hand it many jobs at once. ``ADAPTERS`` maps task names to their factories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.attempts import StopToken


class Adapter(Protocol):
    name: str

    def load(self) -> None:
        """Load the model (may take seconds); called once before any ``run``."""

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        """One result per input, in order. Raises ``PermanentError`` for bad input.

        Calls ``stop.check()`` between chunks of work (its safe points), so a cancel, a lost lease
        or the task's time limit ends the attempt within about one chunk."""


def _embed(settings: WorkerSettings) -> Adapter:
    from worker.tasks.embed import EmbedAdapter

    return EmbedAdapter(device=settings.device, threads=settings.torch_threads)


def _similar(settings: WorkerSettings) -> Adapter:
    from worker.tasks.similar import SimilarAdapter

    return SimilarAdapter(device=settings.device, threads=settings.torch_threads)


def _entities(settings: WorkerSettings) -> Adapter:
    from worker.tasks.entities import EntitiesAdapter

    return EntitiesAdapter()


def _forecast(settings: WorkerSettings) -> Adapter:
    from worker.tasks.forecast import ForecastAdapter

    return ForecastAdapter()


def _predict(settings: WorkerSettings) -> Adapter:
    from worker.tasks.predict import PredictAdapter

    return PredictAdapter(
        settings.model_repository,
        threads=settings.torch_threads,
        device=settings.device,
        max_loaded=settings.predict_max_loaded,
        miss_cache_s=settings.predict_miss_cache_s,
    )


ADAPTERS: dict[str, Callable[[WorkerSettings], Adapter]] = {
    "embed": _embed,
    "similar": _similar,
    "entities": _entities,
    "forecast": _forecast,
    "predict": _predict,
}
