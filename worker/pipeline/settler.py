"""Stage 3, on the settle threads: write each job's outcome, then settle its message.

    ok ──────────────────────────▶ write succeeded ─────────────▶ ack
    PermanentError / bug / unserved task ──▶ write failed ─────────▶ ack
    timeout ─────────────────────▶ write failed (timeout) ──────▶ ack
    cancelled / lost lease ─────────────────────────────────────▶ ack (the other writer won)
    TransientError ──────────────▶ release (queued, last_error) ─▶ redeliver after a backoff
                                                                (10 s doubling to 600 s); the
                                                                dead-letter topic after the
                                                                maximum deliveries
    shutdown past the grace ─────▶ release ──────────────────────▶ nack
    claimed, not started, draining ▶ release (attempt given back) ▶ nack

A batch's terminal writes share one commit (``Store.end_many``); one Firestore refuses (a result
over a document's 1 MiB) is written again one job at a time, and a result too large fails its job
``result_too_large``.

The backoff is the worker's, not the subscription's retry policy: the message is dropped from
lease management with its ack deadline set to the backoff, so Pub/Sub redelivers it then (see
docs/reliability.md for why the subscription has no retry policy).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import tracing
from common.googleapi import Invalid
from schemas import jobstate
from schemas.jobs import DEADLINE_EXCEEDED, JobStatus
from worker import metrics
from worker.attempts import StopReason, Watcher
from worker.errors import PermanentError, Stopped, StoreUnavailable
from worker.pipeline.delivery import InFlight, Outcome, Store
from worker.pipeline.hold import Hold
from worker.rates import DrainRates

logger = logging.getLogger(__name__)

SETTLE_THREADS = 2
"""Threads writing outcomes: a batch's writes overlap the next batch's model call."""

End = tuple[InFlight, JobStatus, dict[str, Any], str]
"""A terminal write: the job, its status, the fields written, and the line logged."""


class Settler:
    def __init__(
        self,
        store: Store,
        *,
        hold: Hold,
        watcher: Watcher,
        timeout_for: Callable[[str], float],
        max_attempts: int = 5,
        retry_backoff_s: tuple[float, float] = (10.0, 600.0),
        project: str = "",
        rates: DrainRates | None = None,
    ):
        self._store = store
        self._rates = rates
        self._hold = hold
        self._watcher = watcher
        self._timeout_for = timeout_for
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._project = project  # for Cloud Logging's trace field
        self.pool = ThreadPoolExecutor(SETTLE_THREADS, thread_name_prefix="omni-settle")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def backoff_s(self, delivery: int) -> int:
        """Exponential: the first retry after ``retry_backoff_s[0]``, doubling up to ``[1]``
        (Pub/Sub caps an ack deadline at 600 s)."""
        low, high = self._retry_backoff_s
        return int(max(1, min(low * 2 ** max(delivery - 1, 0), high, 600)))

    # -- handing over ----------------------------------------------------------------------------
    def settle(self, batch: list[InFlight], outcomes: list[Outcome], inference_ms: float) -> None:
        """On a settle thread: ``batch``'s outcomes written, then its messages settled."""
        self._submit(self._settle, batch, outcomes, inference_ms)

    def give_back(self, batch: list[InFlight]) -> None:
        """On a settle thread: a claimed batch never started (draining) released and nacked."""
        self._submit(self._give_back, batch)

    def abort(self, batch: list[InFlight], why: str) -> None:
        """A bug or an unexpected error: every message of the batch not yet settled is nacked
        (its claim's lease lapses and a redelivery takes the job over)."""
        logger.error("%s; %d message(s) nacked", why, sum(not i.delivery.settled for i in batch))
        for item in batch:
            self._watcher.remove(item.claim)
            item.delivery.nack()

    def _submit(self, function: Callable[..., None], batch: list[InFlight], *args: Any) -> None:
        """Hand ``function(batch, *args)`` to the settle threads; whatever it raises settles the
        batch (nack) instead of vanishing in an unread future."""

        def guarded() -> None:
            try:
                function(batch, *args)
            except Exception:
                logger.exception("settling a batch failed")
                self.abort(batch, "settling a batch failed")

        try:
            self.pool.submit(guarded)
        except RuntimeError:  # the pool is shut down: the worker is closing
            self.abort(batch, "settle threads closed")

    # -- outcomes --------------------------------------------------------------------------------
    def _settle(self, batch: list[InFlight], outcomes: list[Outcome], inference_ms: float) -> None:
        ends: list[End] = []
        size = len(batch)
        # The job's share of its timings (schemas/jobs.JobTimings): the forward pass it was in.
        ran = {"batch_size": size, "inference_ms": round(inference_ms, 1)}
        for item, outcome in zip(batch, outcomes, strict=True):
            end = self._end_of(item, outcome, ran)
            if end is not None:
                ends.append(end)
        if ends:
            self._write_ends(ends, size, inference_ms)

    def _end_of(self, item: InFlight, outcome: Outcome, ran: dict[str, Any]) -> End | None:
        """The terminal write ``outcome`` calls for; ``None`` once it settled the message
        another way (stopped, or released for a retry)."""
        claim, message = item.claim, item.delivery.message
        if isinstance(outcome, dict):
            return (item, JobStatus.SUCCEEDED, {"result": outcome, **ran}, "job succeeded")
        if isinstance(outcome, PermanentError):
            fields = {"error": {"code": outcome.code, "message": outcome.message}, **ran}
            return (item, JobStatus.FAILED, fields, f"job failed: {outcome.code}")
        if isinstance(outcome, Stopped) and outcome.reason == StopReason.DEADLINE:
            error = dict(jobstate.DEADLINE_ERROR)
            return (item, JobStatus.FAILED, {"error": error}, f"job failed: {DEADLINE_EXCEEDED}")
        if isinstance(outcome, Stopped) and outcome.reason == StopReason.TIMEOUT:
            limit = self._timeout_for(claim.task)
            error = {"code": "timeout", "message": f"the task ran longer than its {limit:g}s limit"}
            return (item, JobStatus.FAILED, {"error": error}, "job failed: timeout")
        extra = {"job_id": claim.job_id, "task": claim.task, "attempt": claim.attempt}
        if isinstance(outcome, Stopped):
            self._settle_stopped(item, StopReason(outcome.reason), extra)
            return None
        if message.delivery_attempt is None and claim.attempt >= self._max_attempts:
            # No dead-letter policy on this subscription (no delivery count): enforce the
            # maximum here, so the job still ends instead of looping.
            text = f"{claim.attempt} attempts failed; last error: {outcome}"
            error = {"code": "attempts_exhausted", "message": text}
            return (item, JobStatus.FAILED, {"error": error}, "job failed: attempts exhausted")
        self._retry_later(item, outcome, extra)
        return None

    def _write_ends(self, ends: list[End], size: int, inference_ms: float) -> None:
        if self._rates is not None and inference_ms > 0:
            self._rates.record(ends[0][0].claim.task, "jobs", size, inference_ms / 1000)
        request = [(item.claim, status, fields) for item, status, fields, _ in ends]
        try:
            write_started = time.time_ns()
            written = self._hold(lambda: self._store.end_many(request))
            write_ns = (write_started, time.time_ns())
        except Invalid as exc:
            # Firestore refused the write: a result over a document's 1 MiB, or a batch over a
            # commit's limit. One at a time, and a result too large fails its job.
            if len(ends) > 1:
                for end in ends:
                    self._write_ends([end], size, inference_ms)
                return
            item, status, _fields, _text = ends[0]
            if status is not JobStatus.SUCCEEDED:
                raise
            text = f"the result cannot be stored: {exc}"
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
            metrics.outcome(item.delivery, status.value if ok else StopReason.LOST.value)
            if ok:
                claim = item.claim
                span = item.trace.record(
                    claim.task, claim.job_id, claim.attempt, status.value, size, write_ns
                )
                extra = {
                    **tracing.log_fields(self._project, span),
                    "job_id": claim.job_id,
                    "tenant": claim.tenant,
                    "task": claim.task,
                    "attempt": claim.attempt,
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
        delay_s = self.backoff_s(message.delivery_attempt or item.claim.attempt)
        logger.warning(
            "transient failure; job released, redelivery in %ds: %s",
            delay_s,
            outcome,
            extra={**extra, "retry_in_s": delay_s},
        )
        item.delivery.retry_in(delay_s)

    def _settle_stopped(self, item: InFlight, reason: StopReason, extra: dict[str, Any]) -> None:
        extra = {**extra, "stop": reason.value}
        if reason is StopReason.SHUTDOWN:
            metrics.outcome(item.delivery, "released")
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses; the next
                self._hold(lambda: self._store.release(item.claim, None))  # claim takes over
            logger.info("stopped for shutdown; job released and message nacked", extra=extra)
            item.delivery.nack()
        else:
            # Cancelled, or another attempt owns the job: whoever wrote it has settled it.
            metrics.outcome(item.delivery, reason.value)
            logger.info("stopped at a safe point: %s", reason.value, extra=extra)
            item.delivery.ack()

    def _give_back(self, batch: list[InFlight]) -> None:
        for item in batch:
            self._watcher.remove(item.claim)
            claim = item.claim
            metrics.outcome(item.delivery, "released")
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses (see above)
                self._hold(lambda: self._store.release(claim, None, started=False))  # noqa: B023
            item.delivery.nack()
        logger.info("draining: %d claimed job(s) not started, given back", len(batch))
