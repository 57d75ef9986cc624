"""What happens to one delivery: parse, claim, run, write, then ack (or nack).

``handle`` takes a list of messages so that micro-batching can hand it many at once; each message
is settled exactly once, after its outcome is durable in Firestore:

    parse ── bad ─────────────────────────────────────────────────▶ ack (poison; logged)
    claim ── missing / terminal ──────────────────────────────────▶ ack (nothing to do)
          ── held by a live attempt ──▶ wait for its lease, claim again
    run   ── ok ─────────────────────▶ write succeeded ─────────────▶ ack
          ── PermanentError / bug / unserved task ──▶ write failed ─▶ ack
          ── timeout ────────────────▶ write failed (timeout) ──────▶ ack
          ── cancelled / lost lease ─────────────────────────────────▶ ack (the other writer won)
          ── TransientError ─────────▶ release (queued, last_error) ─▶ redeliver after a backoff
                                                                     (10 s doubling to 600 s); the
                                                                     dead-letter topic after the
                                                                     maximum deliveries
          ── shutdown past the grace ▶ release ──────────────────────▶ nack

The backoff is the worker's, not the subscription's retry policy: the message is dropped from
lease management with its ack deadline set to the backoff, so Pub/Sub redelivers it then (see
docs/reliability.md for why the subscription has no retry policy). Firestore being unreachable is
not a task failure: the processor holds the message (its lease is
extended by the client) and retries with backoff, so an outage cannot burn delivery attempts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from schemas.jsonlog import log_context
from schemas.messages import JobMessage
from schemas.tasks import get_task
from worker import faults
from worker.attempts import StopToken, Watcher
from worker.errors import PermanentError, Stopped, StoreUnavailable, TransientError
from worker.store import Busy, Claim, Skip
from worker.tasks import Adapter

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORE_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits between retries of a Firestore call during an outage (the last one repeats)."""


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

    def claim(self, job_id: str, tenant: str) -> Claim | Skip | Busy: ...
    def finish(self, claim: Claim, result: dict[str, Any]) -> bool: ...
    def fail(self, claim: Claim, code: str, message: str) -> bool: ...
    def release(self, claim: Claim, last_error: dict[str, str] | None) -> bool: ...
    def check(self, claims: Sequence[Claim]) -> dict[str, str]: ...


Outcome = dict[str, Any] | PermanentError | TransientError | Stopped


