"""The ingress's estimates (``schemas/eta.py``): the pool's drain rates, read from the workers'
reports at most every ``CACHE_S`` per process, and a queued job's place in its task's queue.

Cheap by construction: the reports are a handful of small documents read once per ``CACHE_S``
whatever the traffic; a queued job's place is one count aggregation (billed per 1,000 index
entries), made only when a client reads a job that is still queued. Any failure leaves the
estimate out: it never turns a read into an error.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import translated
from ingress.errors import StoreUnavailable
from schemas import eta
from schemas.batches import BatchCounts
from schemas.jobs import JobStatus

logger = logging.getLogger(__name__)

CACHE_S = 5.0
"""How long one process reuses the pool's rates."""
TIMEOUT_S = 2.0


class Estimates:
    def __init__(self, client: firestore.Client, jobs_collection: str):
        self._reports = client.collection(eta.RATES_COLLECTION)
        self._jobs = client.collection(jobs_collection)
        self._lock = threading.Lock()  # guards the cached rates
        self._rates: dict[str, dict[str, float]] = {}
        self._read_at = float("-inf")

    def rates(self) -> dict[str, dict[str, float]]:
        """Each task's pool rates, as of at most ``CACHE_S`` ago."""
        with self._lock:
            if time.monotonic() - self._read_at < CACHE_S:
                return self._rates
        try:
            with translated(StoreUnavailable, "rates read"):
                reports = [s.to_dict() or {} for s in self._reports.stream(timeout=TIMEOUT_S)]
        except Exception as exc:  # noqa: BLE001 - an estimate is never worth an error
            logger.warning("drain rates unread: %s", exc)
            reports = []
        rates = eta.pool_rates(reports, datetime.now(UTC))
        with self._lock:
            self._rates, self._read_at = rates, time.monotonic()
        return rates

    def batch_progress(self, task: str, counts: BatchCounts, created_at: datetime) -> Any:
        pool = self.rates().get(task, {}).get("chunk_items_per_s")
        return eta.batch_progress(
            counts.finished, counts.in_flight, created_at, datetime.now(UTC), pool
        )

    def queue(self, doc: dict[str, Any]) -> dict[str, float] | None:
        """A queued job's ``queue``: queued jobs of its task created before it, plus one."""
        query: Any = (  # the client's stubs mistype count().get()
            self._jobs.where(filter=FieldFilter("task", "==", doc["task"]))
            .where(filter=FieldFilter("status", "==", JobStatus.QUEUED.value))
            .where(filter=FieldFilter("created_at", "<", doc["created_at"]))
        )
        try:
            with translated(StoreUnavailable, "queue count"):
                ahead = int(query.count().get(timeout=TIMEOUT_S)[0][0].value)
        except Exception as exc:  # noqa: BLE001 - an estimate is never worth an error
            logger.warning("queue position unknown: %s", exc)
            return None
        jobs_per_s = self.rates().get(doc["task"], {}).get("jobs_per_s")
        return eta.queue_estimate(ahead + 1, jobs_per_s)
