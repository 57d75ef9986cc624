"""Drain rates: what this worker gets through while it works, per task and class, reported to
Firestore for the ingress's estimates (``queue.eta_s`` of a queued job, ``progress`` of a running
batch; docs/scheduling.md).

Each model call's items and seconds feed an exponentially weighted mean of items per second of
model time (``jobs`` for micro-batches of single jobs, ``chunk_items`` for chunks' sub-batches), so
the rate is the worker's speed when busy, not its recent load: an idle worker still reports what it
would do. Every ``REPORT_S`` a daemon thread writes one document, ``worker_rates/<worker id>``
(``{"tasks": {task: {"jobs_per_s", "chunk_items_per_s"}}, "at", "expire_at"}``); the ingress sums
the documents written in the last ``STALE_S`` (schemas/eta.py). The same thread reports the held
backlog (``worker/heldbacklog.py``).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from common.googleapi import translated
from schemas.eta import RATES_COLLECTION, STALE_S
from worker.errors import StoreUnavailable
from worker.heldbacklog import HeldBacklog

logger = logging.getLogger(__name__)

REPORT_S = 10.0
"""Seconds between reports (``WORKER_RATE_REPORT_S``)."""
ALPHA = 0.2
"""Weight of the newest call in the mean."""


class DrainRates:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _rates (the settle threads record concurrently)
        self._rates: dict[str, dict[str, float]] = {}

    def record(self, task: str, kind: str, items: int, seconds: float) -> None:
        """One model call of ``items`` (``kind``: ``jobs`` or ``chunk_items``) in ``seconds``."""
        if items <= 0 or seconds <= 0:
            return
        rate = items / seconds
        with self._lock:
            rates = self._rates.setdefault(task, {})
            before = rates.get(kind)
            rates[kind] = rate if before is None else ALPHA * rate + (1 - ALPHA) * before

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                task: {f"{kind}_per_s": round(rate, 2) for kind, rate in rates.items()}
                for task, rates in self._rates.items()
            }


class RateReporter:
    """Writes the worker's ``DrainRates`` every ``interval_s`` until ``stop``."""

    def __init__(
        self,
        client: Any,
        worker_id: str,
        rates: DrainRates,
        interval_s: float = REPORT_S,
        backlog: HeldBacklog | None = None,
    ):
        self._ref = client.collection(RATES_COLLECTION).document(worker_id or "worker")
        self._rates = rates
        self._backlog = backlog
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omni-rates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._backlog is not None:
                self._backlog.report()
            tasks = self._rates.snapshot()
            if not tasks:
                continue
            now = datetime.now(UTC)
            doc = {"tasks": tasks, "at": now, "expire_at": now + timedelta(seconds=STALE_S * 10)}
            try:
                with translated(StoreUnavailable, "rate report"):
                    self._ref.set(doc, timeout=self._interval_s)
            except Exception as exc:  # noqa: BLE001 - a report is best effort; the next one comes
                logger.warning("drain rates not reported: %s", exc)