class Processor:
    def __init__(
        self,
        store: Store,
        adapters: Mapping[str, Adapter],
        *,
        task_timeout_s: Callable[[str], float],
        max_attempts: int = 5,
        retry_backoff_s: tuple[float, float] = (10.0, 600.0),
        fault_injection: bool = False,
        watch_interval_s: float = 1.0,
    ):
        self._store = store
        self._adapters = adapters
        self._task_timeout_s = task_timeout_s
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._fault_injection = fault_injection
        # Serialises claim + forward pass: torch already uses every core for one pass, and two
        # at once only thrash. Claiming inside it means a job reads `running` only once the model
        # is free for it; the result write happens outside it, overlapping the next job's pass.
        self._model_lock = threading.Lock()
        self._draining = threading.Event()
        self._abandoned = threading.Event()
        self.watcher = Watcher(store.check, watch_interval_s, store.lease_s)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.watcher.start()

    def drain(self) -> None:
        """Shutdown, stage one: start no new job; jobs in hand go on."""
        self._draining.set()

    def abandon(self) -> None:
        """Shutdown, stage two (the grace period is over): jobs in hand stop at their next safe
        point, are released and nacked; Firestore retries give up."""
        self._draining.set()
        self._abandoned.set()
        stopped = self.watcher.stop_all("shutdown")
        if stopped:
            logger.warning("grace period over: releasing %d job(s) in hand", stopped)

    def close(self) -> None:
        self.watcher.close()

    # -- messages --------------------------------------------------------------------------------
    def handle(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._handle_one(message)

    def _handle_one(self, message: Message) -> None:
        try:
            job = JobMessage.from_pubsub(message.data, dict(message.attributes))
        except ValueError as exc:
            logger.error("unreadable message %s acked: %s", message.message_id, exc)
            message.ack()
            return
        with log_context(job_id=job.job_id, task=job.task, tenant=job.tenant):
            try:
                self._process(job, message)
            except StoreUnavailable as exc:
                # Only reached once the processor gave up holding (shutdown during an outage).
                logger.warning("Firestore unavailable at shutdown; message nacked: %s", exc)
                message.nack()

    def _process(self, job: JobMessage, message: Message) -> None:
        while True:
            if self._draining.is_set():
                message.nack()  # not started: another worker takes it at once
                return
            with self._model_lock:
                if self._draining.is_set():
                    message.nack()
                    return
                claimed = self._hold(lambda: self._store.claim(job.job_id, job.tenant))
                if isinstance(claimed, Claim):
                    started = time.perf_counter()
                    outcome = self._run(claimed)
                    inference_ms = (time.perf_counter() - started) * 1000
                    break
            if isinstance(claimed, Skip):
                logger.info("delivery skipped: %s", claimed.reason, extra={"skip": claimed.reason})
                message.ack()
                return
            self._wait_for_lease(claimed)
        self._settle(claimed, outcome, message, inference_ms)

    def _wait_for_lease(self, busy: Busy) -> None:
        """A duplicate delivery of a job another attempt runs: wait for it to end or lapse."""
        wait_s = (busy.until - datetime.now(UTC)).total_seconds() + 0.5
        wait_s = min(max(wait_s, 0.5), self._store.lease_s)
        logger.info("job held by a live attempt; checking again in %.1fs", wait_s)
        self._abandoned.wait(wait_s)

    def _settle(self, claim: Claim, outcome: Outcome, message: Message, ms: float) -> None:
        extra = {"attempt": claim.attempt}
        if isinstance(outcome, dict):
            if self._hold(lambda: self._store.finish(claim, outcome)):
                logger.info("job succeeded", extra={**extra, "inference_ms": round(ms, 1)})
            message.ack()
        elif isinstance(outcome, PermanentError):
            if self._hold(lambda: self._store.fail(claim, outcome.code, outcome.message)):
                logger.info("job failed: %s", outcome.code, extra=extra)
            message.ack()
        elif isinstance(outcome, Stopped):
            self._settle_stopped(claim, outcome.reason, message)
        elif message.delivery_attempt is None and claim.attempt >= self._max_attempts:
            # No dead-letter policy on this subscription (no delivery count): enforce the
            # maximum here, so the job still ends instead of looping.
            text = f"{claim.attempt} attempts failed; last error: {outcome}"
            if self._hold(lambda: self._store.fail(claim, "attempts_exhausted", text)):
                logger.warning("job failed: attempts exhausted", extra=extra)
            message.ack()
        else:
            error = {"code": "transient", "message": str(outcome)}
            self._hold(lambda: self._store.release(claim, error))
            delay_s = self._backoff_s(message.delivery_attempt or claim.attempt)
            logger.warning(
                "transient failure; job released, redelivery in %ds: %s",
                delay_s,
                outcome,
                extra={**extra, "retry_in_s": delay_s},
            )
            # Out of lease management first, so no lease extension lands after the new deadline.
            message.drop()
            message.modify_ack_deadline(delay_s)

    def _backoff_s(self, delivery: int) -> int:
        """Exponential: the first retry after ``retry_backoff_s[0]``, doubling up to ``[1]``
        (Pub/Sub caps an ack deadline at 600 s)."""
        low, high = self._retry_backoff_s
        return int(max(1, min(low * 2 ** max(delivery - 1, 0), high, 600)))

    def _settle_stopped(self, claim: Claim, reason: str, message: Message) -> None:
        extra = {"attempt": claim.attempt, "stop": reason}
        if reason == "timeout":
            limit = self._task_timeout_s(claim.task)
            text = f"the task ran longer than its {limit:g}s limit"
            if self._hold(lambda: self._store.fail(claim, "timeout", text)):
                logger.info("job failed: timeout", extra=extra)
            message.ack()
        elif reason == "shutdown":
            self._hold(lambda: self._store.release(claim, None))
            logger.info("stopped for shutdown; job released and message nacked", extra=extra)
            message.nack()
        else:
            # Cancelled, or another attempt owns the job: whoever wrote it has settled it.
            logger.info("stopped at a safe point: %s", reason, extra=extra)
            message.ack()

    def _run(self, claim: Claim) -> Outcome:
        """The stored result, or why there is none."""
        stop = StopToken(self._task_timeout_s(claim.task))
        self.watcher.add(claim, stop)
        try:
            return self._call(claim, stop)
        except (TransientError, PermanentError, Stopped) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a bug in a task must not loop forever
            logger.exception("task raised")
            return PermanentError("internal", f"{type(exc).__name__} in task {claim.task}")
        finally:
            self.watcher.remove(claim)

    def _call(self, claim: Claim, stop: StopToken) -> dict[str, Any]:
        adapter = self._adapters.get(claim.task)
        if adapter is None:
            # Every worker serves every task until the routing issue adds task pools; a task no
            # worker serves would only come back, so it fails instead of looping.
            raise PermanentError("unsupported_task", f"no worker serves task {claim.task!r}")
        spec = get_task(claim.task)
        try:
            task_input = spec.input_model.model_validate(spec.input_from_store(claim.input))
        except ValidationError as exc:
            raise PermanentError("invalid_input", str(exc)) from None
        if self._fault_injection:
            faults.inject(claim.metadata, stop)
        (result,) = adapter.run([task_input], stop)
        stop.check()  # a cancel or lost lease seen during the last chunk wins over the result
        return spec.result_to_store(result)

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
