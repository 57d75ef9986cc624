"""A batch's chunk, run as one unit: one claim, the model over its items, one commit, one ack.

Each served task has a chunk lane beside its job lane (``worker.pipeline.lanes``, one chunk at a
time: the next chunk is claimed while one runs). A chunk delivery goes:

    claim ── pending / missing / ended ─────────────────────────────────────────▶ ack
          ── queued, its batch cancelled ──▶ ended cancelled, whole, never run ──▶ ack
          ── held by a live attempt ──▶ back into the lane once its lease may have lapsed
    run   ── its items in sub-batches of the task's batch size, each under the model lock
             (a job's micro-batch waiting for it runs first, worker.modellock); between them:
             cancel ──▶ stop; unstarted items end cancelled ──▶ commit ─────────────▶ ack
             lost lease ──▶ stop; nothing written (the other attempt owns it) ─────▶ ack
             shutdown past the grace ──▶ release (items queued again) ──────────────▶ nack
          ── its end ──▶ commit: every item's letter, result, error and count ──▶ ack, and
             the batch's next held chunk released and published (worker.chunkpacer)
          ── a transient failure ──▶ release ──▶ redelivered after a backoff (dead letters)

Items are positions, not units of work: a bad input fails alone (``invalid_input``); a sub-batch
whose model call fails runs again item by item, so a poison item fails alone (its own error, or
``internal``); a sub-batch past the task's time limit fails its items ``timeout``; a result that
does not fit the chunk's document fails ``result_too_large`` (``worker.chunkstore.fit``). Only a
failure of the chunk itself (Firestore, a transient model error) runs it again, whole.

Per item the worker does one ``model_validate_json`` of the stored line, the model's share, the
result as bytes (``run_packed``); claims, commits, logs and metrics are per chunk.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.chunks import CODE_OF, ChunkMessage, pack_result
from schemas.jobs import JobStatus
from schemas.tasks import get_task
from worker import metrics
from worker.attempts import StopReason, StopToken, Watcher
from worker.chunkcache import ChunkCache, fan_out, unique
from worker.chunkpacer import ChunkPacer
from worker.chunkstore import DEADLINE_SKIP, ChunkClaim, ChunkOutcome, ChunkStoreLike, ended
from worker.errors import PermanentError, Stopped, StoreUnavailable, TransientError
from worker.modellock import ModelLock
from worker.pipeline.delivery import Delivery
from worker.pipeline.lanes import Lane
from worker.rates import DrainRates
from worker.store import Busy, Skip
from worker.tasks import Adapter

logger = logging.getLogger(__name__)
T = TypeVar("T")

SUCCEEDED, FAILED, CANCELLED = (ord(CODE_OF[s]) for s in ("succeeded", "failed", "cancelled"))
RUNNING = ord("r")

ItemOutcome = bytes | PermanentError | TransientError | Stopped
ChunkLane = Lane[ChunkMessage, "ChunkInFlight"]


@dataclass(frozen=True)
class ChunkInFlight:
    """A claimed chunk on its way through its lane."""

    claim: ChunkClaim
    delivery: Delivery[ChunkMessage]
    stop: StopToken


@dataclass
class Ran:
    """What running a chunk came to: its outcome, or why it stopped with nothing to commit
    (``lost``, ``shutdown``, ``transient`` with its ``error``)."""

    outcome: ChunkOutcome
    stopped: str | None = None
    error: BaseException | None = None
    sub_batches: int = 0
    inference_s: float = 0.0
    model_cpu_s: float = 0.0
    """CPU time of the run thread inside the model calls (all of the model's with one torch
    thread): what ``bench/worker_cpu.py`` subtracts to find the worker's own cost per item."""


