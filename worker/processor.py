"""What happens to each delivery: parse, gather into a micro-batch, claim, run, write, then ack.

Each served task has a *lane* (``worker.lanes``): deliveries of that task are gathered into a
micro-batch, claimed in one Firestore transaction, run as one model call, and their outcomes written
in one transaction, before each message is settled. Each message is settled exactly once, after its
outcome is durable in Firestore:

    parse ── bad ─────────────────────────────────────────────────▶ ack (poison; logged)
    claim ── missing / terminal / twice in one batch ─────────────▶ ack (nothing to do)
          ── held by a live attempt ──▶ back into the lane once its lease may have lapsed
    run   ── ok ─────────────────────▶ write succeeded ─────────────▶ ack
          ── PermanentError / bug / unserved task ──▶ write failed ─▶ ack
          ── timeout ────────────────▶ write failed (timeout) ──────▶ ack
          ── cancelled / lost lease ─────────────────────────────────▶ ack (the other writer won)
          ── TransientError ─────────▶ release (queued, last_error) ─▶ redeliver after a backoff
                                                                     (10 s doubling to 600 s); the
                                                                     dead-letter topic after the
                                                                     maximum deliveries
          ── shutdown past the grace ▶ release ──────────────────────▶ nack
    claimed but not started when the worker drains ▶ release (attempt given back) ▶ nack

A message is a job's or a batch chunk's (``schemas.messages.parse``); a chunk goes to its task's
chunk lane and runs as one unit (``worker.chunkrun``). A message of a kind or version this release
cannot read is not poison: it is left for another worker (a newer one, during a rollout), never
acked.

A batch that fails as a whole (one bad input can fail a model call for everyone) is run again one
job at a time, so one job's error never becomes its neighbours'. A job cancelled while its batch
runs stops the batch only if every job in it stopped; otherwise its result is simply not written.

The backoff is the worker's, not the subscription's retry policy: the message is dropped from
lease management with its ack deadline set to the backoff, so Pub/Sub redelivers it then (see
docs/reliability.md for why the subscription has no retry policy). Firestore being unreachable is
not a task failure: the processor holds the messages (their leases are extended by the client) and
retries with backoff, so an outage cannot burn delivery attempts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from pydantic import BaseModel, ValidationError

from schemas import tracing
from schemas.chunks import ChunkMessage
from schemas.jobs import JobStatus
from schemas.jsonlog import log_context
from schemas.messages import JobMessage, UnknownMessage, parse
from schemas.tasks import get_task
from worker import faults, metrics
from worker.attempts import BatchStop, Held, StopToken, Watcher
from worker.chunkrun import ChunkInFlight, ChunkRunner, ChunkStoreLike
from worker.chunkstore import ChunkClaim
from worker.errors import PermanentError, Stopped, StoreUnavailable, TransientError
from worker.jobtrace import JobTrace
from worker.lanes import Delivery, Lane
from worker.modellock import ModelLock
from worker.store import Busy, Claim, Skip
from worker.tasks import Adapter

logger = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", JobMessage, ChunkMessage)

DEFAULT_TIMEOUT_S = 60.0
"""The time limit of a task the catalogue does not know (it fails anyway, as unsupported)."""
STORE_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits between retries of a Firestore call during an outage (the last one repeats)."""
SETTLE_THREADS = 2
"""Threads writing outcomes: a batch's writes overlap the next batch's model call."""
UNKNOWN_MESSAGE_DELAY_S = 10
"""Seconds a message this release cannot read is left before Pub/Sub delivers it again (to any
worker: a newer one reads it). Not at once: every worker of this release would spin on it."""


class Message(Protocol):
    """The part of ``pubsub_v1.subscriber.message.Message`` the processor uses."""

    data: bytes
    attributes: Any
    message_id: str
    delivery_attempt: int | None

    def ack(self) -> None: ...
    def nack(self) -> None: ...
    def drop(self) -> None: ...
    def modify_ack_deadline(self, seconds: int) -> None: ...


