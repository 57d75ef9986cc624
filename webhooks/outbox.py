"""The sender's side of Firestore: finding ended jobs and batches, and the delivery ledger.

**Finding what ended.** A job or batch with a webhook carries ``webhook_pending: true`` from its
creation (a batch: from its acceptance). No writer that ends a job needs to know about webhooks:
the sender asks for pending jobs whose status is terminal (two equality filters, which Firestore
serves by merging single-field indexes; ``firestore.indexes.json`` adds a composite one anyway),
and for pending batches, whose counts (the batch document and its counter shards: a batch's items
live in chunks, but no item is read here) it reads at most every ``batch_check_s``; an open batch
(still taking parts) has not ended, whatever its counts. It takes each into the ledger in one
atomic commit that creates the ledger document and clears ``webhook_pending`` (conditioned on the
document's update time), so two senders cannot both take one in, and nothing is lost between the
job's end and the first attempt: whatever the sender's crashes, the job stays pending until that
commit.

**The ledger** (``webhook_deliveries/<kind>-<id>``) is a small state machine,
``schemas/ledgerstate.py`` (its diagram and rules there), every move in a transaction here (a
claim, an attempt's outcome) or in the ingress (a redelivery): read, ask ``ledgerstate``, write.
``next_at`` is when it is due (pending) or when a claim's lease runs out (delivering: a sender
that died mid-attempt is replaced after ``lease_s``). Only the claim holding ``lease`` may record
the attempt's outcome.

**Firestore errors** are translated (``common/googleapi.py``): a transient one, or a transaction
still contended after its tries, is ``StoreUnavailable``, which fails the look or the attempt's
record (``webhooks/sender.py`` logs it and goes on): nothing is lost, since a job stays
``webhook_pending`` until its take-in commits and an unrecorded attempt's lease runs out and it is
claimed again (at least once).

**Finding what is due**, two bounded queries, each reading only the ``tenant`` and ``next_at``
fields of what it returns: ``due`` (``next_at <= now`` by ``next_at``, a limit: the head of the
queue, every tenant's, a ledger without a tenant included) and ``due_of`` (``tenant == T and
next_at <= now`` by ``next_at``, a limit of T's free slots: the composite index ``(tenant,
next_at)``). The sender asks ``due_of`` only when the head comes back full, and for a bounded
number of tenants a look (``webhooks/fairness.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import AlreadyExists, PreconditionFailed, run_transaction, translated
from schemas import ledgerstate
from schemas.batches import COUNTERS, Batch, BatchStatus
from schemas.jobs import TERMINAL_STATUSES, Job
from schemas.webhooks import delivery_key
from webhooks.delivery import Outcome
from webhooks.fairness import Due
from webhooks.settings import SenderSettings

logger = logging.getLogger(__name__)

DISCOVER_LIMIT = 200
"""Ended jobs (and pending batches) taken in per look."""
FORGET_AFTER_S = 600.0
"""A running batch's next-look time is forgotten this long after it was due, seconds."""
TIMEOUT_S = 10.0
"""Seconds one Firestore call may take."""
KEEP_S = 7 * 24 * 3600.0
"""How long a ledger is kept when its resource has no ``expire_at`` to follow, seconds."""


class StoreUnavailable(RuntimeError):
    """Firestore did not answer in time, cannot serve now, or a transaction stayed contended."""


@dataclass(frozen=True)
class Claimed:
    """An attempt this sender holds: the ledger as it was, and the token that fences it."""

    key: str
    doc: dict[str, Any]
    token: str

    @property
    def attempt(self) -> int:
        return int(self.doc.get("attempt_count") or 0) + 1


