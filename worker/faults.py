"""Fault injection for chaos tests, off unless the worker runs with ``WORKER_FAULT_INJECTION=1``.

With it on, the worker wraps each model adapter (``with_faults``), and a job whose ``metadata``
holds ``omni-fault`` misbehaves on purpose, after its claim and before its model call, so the real
pipeline around it (leases, retries, dead letters, cancel, timeouts) can be tested with a real model
and real emulators:

- ``transient``: every attempt raises ``TransientError`` (a poison job that never succeeds).
- ``sleep=SECONDS``: the attempt works for SECONDS, with a safe point every 50 ms (a long job).

A faulted job runs alone, so a fault never fails, delays or outlives its neighbours: a model call
holding one among others raises ``RunAlone``, and the runner's failed-batch split runs each of them
alone (``worker.pipeline.runner``). A job's metadata reaches the wrapper through
``worker.attempts.CALL_METADATA``; a batch's chunk items have none, so they are never faulted.

Production manifests never set the variable; the worker logs a warning at start when it is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from worker.attempts import CALL_METADATA, StopToken
from worker.errors import PermanentError, TransientError
from worker.tasks import Adapter

FAULT_KEY = "omni-fault"


class RunAlone(Exception):  # noqa: N818 - a request to the runner, not an error of the task
    """A model call held a faulted job among others: run each alone (nothing ran)."""


def inject(metadata: Mapping[str, str], stop: StopToken) -> None:
    """Misbehave as ``metadata`` asks (nothing when it asks nothing)."""
    spec = metadata.get(FAULT_KEY)
    if spec is None:
        return
    if spec == "transient":
        raise TransientError("injected transient fault")
    if spec.startswith("sleep="):
        try:
            seconds = float(spec.removeprefix("sleep="))
        except ValueError:
            raise PermanentError("bad_fault", f"cannot parse {spec!r}") from None
        stop.sleep(seconds)
        return
    raise PermanentError("bad_fault", f"unknown fault {spec!r}")


class FaultyAdapter:
    """``adapter`` with faults injected before its ``run``; everything else (``load``,
    ``run_packed``, ``device``, …) is the adapter's own."""

    def __init__(self, adapter: Adapter):
        self._adapter = adapter
        self.name = adapter.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def load(self) -> None:
        self._adapter.load()

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        metadata = CALL_METADATA.get()
        faulted = [m for m in metadata if FAULT_KEY in m]
        if faulted and len(inputs) > 1:
            raise RunAlone(f"{len(faulted)} faulted job(s) in a call of {len(inputs)}")
        for job in faulted:
            inject(job, stop)
        return self._adapter.run(inputs, stop)


def with_faults(adapters: Mapping[str, Adapter]) -> dict[str, Adapter]:
    """Every adapter of ``adapters`` wrapped in a ``FaultyAdapter``."""
    return {task: FaultyAdapter(adapter) for task, adapter in adapters.items()}
