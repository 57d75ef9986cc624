"""The held backlog, made visible to autoscaling (docs/scheduling.md): batch chunks held behind
their batches' windows are in no subscription, so the HPA, which scales on undelivered messages,
would not see a million-item batch. Every ``REPORT_S`` the worker's reporter thread calls
``report``: for each task it serves, the worker holding that task's lease (a Firestore document,
taken when free or lapsed, renewed by its holder) counts the task's held chunks (one count
aggregation) into the ``omni_worker_held_chunks`` gauge; every other worker sets 0. So the sum over
a pool's pods, which is what an HPA External metric reads, counts the backlog once, and a holder
that dies is replaced within ``LEASE_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import AlreadyExists, PreconditionFailed, translated
from schemas.chunks import CHUNKS, HELD
from schemas.eta import RATES_COLLECTION
from worker import metrics
from worker.errors import StoreUnavailable

logger = logging.getLogger(__name__)

LEASE_S = 45.0
"""How long a task's reporter lease lasts without renewal (a few report intervals)."""


class HeldBacklog:
    def __init__(self, client: Any, worker_id: str, tasks: Iterable[str], timeout_s: float = 10.0):
        self._client = client
        self._leases = client.collection(RATES_COLLECTION)
        self._me = worker_id or "worker"
        self._tasks = list(tasks)
        self._timeout_s = timeout_s

    def report(self) -> None:
        for task in self._tasks:
            try:
                count = self._count(task) if self._hold(task) else 0
            except (StoreUnavailable, PreconditionFailed, AlreadyExists) as exc:
                # Another worker took the lease at that moment (or Firestore is out): next time.
                logger.warning("held backlog of %s not reported: %s", task, exc)
                continue
            metrics.held_chunks(task, count)

    def _hold(self, task: str) -> bool:
        """Whether this worker holds (took, or renewed) the task's reporter lease."""
        ref = self._leases.document(f"_held_{task}")
        now = datetime.now(UTC)
        with translated(StoreUnavailable, "held-backlog lease"):
            snapshot = ref.get(timeout=self._timeout_s)
            lease = snapshot.to_dict() if snapshot.exists else None
            if lease and lease.get("holder") != self._me and lease.get("until", now) > now:
                return False
            taken = {"holder": self._me, "until": now + timedelta(seconds=LEASE_S), "at": now}
            if snapshot.exists:  # only if nobody wrote it since: two takers, one winner
                option = self._client.write_option(last_update_time=snapshot.update_time)
                ref.update(taken, option=option, timeout=self._timeout_s)
            else:
                ref.create(taken, timeout=self._timeout_s)
        return True

    def _count(self, task: str) -> int:
        query: Any = (
            self._client.collection_group(CHUNKS)
            .where(filter=FieldFilter("status", "==", HELD))
            .where(filter=FieldFilter("task", "==", task))
        )
        with translated(StoreUnavailable, "held chunks count"):
            return int(query.count().get(timeout=self._timeout_s)[0][0].value)