class Outbox:
    def __init__(self, client: firestore.Client, settings: SenderSettings):
        self._client = client
        self._settings = settings
        self._jobs = client.collection(settings.jobs_collection)
        self._batches = client.collection(settings.batches_collection)
        self._deliveries = client.collection(settings.deliveries_collection)
        self._batch_checked: dict[str, float] = {}
        """Batch id → monotonic time of its next look (only the sender's loop thread uses it)."""
        self._batch_cursor: Any = None
        """The last pending batch looked at: each look goes on from there, so that more than
        ``DISCOVER_LIMIT`` running batches cannot hide one that ended."""

    # -- finding what ended --------------------------------------------------------------------

    def discover(self, now: datetime) -> int:
        """Take every newly ended job and batch with a webhook into the ledger; how many."""
        return self._discover_jobs(now) + self._discover_batches(now)

    def _discover_jobs(self, now: datetime) -> int:
        query = (
            self._jobs.where(filter=FieldFilter("webhook_pending", "==", True))
            .where(filter=FieldFilter("status", "in", [s.value for s in TERMINAL_STATUSES]))
            .limit(DISCOVER_LIMIT)
        )
        with translated(StoreUnavailable, "ended jobs query"):
            snapshots = list(query.stream(timeout=TIMEOUT_S))
        taken = 0
        for snapshot in snapshots:
            doc = snapshot.to_dict() or {}
            taken += self._take_in("job", snapshot, doc, str(doc["status"]), now)
        return taken

    def _discover_batches(self, now: datetime) -> int:
        query = (
            self._batches.where(filter=FieldFilter("webhook_pending", "==", True))
            .order_by("__name__")
            .limit(DISCOVER_LIMIT)
        )
        if self._batch_cursor is not None:
            query = query.start_after(self._batch_cursor)
        with translated(StoreUnavailable, "pending batches query"):
            snapshots = list(query.stream(timeout=TIMEOUT_S))
        # A short page is the end: the next look starts from the first pending batch again.
        self._batch_cursor = snapshots[-1] if len(snapshots) == DISCOVER_LIMIT else None
        forget_before = time.monotonic() - FORGET_AFTER_S
        for batch_id, due in list(self._batch_checked.items()):
            if due < forget_before:  # taken in by another sender, or gone: forget it
                del self._batch_checked[batch_id]
        taken = 0
        for snapshot in snapshots:
            if self._batch_checked.get(snapshot.id, 0.0) > time.monotonic():
                continue
            doc = snapshot.to_dict() or {}
            with translated(StoreUnavailable, "batch counters read"):
                shards = [
                    s.to_dict() or {} for s in snapshot.reference.collection(COUNTERS).stream()
                ]
            status = Batch.from_documents(snapshot.id, doc, shards).status
            if status in (BatchStatus.RUNNING, BatchStatus.OPEN):  # not ended: look again later
                self._batch_checked[snapshot.id] = time.monotonic() + self._settings.batch_check_s
                continue
            self._batch_checked.pop(snapshot.id, None)
            taken += self._take_in("batch", snapshot, doc, status.value, now)
        return taken

    def _take_in(
        self, kind: str, snapshot: Any, doc: dict[str, Any], status: str, now: datetime
    ) -> int:
        expire_at = doc.get("expire_at") or now + timedelta(seconds=KEEP_S)
        ledger = ledgerstate.opened(
            kind, snapshot.id, doc.get("tenant"), doc.get("webhook"), status, now, expire_at
        )
        writes = self._client.batch()
        writes.update(
            snapshot.reference,
            {"webhook_pending": False},
            option=self._client.write_option(last_update_time=snapshot.update_time),
        )
        ref = self._deliveries.document(delivery_key(kind, snapshot.id))
        previous = None
        if kind == "batch":
            with translated(StoreUnavailable, "ledger read"):
                previous = ref.get(timeout=TIMEOUT_S)
        if previous is not None and previous.exists:
            # A retried batch ended again: a new event (its own webhook-id) in the same ledger,
            # replacing whatever was left of the previous one's attempts.
            writes.update(
                ref,
                ledgerstate.reopened(previous.to_dict() or {}, ledger),
                option=self._client.write_option(last_update_time=previous.update_time),
            )
        else:
            writes.create(ref, ledger)
        try:
            with translated(StoreUnavailable, "take-in commit"):
                writes.commit(timeout=TIMEOUT_S)
        except (PreconditionFailed, AlreadyExists):
            return 0  # another sender took it in, or it changed since the query: next look
        logger.info(
            "webhook due",
            extra={f"{kind}_id": snapshot.id, "event": ledger["event"]},
        )
        return 1

    # -- the ledger ------------------------------------------------------------------------------

    def due(self, now: datetime, limit: int) -> list[Due]:
        """Attempts that are due (or whose sender's lease ran out), oldest first, every tenant's:
        the head of the queue. One range on ``next_at`` (its single-field index)."""
        query = self._deliveries.where(filter=FieldFilter("next_at", "<=", now))
        return self._due(query, limit)

    def due_of(self, tenant: str, now: datetime, limit: int) -> list[Due]:
        """``tenant``'s due attempts, oldest first: an equality on ``tenant`` and a range on
        ``next_at``, served by the composite index ``(tenant, next_at)`` in
        ``firestore.indexes.json``, so it reads only what it returns."""
        query = self._deliveries.where(filter=FieldFilter("tenant", "==", tenant)).where(
            filter=FieldFilter("next_at", "<=", now)
        )
        return self._due(query, limit)

    def _due(self, query: Any, limit: int) -> list[Due]:
        # Only the two fields the choice needs: the claim reads the whole ledger anyway.
        query = query.order_by("next_at").limit(limit).select(["tenant", "next_at"])
        with translated(StoreUnavailable, "due query"):
            snapshots = list(query.stream(timeout=TIMEOUT_S))
        found = []
        for snapshot in snapshots:
            doc = snapshot.to_dict() or {}
            tenant = doc.get("tenant")  # None, or no field at all: a group of its own
            group = tenant if isinstance(tenant, str) else None
            found.append(Due(snapshot.id, group, doc["next_at"]))
        return found

    def claim(self, key: str, now: datetime) -> Claimed | None:
        """Hold the attempt for ``lease_s``; None if it is not due (any more). A claim still
        contended after its tries (or Firestore down) raises ``StoreUnavailable``: the look fails
        and the next one tries again."""
        ref = self._deliveries.document(key)
        lease_s = self._settings.lease_s

        def _claim(transaction: firestore.Transaction) -> Claimed | None:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            move = ledgerstate.claim(doc, now, lease_s)
            if isinstance(move, ledgerstate.Refused):
                return None
            assert doc is not None
            transaction.update(ref, move.changes)
            return Claimed(key, doc, move.token)

        claimed: Claimed | None = run_transaction(
            self._client, _claim, unavailable=StoreUnavailable, what="ledger claim"
        )
        return claimed

    def record(self, claimed: Claimed, outcome: Outcome, now: datetime) -> str | None:
        """Write the attempt and the next state; None if this claim lost its lease meanwhile.
        ``StoreUnavailable`` when it could not be written: the lease runs out and the attempt is
        sent again (at least once)."""
        ref = self._deliveries.document(claimed.key)
        backoff = self._settings.backoff_s

        def _record(transaction: firestore.Transaction) -> str | None:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            move = ledgerstate.recorded(doc, claimed.token, outcome, now, backoff)
            if isinstance(move, ledgerstate.Refused):
                return None
            transaction.update(ref, move.changes)
            return move.state.value

        outcome_state: str | None = run_transaction(
            self._client, _record, unavailable=StoreUnavailable, what="attempt record"
        )
        return outcome_state

    def payload(self, claimed: Claimed, now: datetime) -> dict[str, Any] | None:
        """The event's body: the resource as ``GET`` answers it now; None if it is gone (expired
        by its TTL) or no longer the tenant's."""
        kind, resource_id = claimed.doc["kind"], claimed.doc["resource_id"]
        if kind == "job":
            with translated(StoreUnavailable, "job read"):
                snapshot = self._jobs.document(resource_id).get(timeout=TIMEOUT_S)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != claimed.doc.get("tenant"):
                return None
            data = Job.from_document(resource_id, doc).to_json_dict()
        else:
            ref = self._batches.document(resource_id)
            with translated(StoreUnavailable, "batch read"):
                snapshot = ref.get(timeout=TIMEOUT_S)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != claimed.doc.get("tenant"):
                return None
            with translated(StoreUnavailable, "batch counters read"):
                shards = [s.to_dict() or {} for s in ref.collection(COUNTERS).stream()]
            data = Batch.from_documents(resource_id, doc, shards).to_json_dict()
        return {"type": claimed.doc["event"], "timestamp": now.isoformat(), "data": data}
