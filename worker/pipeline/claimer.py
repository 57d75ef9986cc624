"""Stage 1, on a lane's gather thread: parse nothing more, claim a micro-batch.

One Firestore transaction claims the batch (``Store.claim_many``); each delivery then goes its way:

    claimed ──────────────────────────────▶ the batch's next stage (its lease watched from now)
    missing / terminal / twice in one batch ▶ ack (nothing to do)
    held by a live attempt ───────────────▶ back into the lane once that lease may have lapsed
    draining, or Firestore gone at shutdown ▶ nack (another worker takes it at once)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from common.jsonlog import log_context
from schemas.messages import JobMessage
from worker import metrics
from worker.attempts import StopToken, Watcher
from worker.errors import StoreUnavailable
from worker.jobtrace import JobTrace
from worker.pipeline.delivery import Delivery, InFlight, M, Store
from worker.pipeline.hold import Hold
from worker.pipeline.lanes import Lane
from worker.store import Busy, Skip

logger = logging.getLogger(__name__)


class Claimer:
    """Claims job micro-batches, and puts deliveries of jobs another attempt holds back into
    their lane later (``retry_when_free``, for chunks too)."""

    def __init__(
        self,
        store: Store,
        *,
        hold: Hold,
        watcher: Watcher,
        timeout_for: Callable[[str], float],
        worker_id: str = "",
    ):
        self._store = store
        self._hold = hold
        self._watcher = watcher
        self._timeout_for = timeout_for
        self._worker_id = worker_id
        # Deliveries of busy jobs, each with the timer that puts it back into its lane.
        self._waiting: dict[threading.Timer, Delivery[Any]] = {}
        self._waiting_lock = threading.Lock()  # guards _waiting; drain() empties it

    def claim_batch(
        self, lane: Lane[JobMessage, InFlight], deliveries: list[Delivery[JobMessage]]
    ) -> list[InFlight]:
        """The claimed jobs of ``deliveries``; every other delivery is settled or waits for
        another attempt's lease. Whatever fails, no delivery is left unsettled and unclaimed."""
        claimed: list[InFlight] = []
        try:
            return self._claim(lane, deliveries, claimed)
        except Exception:
            logger.exception("claiming a batch failed")
            for item in claimed:
                self._watcher.remove(item.claim)
            for delivery in deliveries:
                delivery.nack()  # a no-op for the ones already settled
            return []

    def _claim(
        self,
        lane: Lane[JobMessage, InFlight],
        deliveries: list[Delivery[JobMessage]],
        claimed: list[InFlight],
    ) -> list[InFlight]:
        if self._hold.draining.is_set():
            for delivery in deliveries:
                delivery.nack()
            return []
        jobs = [(d.job.job_id, d.job.tenant) for d in deliveries]
        try:
            decisions = self._hold(lambda: self._store.claim_many(jobs, self._worker_id))
        except StoreUnavailable as exc:
            # Only reached once holding gave up (shutdown during an outage).
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
                    self.retry_when_free(lane, delivery, decision)
                else:
                    stop = StopToken(self._timeout_for(decision.task), decision.deadline)
                    self._watcher.add(decision, stop)
                    trace = JobTrace.of(delivery.message)
                    claimed.append(InFlight(decision, delivery, stop, trace))
                    metrics.claimed(delivery, decision.task)
        return claimed

    def retry_when_free(self, lane: Lane[M, Any], delivery: Delivery[M], busy: Busy) -> None:
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
            if self._hold.draining.is_set():
                delivery.nack()
                return
            self._waiting[timer] = delivery
        timer.start()

    def drain(self) -> None:
        """Nack the deliveries waiting for another attempt's lease now, not when their timer
        fires (call once ``draining`` is set)."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for timer, delivery in waiting.items():
            timer.cancel()
            delivery.nack()