class Store(Protocol):
    """The state machine the processor drives (``worker.store.JobStore`` in production)."""

    lease_s: float

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]: ...
    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]: ...
    def release(
        self, claim: Claim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool: ...
    def check(self, claims: Sequence[Claim]) -> dict[str, str]: ...


Outcome = dict[str, Any] | PermanentError | TransientError | Stopped


@dataclass(frozen=True)
class InFlight:
    """A claimed job on its way through the lane."""

    claim: Claim
    delivery: Delivery[JobMessage]
    stop: StopToken
    trace: JobTrace


@dataclass
class LaneStats:
    """Per task, what the model calls were like (``/readyz`` shows them)."""

    batches: int = 0
    jobs: int = 0
    largest_batch: int = 0
    inference_s: float = 0.0


class Processor:
    def __init__(
        self,
        store: Store,
        adapters: Mapping[str, Adapter],
        *,
        task_timeout_s: Callable[[str], float],
        batch_policy: Callable[[str], tuple[int, float]] = lambda _task: (1, 0.0),
        max_attempts: int = 5,
        retry_backoff_s: tuple[float, float] = (10.0, 600.0),
        fault_injection: bool = False,
        watch_interval_s: float = 1.0,
        worker_id: str = "",
        project: str = "",
        chunks: ChunkStoreLike | None = None,
    ):
        self._store = store
        self._chunk_store = chunks
        self._adapters = adapters
        self._task_timeout_s = task_timeout_s
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._fault_injection = fault_injection
        self._worker_id = worker_id
        self._project = project  # for Cloud Logging's trace field
        # One model call at a time across every task (worker/modellock.py), jobs before chunks.
        # Claims and writes happen outside it.
        self._model_lock = ModelLock()
        self._draining = threading.Event()
        self._abandoned = threading.Event()
        self.watcher = Watcher(self._check, watch_interval_s, store.lease_s)
        self._settle_pool = ThreadPoolExecutor(SETTLE_THREADS, thread_name_prefix="omni-settle")
        self._lanes: dict[str, Lane[JobMessage, InFlight]] = {
            task: Lane(task, *batch_policy(task), claim=self._claim_batch, run=self._run_batch)
            for task in adapters
        }
        # One chunk lane per task: a chunk is a batch by itself, so its lane takes one at a
        # time, claiming the next while one runs.
        self._chunk_lanes: dict[str, Lane[ChunkMessage, ChunkInFlight]] = {}
        if chunks is not None:
            runner = ChunkRunner(
                chunks,
                adapters,
                model_lock=self._model_lock,
                watcher=self.watcher,
                settle_pool=self._settle_pool,
                hold=self._hold,
                retry_when_free=self._retry_when_free,
                timeout_for=self._timeout_for,
                batch_size=lambda task: batch_policy(task)[0],
                backoff_s=self._backoff_s,
                draining=self._draining,
                max_attempts=max_attempts,
                worker_id=worker_id,
            )
            self._chunk_lanes = {
                task: Lane(
                    task, 1, 0.0, claim=runner.claim_batch, run=runner.run_batch, kind="chunk-"
                )
                for task in adapters
            }
        self.stats = {task: LaneStats() for task in adapters}
        self._waiting: dict[threading.Timer, Delivery[Any]] = {}  # busy ones, to be claimed again
        self._waiting_lock = threading.Lock()
        # Every delivery not yet settled: close() nacks what is left, so no callback waits forever.
        self._outstanding: set[Delivery[Any]] = set()
        self._outstanding_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.watcher.start()
        for lane in self._lanes.values():
            lane.start()
        for chunk_lane in self._chunk_lanes.values():
            chunk_lane.start()

    def drain(self) -> None:
        """Shutdown, stage one: start no new job; jobs in hand go on. Deliveries waiting for
        another attempt's lease are nacked now rather than when their timer fires."""
        self._draining.set()
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for timer, delivery in waiting.items():
            timer.cancel()
            delivery.nack()

    def abandon(self) -> None:
        """Shutdown, stage two (the grace period is over): jobs in hand stop at their next safe
        point, are released and nacked; Firestore retries give up."""
        self._draining.set()
        self._abandoned.set()
        stopped = self.watcher.stop_all("shutdown")
        if stopped:
            logger.warning("grace period over: releasing %d job(s) in hand", stopped)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        for chunk_lane in self._chunk_lanes.values():
            chunk_lane.close()
        self._settle_pool.shutdown(wait=True)
        self.watcher.close()
        with self._outstanding_lock:
            left = list(self._outstanding)
        if left:
            logger.warning("closing with %d message(s) unsettled; nacked", len(left))
        for delivery in left:
            delivery.nack()

    # -- messages --------------------------------------------------------------------------------
    def handle(self, messages: Sequence[Message]) -> None:
        """Put each message in its task's lane; return once every one of them is settled."""
        deliveries = []
        for message in messages:
            delivery = self._accept(message)
            if delivery is not None:
                deliveries.append(delivery)
        for delivery in deliveries:
            delivery.wait()

    def _accept(self, message: Message) -> Delivery[Any] | None:
        try:
            parsed = parse(message.data, dict(message.attributes))
        except UnknownMessage as exc:
            # A kind or version of a newer release (a rollout in progress): never poison.
            logger.warning(
                "message %s of an unknown kind or version left for another worker: %s",
                message.message_id,
                exc,
            )
            message.drop()  # out of lease management, then a nack that takes effect later
            message.modify_ack_deadline(UNKNOWN_MESSAGE_DELAY_S)
            return None
        except ValueError as exc:
            logger.error("unreadable message %s acked: %s", message.message_id, exc)
            message.ack()
            return None
        if isinstance(parsed, ChunkMessage):
            return self._enter(Delivery(message, parsed, self._forget), self._chunk_lanes)
        return self._enter(Delivery(message, parsed, self._forget), self._lanes)

    def _enter(self, delivery: Delivery[M], lanes: Mapping[str, Lane[M, Any]]) -> Delivery[M]:
        with self._outstanding_lock:
            self._outstanding.add(delivery)
        task = delivery.job.task
        lane = lanes.get(task)
        if self._draining.is_set():
            delivery.nack()  # not started: another worker takes it at once
        elif lane is None:
            # Only a misrouted message gets here (the consumer passes its own task's only), or
            # a chunk to a worker built without a chunk store (tests); whoever serves the task
            # has its own copy, or will get this one back.
            logger.error("no lane for task %r; message nacked", task)
            delivery.nack()
        else:
            lane.put(delivery)
        return delivery

    def _check(self, claims: Sequence[Held]) -> dict[str, str]:
        """The watcher's check: jobs in the job store, chunks in the chunk store."""
        jobs = [claim for claim in claims if isinstance(claim, Claim)]
        chunks = [claim for claim in claims if isinstance(claim, ChunkClaim)]
        verdicts = self._store.check(jobs) if jobs else {}
        if chunks and self._chunk_store is not None:
            verdicts.update(self._chunk_store.check(chunks))
        return verdicts

    def _forget(self, delivery: Delivery[Any]) -> None:
        with self._outstanding_lock:
            self._outstanding.discard(delivery)
        metrics.settled(delivery)

    def _timeout_for(self, task: str) -> float:
        try:
            return self._task_timeout_s(task)
        except Exception:  # noqa: BLE001 - a task unknown here still gets a limit
            return DEFAULT_TIMEOUT_S

    def _abort(self, batch: list[InFlight], why: str) -> None:
        """A bug or an unexpected error: every message of the batch not yet settled is nacked
        (its claim's lease lapses and a redelivery takes the job over)."""
        logger.error("%s; %d message(s) nacked", why, sum(not i.delivery.settled for i in batch))
        for item in batch:
            self.watcher.remove(item.claim)
            item.delivery.nack()

    def _submit(self, function: Callable[..., None], batch: list[InFlight], *args: Any) -> None:
        """Hand ``function(batch, *args)`` to the settle threads; whatever it raises settles the
        batch (nack) instead of vanishing in an unread future."""

        def guarded() -> None:
            try:
                function(batch, *args)
            except Exception:
                logger.exception("settling a batch failed")
                self._abort(batch, "settling a batch failed")

        try:
            self._settle_pool.submit(guarded)
        except RuntimeError:  # the pool is shut down: the worker is closing
            self._abort(batch, "settle threads closed")

    # -- stage 1 (the lane's gather thread): claim a micro-batch ----------------------------------
    def _claim_batch(
        self, lane: Lane[JobMessage, InFlight], deliveries: list[Delivery[JobMessage]]
    ) -> list[InFlight]:
        claimed: list[InFlight] = []
        try:
            return self._claim_deliveries(lane, deliveries, claimed)
        except Exception:
            logger.exception("claiming a batch failed")
            for item in claimed:
                self.watcher.remove(item.claim)
            for delivery in deliveries:
                delivery.nack()  # a no-op for the ones already settled
            return []

    def _claim_deliveries(
        self,
        lane: Lane[JobMessage, InFlight],
        deliveries: list[Delivery[JobMessage]],
        claimed: list[InFlight],
    ) -> list[InFlight]:
        if self._draining.is_set():
            for delivery in deliveries:
                delivery.nack()
            return []
        jobs = [(d.job.job_id, d.job.tenant) for d in deliveries]
        try:
            decisions = self._hold(lambda: self._store.claim_many(jobs, self._worker_id))
        except StoreUnavailable as exc:
            # Only reached once the processor gave up holding (shutdown during an outage).
            logger.warning("Firestore unavailable at shutdown; %d nacked: %s", len(jobs), exc)
            for delivery in deliveries:
                delivery.nack()
            return []
        for delivery, decision in zip(deliveries, decisions, strict=True):
            job = delivery.job
            with log_context(job_id=job.job_id, task=job.task, tenant=job.tenant):
                if isinstance(decision, Skip):
                    logger.info(
                        "delivery skipped: %s", decision.reason, extra={"skip": decision.reason}
                    )
                    metrics.skipped(job.task)
                    delivery.ack()
                elif isinstance(decision, Busy):
                    self._retry_when_free(lane, delivery, decision)
                else:
                    stop = StopToken(self._timeout_for(decision.task))
                    self.watcher.add(decision, stop)
                    trace = JobTrace.of(delivery.message)
                    claimed.append(InFlight(decision, delivery, stop, trace))
                    metrics.claimed(delivery, decision.task)
        return claimed

    def _retry_when_free(self, lane: Lane[M, Any], delivery: Delivery[M], busy: Busy) -> None:
        """A duplicate delivery of a job (or chunk) another attempt runs: back into the lane once
        that attempt's lease may have lapsed (the claim then skips it, or takes over a dead one)."""
        wait_s = (busy.until - datetime.now(UTC)).total_seconds() + 0.5
        wait_s = min(max(wait_s, 0.5), self._store.lease_s)
        logger.info("job held by a live attempt; checking again in %.1fs", wait_s)
        timer: threading.Timer

        def again() -> None:
            with self._waiting_lock:
                if self._waiting.pop(timer, None) is None:
                    return  # drain() took it
            lane.put(delivery)

        timer = threading.Timer(wait_s, again)
        timer.daemon = True
        with self._waiting_lock:
            if self._draining.is_set():
                delivery.nack()
                return
            self._waiting[timer] = delivery
        timer.start()

    # -- stage 2 (the lane's run thread): one model call, then hand the writes over ---------------
    def _run_batch(self, task: str, batch: list[InFlight]) -> None:
        try:
            self._run_claimed(task, batch)
        except Exception:
            logger.exception("running a %s batch failed", task)
            self._abort(batch, f"running a {task} batch failed")

    def _run_claimed(self, task: str, batch: list[InFlight]) -> None:
        with self._model_lock.job():
            if self._draining.is_set():
                # Claimed with the batch that was next, never started: give the jobs back now.
                self._submit(self._give_back, batch)
                return
            # The time limit counts from here, not from the claim: waiting for the model is not
            # running (and the watcher keeps renewing leases until the limit).
            deadline = time.monotonic() + self._timeout_for(task)
            for item in batch:
                item.stop.deadline = deadline
            started, started_ns = time.perf_counter(), time.time_ns()
            outcomes = self._run(task, batch)
            inference_ms = (time.perf_counter() - started) * 1000
            window = (started_ns, time.time_ns())
            for item in batch:
                item.trace.inference_ns = window
        for item in batch:
            self.watcher.remove(item.claim)
        self._record(task, len(batch), inference_ms)
        self._submit(self._settle, batch, outcomes, inference_ms)

    def _record(self, task: str, size: int, inference_ms: float) -> None:
        stats = self.stats[task]  # only this lane's run thread writes it
        stats.batches += 1
        stats.jobs += size
        stats.largest_batch = max(stats.largest_batch, size)
        stats.inference_s += inference_ms / 1000
        metrics.batch_ran(task, size, inference_ms / 1000)

    def _run(self, task: str, batch: list[InFlight]) -> list[Outcome]:
        """One outcome per job: validated inputs run together; faulted jobs (tests) alone."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        together: list[tuple[int, BaseModel]] = []
        alone: list[tuple[int, BaseModel]] = []
        adapter = self._adapters[task]  # lanes exist only for the tasks with an adapter
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
            faulted = self._fault_injection and faults.FAULT_KEY in item.claim.metadata
            (alone if faulted else together).append((i, task_input))
        if together:
            results = self._call(adapter, task, [(batch[i], x) for i, x in together])
            for (i, _), outcome in zip(together, results, strict=True):
                outcomes[i] = outcome
        for i, task_input in alone:
            (outcomes[i],) = self._call(adapter, task, [(batch[i], task_input)])
        return [self._stopped_since(item, o) for item, o in zip(batch, outcomes, strict=True)]

    @staticmethod
    def _stopped_since(item: InFlight, outcome: Outcome | None) -> Outcome:
        # A cancel or lost lease seen during the call wins over the result.
        assert outcome is not None
        reason = item.stop.reason
        if reason is not None and isinstance(outcome, dict):
            return Stopped(reason)
        return outcome

    def _call(
        self, adapter: Adapter, task: str, items: list[tuple[InFlight, BaseModel]]
    ) -> list[Outcome]:
        """Run ``items`` as one model call; if it fails as a whole, run each alone."""
        spec = get_task(task)
        stop = BatchStop([item.stop for item, _ in items])
        try:
            if self._fault_injection:
                for item, _ in items:
                    faults.inject(item.claim.metadata, item.stop)
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

    # -- stage 3 (settle threads): write outcomes, then settle messages ---------------------------
    def _settle(self, batch: list[InFlight], outcomes: list[Outcome], inference_ms: float) -> None:
        """Write the batch's outcomes (one commit for the terminal ones), then settle messages."""
        ends: list[tuple[InFlight, JobStatus, dict[str, Any], str]] = []
        size = len(batch)
        # The job's share of its timings (schemas/jobs.JobTimings): the forward pass it was in.
        ran = {"batch_size": size, "inference_ms": round(inference_ms, 1)}
        for item, outcome in zip(batch, outcomes, strict=True):
            claim, message = item.claim, item.delivery.message
            extra = {"job_id": claim.job_id, "task": claim.task, "attempt": claim.attempt}
            if isinstance(outcome, dict):
                fields = {"result": outcome, **ran}
                ends.append((item, JobStatus.SUCCEEDED, fields, "job succeeded"))
            elif isinstance(outcome, PermanentError):
                fields = {"error": {"code": outcome.code, "message": outcome.message}, **ran}
                ends.append((item, JobStatus.FAILED, fields, f"job failed: {outcome.code}"))
            elif isinstance(outcome, Stopped) and outcome.reason == "timeout":
                limit = self._timeout_for(claim.task)
                error = {
                    "code": "timeout",
                    "message": f"the task ran longer than its {limit:g}s limit",
                }
                ends.append((item, JobStatus.FAILED, {"error": error}, "job failed: timeout"))
            elif isinstance(outcome, Stopped):
                self._settle_stopped(item, outcome.reason, extra)
            elif message.delivery_attempt is None and claim.attempt >= self._max_attempts:
                # No dead-letter policy on this subscription (no delivery count): enforce the
                # maximum here, so the job still ends instead of looping.
                text = f"{claim.attempt} attempts failed; last error: {outcome}"
                error = {"code": "attempts_exhausted", "message": text}
                ends.append(
                    (item, JobStatus.FAILED, {"error": error}, "job failed: attempts exhausted")
                )
            else:
                self._retry_later(item, outcome, extra)
        if ends:
            self._write_ends(ends, size, inference_ms)

    def _write_ends(
        self,
        ends: list[tuple[InFlight, JobStatus, dict[str, Any], str]],
        size: int,
        inference_ms: float,
    ) -> None:
        request = [(item.claim, status, fields) for item, status, fields, _ in ends]
        try:
            write_started = time.time_ns()
            written = self._hold(lambda: self._store.end_many(request))
            write_ns = (write_started, time.time_ns())
        except gexc.InvalidArgument as exc:
            # Firestore refused the write: a result over a document's 1 MiB, or a batch over a
            # commit's limit. One at a time, and a result too large fails its job.
            if len(ends) > 1:
                for end in ends:
                    self._write_ends([end], size, inference_ms)
                return
            item, status, _fields, _text = ends[0]
            if status is not JobStatus.SUCCEEDED:
                raise
            text = f"the result cannot be stored: {exc.message}"
            error = {"error": {"code": "result_too_large", "message": text}}
            self._write_ends(
                [(item, JobStatus.FAILED, error, "job failed: result_too_large")],
                size,
                inference_ms,
            )
            return
        except StoreUnavailable as exc:
            logger.warning("Firestore unavailable at shutdown; %d nacked: %s", len(ends), exc)
            for item, *_ in ends:
                item.delivery.nack()
            return
        for (item, status, _fields, text), ok in zip(ends, written, strict=True):
            metrics.outcome(item.delivery, status.value if ok else "lost")
            if ok:
                claim = item.claim
                span = item.trace.record(
                    claim.task, claim.job_id, claim.attempt, status.value, size, write_ns
                )
                extra = {
                    **tracing.log_fields(self._project, span),
                    "job_id": item.claim.job_id,
                    "tenant": item.claim.tenant,
                    "task": item.claim.task,
                    "attempt": item.claim.attempt,
                    "batch_size": size,
                    "inference_ms": round(inference_ms, 1),
                }
                logger.info(text, extra=extra)
            # Written, or another writer (a cancel, a newer attempt) settled it: either way done.
            item.delivery.ack()

    def _retry_later(self, item: InFlight, outcome: Outcome, extra: dict[str, Any]) -> None:
        error = {"code": "transient", "message": str(outcome)}
        message = item.delivery.message
        metrics.outcome(item.delivery, "retried")
        try:
            self._hold(lambda: self._store.release(item.claim, error))
        except StoreUnavailable:
            item.delivery.nack()
            return
        delay_s = self._backoff_s(message.delivery_attempt or item.claim.attempt)
        logger.warning(
            "transient failure; job released, redelivery in %ds: %s",
            delay_s,
            outcome,
            extra={**extra, "retry_in_s": delay_s},
        )
        item.delivery.retry_in(delay_s)

    def _backoff_s(self, delivery: int) -> int:
        """Exponential: the first retry after ``retry_backoff_s[0]``, doubling up to ``[1]``
        (Pub/Sub caps an ack deadline at 600 s)."""
        low, high = self._retry_backoff_s
        return int(max(1, min(low * 2 ** max(delivery - 1, 0), high, 600)))

    def _settle_stopped(self, item: InFlight, reason: str, extra: dict[str, Any]) -> None:
        extra = {**extra, "stop": reason}
        metrics.outcome(item.delivery, "released" if reason == "shutdown" else reason)
        if reason == "shutdown":
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses; the next
                self._hold(lambda: self._store.release(item.claim, None))  # claim takes over
            logger.info("stopped for shutdown; job released and message nacked", extra=extra)
            item.delivery.nack()
        else:
            # Cancelled, or another attempt owns the job: whoever wrote it has settled it.
            logger.info("stopped at a safe point: %s", reason, extra=extra)
            item.delivery.ack()

    def _give_back(self, batch: list[InFlight]) -> None:
        for item in batch:
            self.watcher.remove(item.claim)
            claim = item.claim
            metrics.outcome(item.delivery, "released")
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses (see above)
                self._hold(lambda: self._store.release(claim, None, started=False))  # noqa: B023
            item.delivery.nack()
        logger.info("draining: %d claimed job(s) not started, given back", len(batch))

    def _hold(self, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while Firestore is unavailable, until it answers or
        the shutdown's grace period is over (then ``StoreUnavailable`` propagates)."""
        for attempt in range(10**9):
            try:
                return call()
            except StoreUnavailable as exc:
                if self._abandoned.is_set():
                    raise
                wait_s = STORE_BACKOFF_S[min(attempt, len(STORE_BACKOFF_S) - 1)]
                logger.warning("Firestore unavailable (%s); retrying in %.1fs", exc, wait_s)
                if self._abandoned.wait(wait_s):
                    raise
        raise AssertionError("unreachable")
