"""A batch cancel's sweep: every queued chunk of the batch ends ``cancelled``, in the background.

    queued chunk, items "qqqq"  ──one commit per page, each chunk fenced──▶  cancelled, "cccc",
                                                                          done_at, counts moved

Correctness does not depend on it: a worker that claims a queued chunk of a cancelled batch ends
it ``cancelled`` itself, and a running chunk stops at its next safe point. The sweep makes the
counts show the cancel at once rather than as the backlog drains, and frees the workers from those
messages. At most one sweep of a batch runs in a process at a time, whatever asks for it, at most
``TENANT_SWEEPS`` of one tenant and ``SWEEPS`` in all: a cancel past them is left to the workers
(and the reconciler), so no tenant's cancels hold the process's threads and Firestore writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import PreconditionFailed, bounded_retry, run_transaction, translated
from ingress.errors import StoreUnavailable
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.chunks import END_FIELDS, NOT_STARTED, end_unfinished
from schemas.jobs import JobStatus

logger = logging.getLogger(__name__)

SWEEP_PAGE = 200
"""Queued chunks cancelled per commit (plus one counter write each way)."""
SWEEPS = 8
"""Sweeps running at once in a process."""
TENANT_SWEEPS = 2
"""Sweeps of one tenant's batches running at once in a process."""


class CancelSweeper:
    def __init__(
        self,
        client: firestore.Client,
        chunks: Callable[[str], Any],
        timeout_s: float,
        result_ttl_s: float,
    ):
        self._client = client
        self._chunks = chunks
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self._result_ttl_s = result_ttl_s
        # Guards _sweeping: batch → tenant, the sweeps running in this process now.
        self._sweeps_lock = threading.Lock()
        self._sweeping: dict[str, str] = {}

    def start(self, batch_id: str, tenant: str) -> bool:
        """Sweep the batch in a thread of its own, unless one sweeps it already or the caps
        are reached (the workers then end its queued chunks as their messages come); whether
        a sweep started."""
        with self._sweeps_lock:
            if batch_id in self._sweeping:
                return False
            theirs = sum(1 for owner in self._sweeping.values() if owner == tenant)
            if len(self._sweeping) >= SWEEPS or theirs >= TENANT_SWEEPS:
                logger.info("batch cancel sweep left to the workers", extra={"batch_id": batch_id})
                return False
            self._sweeping[batch_id] = tenant
        logger.info("batch cancel sweep started", extra={"batch_id": batch_id})
        threading.Thread(
            target=self._sweep_logged, args=(batch_id,), name="batch-cancel", daemon=True
        ).start()
        return True

    def _sweep_logged(self, batch_id: str) -> None:
        try:
            swept = self.sweep_cancelled(batch_id)
            logger.info("batch cancel swept", extra={"batch_id": batch_id, "cancelled": swept})
        except Exception:  # noqa: BLE001 - a background thread: log, the workers end the rest
            logger.exception("batch cancel sweep failed", extra={"batch_id": batch_id})
        finally:
            with self._sweeps_lock:
                self._sweeping.pop(batch_id, None)

    def sweep_cancelled(self, batch_id: str) -> int:
        """Cancel every queued chunk of the batch, a page at a time; returns how many."""
        query = (
            self._chunks(batch_id)
            .where(filter=FieldFilter("status", "in", NOT_STARTED))
            .select(END_FIELDS)
            .limit(SWEEP_PAGE)
        )
        swept = 0
        while snapshots := self._read(query):
            done = self._cancel_page(snapshots)
            if done == 0:
                return swept  # every one of them moved meanwhile and the page repeats: stop
            swept += done
        return swept

    def _read(self, query: Any) -> list[Any]:
        with translated(StoreUnavailable, "chunks read"):
            return list(query.stream(retry=self._retry, timeout=self._timeout_s))

    def _cancel_page(self, snapshots: list[Any]) -> int:
        """Cancel a page of queued chunks in one commit, each fenced by its update time; if any
        moved meanwhile (a worker claimed it), each is decided in a transaction of its own."""
        now = datetime.now(UTC)
        writes = self._client.batch()
        deltas = CountDeltas()
        for snapshot in snapshots:
            doc = snapshot.to_dict() or {}
            writes.update(
                snapshot.reference,
                self._cancelled(doc, now, deltas),
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
        deltas.write(writes, self._client, now)
        try:
            with translated(StoreUnavailable, "cancel"):
                writes.commit(retry=self._retry, timeout=self._timeout_s)
                return len(snapshots)
        except PreconditionFailed:
            return sum(self._cancel_one(s.reference) for s in snapshots)

    def _cancelled(self, doc: dict[str, Any], now: datetime, deltas: CountDeltas) -> dict[str, Any]:
        """The changes that end a queued chunk ``cancelled``, its counts moved into ``deltas``:
        every item not ended (queued, or running in an attempt released since) is cancelled."""
        ended = end_unfinished(doc, JobStatus.CANCELLED, deltas)
        return jobstate.terminal(
            JobStatus.CANCELLED, now, "batch-cancel", self._result_ttl_s, **ended
        )

    def _cancel_one(self, ref: Any) -> bool:
        def _cancel(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(field_paths=END_FIELDS, transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("status") not in NOT_STARTED:
                return False
            now = datetime.now(UTC)
            deltas = CountDeltas()
            transaction.update(ref, self._cancelled(doc, now, deltas))
            deltas.write(transaction, self._client, now)
            return True

        try:
            done: bool = run_transaction(
                self._client, _cancel, unavailable=StoreUnavailable, what="chunk cancel"
            )
        except StoreUnavailable:
            # Contended past its tries (a worker is claiming it right now) or Firestore is
            # down: skip it. A worker that claims a chunk of a cancelled batch ends it, and an
            # outage stops the sweep at its next read.
            return False
        return done
