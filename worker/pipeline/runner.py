"""Stage 2, on a lane's run thread: one model call over a claimed micro-batch.

Each job's stored input is validated first (``invalid_input`` fails it alone; a job whose document
names another task than its lane is never run on the wrong model), then the rest run as one call.
A call that fails as a whole (one bad input can fail a model call for everyone) runs again one job
at a time, so one job's error never becomes its neighbours'. A job cancelled while its batch runs
stops the batch only if every job in it stopped (``worker.attempts.BatchStop``); otherwise its
result is simply not written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from common.jsonlog import log_context
from schemas.tasks import get_task
from worker import metrics
from worker.attempts import BatchStop, Watcher, calling
from worker.errors import PermanentError, Stopped, TransientError
from worker.modellock import ModelLock
from worker.pipeline.delivery import InFlight, Outcome
from worker.pipeline.hold import Hold
from worker.pipeline.settler import Settler
from worker.tasks import Adapter

logger = logging.getLogger(__name__)


@dataclass
class LaneStats:
    """Per task, what the model calls were like (``/readyz`` shows them)."""

    batches: int = 0
    jobs: int = 0
    mean_batch: float = 0.0
    """``jobs / batches``: under a backlog it should sit near the lane's ``max_size``."""
    largest_batch: int = 0
    inference_s: float = 0.0


class Runner:
    """Runs claimed job micro-batches, one model call each, and hands the outcomes to the
    settler."""

    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        *,
        model_lock: ModelLock,
        watcher: Watcher,
        settler: Settler,
        hold: Hold,
        timeout_for: Callable[[str], float],
        batch_class: bool = False,
        stats: dict[str, LaneStats] | None = None,
    ):
        self._adapters = adapters
        # Batch-priority jobs wait for the model as a chunk's sub-batch does (after single jobs).
        self._hold_model = model_lock.chunk if batch_class else model_lock.job
        self._watcher = watcher
        self._settler = settler
        self._hold = hold
        self._timeout_for = timeout_for
        self.stats = stats if stats is not None else {task: LaneStats() for task in adapters}

    def run_batch(self, task: str, batch: list[InFlight]) -> None:
        """Run ``batch`` and hand it to the settler; whatever fails, its messages get settled."""
        try:
            self._run_claimed(task, batch)
        except Exception:
            logger.exception("running a %s batch failed", task)
            self._settler.abort(batch, f"running a {task} batch failed")

    def _run_claimed(self, task: str, batch: list[InFlight]) -> None:
        with self._hold_model():
            if self._hold.draining.is_set():
                # Claimed with the batch that was next, never started: give the jobs back now.
                self._settler.give_back(batch)
                return
            # The time limit counts from here, not from the claim: waiting for the model is not
            # running (and the watcher keeps renewing leases until the limit).
            deadline = time.monotonic() + self._timeout_for(task)
            for item in batch:
                item.stop.deadline = deadline
            started, started_ns = time.perf_counter(), time.time_ns()
            outcomes = self.run(task, batch)
            inference_ms = (time.perf_counter() - started) * 1000
            window = (started_ns, time.time_ns())
            for item in batch:
                item.trace.inference_ns = window
        for item in batch:
            self._watcher.remove(item.claim)
        self._record(task, len(batch), inference_ms)
        self._settler.settle(batch, outcomes, inference_ms)

    def _record(self, task: str, size: int, inference_ms: float) -> None:
        stats = self.stats[task]  # only this lane's run thread writes it
        stats.batches += 1
        stats.jobs += size
        stats.mean_batch = round(stats.jobs / stats.batches, 2)
        stats.largest_batch = max(stats.largest_batch, size)
        stats.inference_s += inference_ms / 1000
        metrics.batch_ran(task, size, inference_ms / 1000)

    def run(self, task: str, batch: list[InFlight]) -> list[Outcome]:
        """One outcome per job: the valid inputs run together as one call."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        ready: list[tuple[int, BaseModel]] = []
        for i, item in enumerate(batch):
            if item.claim.task != task:
                # The message named another task than the job's own document: never run it
                # on the wrong model.
                text = f"job is {item.claim.task!r} but was routed to {task!r}"
                outcomes[i] = PermanentError("unsupported_task", text)
                continue
            spec = get_task(item.claim.task)
            try:
                task_input = spec.input_model.model_validate(
                    spec.input_from_store(item.claim.input)
                )
            except ValidationError as exc:
                outcomes[i] = PermanentError("invalid_input", str(exc))
                continue
            ready.append((i, task_input))
        if ready:
            adapter = self._adapters[task]  # lanes exist only for the tasks with an adapter
            results = self._call(adapter, task, [(batch[i], x) for i, x in ready])
            for (i, _), outcome in zip(ready, results, strict=True):
                outcomes[i] = outcome
        return [_stopped_since(item, o) for item, o in zip(batch, outcomes, strict=True)]

    def _call(
        self, adapter: Adapter, task: str, items: list[tuple[InFlight, BaseModel]]
    ) -> list[Outcome]:
        """Run ``items`` as one model call; if it fails as a whole, run each alone."""
        spec = get_task(task)
        stop = BatchStop([item.stop for item, _ in items])
        try:
            with calling([item.claim.metadata for item, _ in items]):
                results = adapter.run([task_input for _, task_input in items], stop)
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} inputs")
            return [spec.result_to_store(result) for result in results]
        except Stopped as exc:
            return [Stopped(item.stop.reason or exc.reason) for item, _ in items]
        except (TransientError, PermanentError) as exc:
            if len(items) == 1:
                return [exc]
        except Exception as exc:  # noqa: BLE001 - a bug in a task must not loop forever
            if len(items) == 1:
                with log_context(job_id=items[0][0].claim.job_id, task=task):
                    logger.exception("task raised")
                return [PermanentError("internal", f"{type(exc).__name__} in task {task}")]
        logger.warning("a batch of %d %s jobs failed; running each alone", len(items), task)
        return [self._call(adapter, task, [item])[0] for item in items]


def _stopped_since(item: InFlight, outcome: Outcome | None) -> Outcome:
    """A cancel or lost lease seen during the call wins over the result."""
    assert outcome is not None
    reason = item.stop.reason
    if reason is not None and isinstance(outcome, dict):
        return Stopped(reason)
    return outcome