class ChunkRunner:
    """The chunk lanes' claim, run and settle stages; the processor owns the parts it shares
    with jobs (the model lock, the watcher, the settle threads, Firestore's outage policy)."""

    def __init__(
        self,
        store: ChunkStoreLike,
        adapters: Mapping[str, Adapter],
        *,
        model_lock: ModelLock,
        watcher: Watcher,
        settle_pool: ThreadPoolExecutor,
        hold: Callable[[Callable[[], Any]], Any],
        retry_when_free: Callable[[ChunkLane, Delivery[ChunkMessage], Busy], None],
        timeout_for: Callable[[str], float],
        batch_size: Callable[[str], int],
        backoff_s: Callable[[int], int],
        draining: threading.Event,
        max_attempts: int,
        worker_id: str = "",
        pacer: ChunkPacer | None = None,
        rates: DrainRates | None = None,
        cache: ChunkCache | None = None,
    ):
        self._cache = cache
        self._store = store
        self._pacer = pacer
        self._rates = rates or DrainRates()
        self._adapters = adapters
        self._lock = model_lock
        self._watcher = watcher
        self._pool = settle_pool
        self._hold = hold
        self._retry_when_free = retry_when_free
        self._timeout_for = timeout_for
        self._batch_size = batch_size
        self._backoff_s = backoff_s
        self._draining = draining
        self._max_attempts = max_attempts
        self._worker_id = worker_id

    # -- stage 1 (the lane's gather thread): claim ------------------------------------------------
    def claim_batch(
        self, lane: ChunkLane, deliveries: list[Delivery[ChunkMessage]]
    ) -> list[ChunkInFlight]:
        claimed = []
        for delivery in deliveries:  # one: a chunk lane gathers one delivery at a time
            try:
                item = self._claim(lane, delivery)
            except Exception:
                logger.exception("claiming a chunk failed", extra=_ids(delivery.job))
                delivery.nack()
                continue
            if item is not None:
                claimed.append(item)
        return claimed

    def _claim(self, lane: ChunkLane, delivery: Delivery[ChunkMessage]) -> ChunkInFlight | None:
        chunk = delivery.job
        if self._draining.is_set():
            delivery.nack()
            return None
        try:
            decision = self._hold(
                lambda: self._store.claim(
                    chunk.batch_id, chunk.chunk_id, chunk.tenant, self._worker_id
                )
            )
        except StoreUnavailable as exc:
            logger.warning("Firestore unavailable at shutdown; chunk nacked: %s", exc)
            delivery.nack()
            return None
        if isinstance(decision, Skip):
            extra = {**_ids(chunk), "skip": decision.reason}
            logger.info("chunk delivery skipped: %s", decision.reason, extra=extra)
            metrics.skipped(chunk.task, "chunk")
            if decision.reason == DEADLINE_SKIP and self._pacer is not None:  # ended: as any end
                path = self._store.batch_path(chunk.batch_id)
                self._pacer.chunk_ended(path, chunk.task, chunk.tenant)
            delivery.ack()
            return None
        if isinstance(decision, Busy):
            self._retry_when_free(lane, delivery, decision)
            return None
        assert isinstance(decision, ChunkClaim)
        stop = StopToken(self._timeout_for(decision.task))
        self._watcher.add(decision, stop)
        metrics.claimed(delivery, chunk.task, "chunk")
        return ChunkInFlight(decision, delivery, stop)

    # -- stage 2 (the lane's run thread): the model over the chunk's items ------------------------
    def run_batch(self, task: str, batch: list[ChunkInFlight]) -> None:
        for item in batch:
            try:
                if self._draining.is_set():
                    # Claimed while the previous chunk ran, never started: give it back now.
                    self._submit(item, functools.partial(self._give_back, item))
                    continue
                ran = self.run(task, item.claim, item.stop)
                self._watcher.remove(item.claim)
                self._submit(item, functools.partial(self._settle, item, ran))
            except Exception:
                logger.exception("running a %s chunk failed; nacked", task, extra=item.claim.label)
                self._watcher.remove(item.claim)
                item.delivery.nack()

    def run(self, task: str, claim: ChunkClaim, stop: StopToken) -> Ran:
        """Every item of ``claim.todo`` through the model, a sub-batch at a time, checking
        ``stop`` between sub-batches."""
        letters = bytearray(claim.items, "ascii")
        outcome = ChunkOutcome(JobStatus.SUCCEEDED, letters, [b""] * len(letters))
        ran = Ran(outcome)
        adapter = self._adapters.get(task)
        if claim.task != task or adapter is None:
            # The message named another task than the chunk's own document: never run it on
            # the wrong model.
            text = f"chunk is {claim.task!r} but was routed to {task!r}"
            for position in claim.todo:
                _fail(outcome, position, "unsupported_task", text)
            return ran
        validate = get_task(task).input_model.model_validate_json
        size = max(1, self._batch_size(task))
        limit_s = self._timeout_for(task)
        inputs = claim.inputs
        if self._cache and (hit := self._cache.lookup(claim)) is not None:
            for position, stored in zip(claim.todo, hit, strict=True):
                letters[position], outcome.results[position] = SUCCEEDED, stored
            return ran  # every item computed before: no model call
        todo, copies = unique(inputs, claim.todo)  # identical items are computed once
        for start in range(0, len(todo), size):
            ready: list[tuple[int, BaseModel]] = []
            for position in todo[start : start + size]:
                try:
                    ready.append((position, validate(inputs[position])))
                except (ValidationError, IndexError) as exc:
                    message = str(exc) if isinstance(exc, ValidationError) else "no input stored"
                    _fail(outcome, position, "invalid_input", message)
            with self._lock.chunk():
                # The time limit is per sub-batch, counted from when it holds the model.
                stop.deadline = time.monotonic() + limit_s
                if (reason := stop.reason) is not None:
                    ran.stopped = reason
                    break
                if not ready:
                    continue
                started, cpu = time.perf_counter(), time.thread_time()
                results = self._call(adapter, task, ready, stop)
                seconds = time.perf_counter() - started
                ran.model_cpu_s += time.thread_time() - cpu
            ran.sub_batches += 1
            ran.inference_s += seconds
            metrics.batch_ran(task, len(ready), seconds)
            for (position, _), result in zip(ready, results, strict=True):
                if isinstance(result, bytes):
                    letters[position] = SUCCEEDED
                    outcome.results[position] = result
                elif isinstance(result, PermanentError):
                    _fail(outcome, position, result.code, result.message)
                elif isinstance(result, Stopped) and result.reason == StopReason.TIMEOUT:
                    _fail(outcome, position, "timeout", f"ran longer than its {limit_s:g}s limit")
                elif isinstance(result, Stopped):
                    ran.stopped = result.reason
                else:
                    ran.error = result
            if ran.error is not None:
                ran.stopped = "transient"
            if ran.stopped is not None:
                break
        fan_out(copies, letters, outcome.results, outcome.errors)
        if ran.stopped == StopReason.CANCELLED:
            ran.stopped = None
            for position in claim.todo:
                if letters[position] == RUNNING:
                    letters[position] = CANCELLED
                    outcome.status = JobStatus.CANCELLED
        return ran

    def _call(
        self, adapter: Adapter, task: str, items: list[tuple[int, BaseModel]], stop: StopToken
    ) -> list[ItemOutcome]:
        """One model call over ``items``, each result packed; if it fails as a whole, each
        item alone (so one poison item fails alone)."""
        try:
            results = _run_packed(adapter, task, [task_input for _, task_input in items], stop)
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} inputs")
            return list(results)
        except Stopped as exc:
            return [Stopped(stop.reason or exc.reason)] * len(items)
        except (TransientError, PermanentError) as exc:
            if len(items) == 1:
                return [exc]
        except Exception as exc:  # noqa: BLE001 - a bug in a task must not fail its neighbours
            if len(items) == 1:
                logger.exception("task raised on a chunk item", extra={"task": task})
                return [PermanentError("internal", f"{type(exc).__name__} in task {task}")]
        logger.warning("a sub-batch of %d %s items failed; running each alone", len(items), task)
        return [self._call(adapter, task, [item], stop)[0] for item in items]

    # -- stage 3 (settle threads): commit, then settle the message --------------------------------
    def _submit(self, item: ChunkInFlight, function: Callable[[], None]) -> None:
        """Hand ``function`` to the settle threads; whatever it raises nacks the chunk's message
        instead of vanishing in an unread future."""

        def guarded() -> None:
            try:
                function()
            except Exception:
                logger.exception("settling a chunk failed; nacked", extra=item.claim.label)
                item.delivery.nack()

        try:
            self._pool.submit(guarded)
        except RuntimeError:  # the pool is shut down: the worker is closing
            item.delivery.nack()

    def _settle(self, item: ChunkInFlight, ran: Ran) -> None:
        claim, delivery = item.claim, item.delivery
        extra = {**claim.label, "task": claim.task, "attempt": claim.attempt}
        if ran.stopped == StopReason.LOST:
            self._store.forget(claim)
            metrics.outcome(delivery, StopReason.LOST)
            extra["stop"] = StopReason.LOST
            logger.info("chunk stopped: another attempt owns it", extra=extra)
            delivery.ack()
        elif ran.stopped == StopReason.SHUTDOWN:
            self._release(item, None, started=True)
            logger.info("stopped for shutdown; chunk released and message nacked", extra=extra)
        elif ran.stopped is not None:
            message = delivery.message
            if message.delivery_attempt is None and claim.attempt >= self._max_attempts:
                # No dead-letter policy on this subscription (no delivery count): enforce the
                # maximum here, so the chunk still ends instead of looping.
                text = f"{claim.attempt} attempts failed; last error: {ran.error}"
                for position in claim.todo:
                    if ran.outcome.letters[position] == RUNNING:
                        _fail(ran.outcome, position, "attempts_exhausted", text)
                ran.outcome.status = JobStatus.FAILED
                self._commit(item, ran)
                return
            error = {"code": "transient", "message": str(ran.error)}
            metrics.outcome(delivery, "retried")
            try:
                self._hold(lambda: self._store.release(claim, error))
            except StoreUnavailable:
                delivery.nack()
                return
            delay_s = self._backoff_s(message.delivery_attempt or claim.attempt)
            logger.warning(
                "transient failure; chunk released, redelivery in %ds: %s",
                delay_s,
                ran.error,
                extra={**extra, "retry_in_s": delay_s},
            )
            delivery.retry_in(delay_s)
        else:
            self._commit(item, ran)

    def _commit(self, item: ChunkInFlight, ran: Ran) -> None:
        claim, delivery, outcome = item.claim, item.delivery, ran.outcome
        try:
            written = self._hold(lambda: self._store.commit(claim, outcome))
        except StoreUnavailable as exc:
            logger.warning("Firestore unavailable at shutdown; chunk nacked: %s", exc)
            delivery.nack()
            return
        counts = ended(claim, outcome)
        status = outcome.status.value if written else StopReason.LOST
        metrics.outcome(delivery, status)
        if written:
            self._rates.record(claim.task, "chunk_items", len(claim.todo), ran.inference_s)
            if self._cache and ran.sub_batches:  # computed here, not read from the cache
                self._cache.store(claim, outcome)
            if self._pacer is not None:  # the batch's next held chunk
                self._pacer.chunk_ended(claim.batch_path, claim.task, claim.tenant)
            metrics.chunk_items(claim.task, **counts)
            logger.info(
                "chunk %s",
                status,
                extra={
                    **claim.label,
                    "task": claim.task,
                    "tenant": claim.tenant,
                    "attempt": claim.attempt,
                    "items": len(claim.todo),
                    **counts,
                    "sub_batches": ran.sub_batches,
                    "inference_ms": round(ran.inference_s * 1000, 1),
                    "model_cpu_ms": round(ran.model_cpu_s * 1000, 1),
                },
            )
        # Written, or another writer (a cancel, a newer attempt) settled it: either way done.
        delivery.ack()

    def _release(self, item: ChunkInFlight, error: dict[str, str] | None, started: bool) -> None:
        metrics.outcome(item.delivery, "released")
        with contextlib.suppress(StoreUnavailable):  # else its lease lapses and the next
            self._hold(lambda: self._store.release(item.claim, error, started))  # claim takes over
        item.delivery.nack()

    def _give_back(self, item: ChunkInFlight) -> None:
        self._watcher.remove(item.claim)
        self._release(item, None, started=False)
        logger.info("draining: claimed chunk not started, given back", extra=item.claim.label)


def _run_packed(
    adapter: Adapter, task: str, inputs: list[BaseModel], stop: StopToken
) -> Sequence[bytes]:
    """The adapter's results in their stored form: straight from the model where the adapter
    packs them itself (``embed``), else packed from the API shape."""
    packed = getattr(adapter, "run_packed", None)
    if packed is not None:
        results: Sequence[bytes] = packed(inputs, stop)
        return results
    return [pack_result(task, result) for result in adapter.run(inputs, stop)]


def _fail(outcome: ChunkOutcome, position: int, code: str, message: str) -> None:
    outcome.letters[position] = FAILED
    outcome.results[position] = b""
    outcome.errors[str(position)] = {"code": code, "message": message}


def _ids(chunk: ChunkMessage) -> dict[str, str]:
    return {"batch_id": chunk.batch_id, "chunk_id": chunk.chunk_id, "task": chunk.task}
