"""One sweep: find work that no message will bring to a worker, and re-publish or fail it.

Work is left without a message when a publish failed (the job or part stays durable), when Pub/Sub
lost messages (an emulator restart; a message past its 7-day retention), or when a dead-lettered
one was held by an attempt that then died. Firestore knows every job and chunk, so a few queries
find them all:

- ``queued`` and unchanged for ``stale_after_s`` → re-published (again after 2×, 4×, ... that);
  still ``queued`` ``give_up_after_s`` after creation → ``failed`` / ``not_dispatched`` (a chunk:
  each of its items).
- ``running`` with a lease that lapsed ``stale_after_s`` ago (its worker died, and no redelivery
  came) → re-published.

Chunks are found by collection-group queries on ``chunks`` (every batch's at once). A ``pending``
chunk is never published: its request was not accepted, and its TTL removes it. A queued chunk of a
cancelled batch is not published either but ended ``cancelled`` here, so its batch's counts become
exact without a worker (the ingress's cancel sweep, or this one's, may have died half-way).

An **open batch** (``open: True``, taking parts) not closed by its ``open_expires_at`` is cancelled:
``cancel_requested``, no longer open (so no part is accepted any more), and its queued chunks end
``cancelled`` with their counts; a running chunk stops at its worker's next safe point.

A batch with ``held`` chunks but a short window is topped up (``reconciler/topup.py``). A
duplicate message is harmless: claims are fenced. The queries need composite indexes
(``firestore.indexes.json``).

Google API errors are translated (``common/googleapi.py``): Firestore's transient ones are
``StoreUnavailable``, a publish that did not land ``PublishFailed``. Either, or a final
``BackendError``, skips the one job, chunk or batch it happened to (logged) and the sweep goes on;
the next sweep decides it again. A query that fails fails the sweep (retried at the next interval).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import (
    BackendError,
    PreconditionFailed,
    run_transaction,
    translated,
)
from common.publishing import publish_one
from reconciler.settings import BATCH_LIMIT, ReconcilerSettings
from reconciler.topup import TopUp
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.chunks import CHUNKS, END_FIELDS, NOT_STARTED, ChunkMessage, end_unfinished
from schemas.jobs import JobStatus
from schemas.messages import INTERACTIVE, JobMessage, Topics, UnknownTask

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0
SWEEP_PAGE = 200
"""Chunks of a cancelled batch ended per commit (each one write, beside two counter writes)."""
CHUNK_FIELDS = [*END_FIELDS, "task", "batch_id", "created_at", "dispatched_at", "dispatch_count"]
"""What a sweep reads of a chunk: never its inputs (up to ~1 MB a chunk) or results."""
_UNSENT = "could not be handed to a worker"
NOT_DISPATCHED = {"code": "not_dispatched", "message": f"the job {_UNSENT}; submit it again"}
NOT_DISPATCHED_ITEM = {"code": "not_dispatched", "message": f"the item {_UNSENT}; retry the batch"}


class StoreUnavailable(RuntimeError):
    """Firestore did not answer in time, cannot serve now, or a transaction stayed contended."""


class PublishFailed(RuntimeError):
    """A message's publish did not land (Pub/Sub refused it, or did not answer in time)."""


SKIPPED = (StoreUnavailable, PublishFailed, BackendError, UnknownTask)
"""What skips one job, chunk or open batch for this sweep (module docstring)."""


@dataclass
class SweepReport:
    republished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    """Chunks ended ``cancelled`` (their batch was cancelled, or expired open)."""
    expired: list[str] = field(default_factory=list)
    """Open batches cancelled because they were not closed in time."""
    released: list[str] = field(default_factory=list)  # held chunks released by the top-up

    def as_dict(self) -> dict[str, int]:
        return {
            "republished": len(self.republished),
            "failed": len(self.failed),
            "cancelled": len(self.cancelled),
            "expired": len(self.expired),
            "released": len(self.released),
        }


class Reconciler:
    def __init__(
        self,
        settings: ReconcilerSettings,
        firestore_client: firestore.Client,
        publisher: pubsub_v1.PublisherClient,
    ):
        self._settings = settings
        self._client = firestore_client
        self._jobs = firestore_client.collection(settings.jobs_collection)
        self._batches = firestore_client.collection(settings.batches_collection)
        self._publisher = publisher
        self._topics = Topics(settings.project, settings.jobs_topic)
        self._top_up = TopUp(
            firestore_client, publisher, self._topics, StoreUnavailable, PublishFailed, TIMEOUT_S
        )

    def sweep(self, now: datetime | None = None) -> SweepReport:
        now = now or datetime.now(UTC)
        stale = now - timedelta(seconds=self._settings.stale_after_s)
        report = SweepReport()
        # Expired open batches first: their queued chunks end here rather than being published.
        self._expire_open_batches(now, report)
        jobs = [
            *self._query(self._jobs, JobStatus.QUEUED, "updated_at", stale),
            *self._query(self._jobs, JobStatus.RUNNING, "lease_expires_at", stale),
        ]
        chunks_group = self._client.collection_group(CHUNKS)
        chunks = [
            *self._query(chunks_group, JobStatus.QUEUED, "updated_at", stale, CHUNK_FIELDS),
            *self._query(chunks_group, JobStatus.RUNNING, "lease_expires_at", stale, CHUNK_FIELDS),
        ]
        # Batch path → whether a cancel was asked (None: no such batch), read once a sweep.
        cancelled: dict[str, bool | None] = {}
        for snapshot, is_chunk in [*((s, False) for s in jobs), *((s, True) for s in chunks)]:
            doc = snapshot.to_dict() or {}
            name = _name(snapshot, is_chunk)
            try:
                if is_chunk:
                    self._reconcile_chunk(snapshot, doc, now, report, cancelled)
                else:
                    self._reconcile(snapshot, doc, now, report, None)
            except SKIPPED as exc:
                logger.warning(
                    "could not reconcile %s: %s", name, exc, extra=_label(snapshot, is_chunk)
                )
        for batch_path, chunk in self._top_up.batches_with_held_chunks():
            try:
                report.released.extend(self._top_up.top_up(batch_path, chunk))
            except SKIPPED as exc:
                logger.warning("could not top up %s: %s", batch_path, exc)
        if any(report.as_dict().values()):
            logger.info("sweep done", extra=report.as_dict())
        return report

    def _query(
        self,
        source: Any,
        status: JobStatus,
        field_name: str,
        before: datetime,
        fields: list[str] | None = None,
    ) -> list[Any]:
        query = (
            source.where(filter=FieldFilter("status", "==", status.value))
            .where(filter=FieldFilter(field_name, "<", before))
            .limit(BATCH_LIMIT)
        )
        if fields is not None:
            query = query.select(fields)
        with translated(StoreUnavailable, "sweep query"):
            return list(query.stream(timeout=TIMEOUT_S))

    # -- jobs and chunks without a message -----------------------------------------------------

    def _reconcile_chunk(
        self,
        snapshot: Any,
        doc: dict[str, Any],
        now: datetime,
        report: SweepReport,
        cancelled: dict[str, bool | None],
    ) -> None:
        batch_ref = snapshot.reference.parent.parent
        if batch_ref.path not in cancelled:
            with translated(StoreUnavailable, "batch read"):
                batch = batch_ref.get(timeout=TIMEOUT_S)
            cancelled[batch_ref.path] = (
                bool((batch.to_dict() or {}).get("cancel_requested")) if batch.exists else None
            )
        asked = cancelled[batch_ref.path]
        if asked is None:
            return  # its batch is gone (expired): the chunk's own TTL removes it
        if asked and doc.get("status") == JobStatus.QUEUED.value:
            if self._end_chunk(snapshot.reference, JobStatus.CANCELLED, None, now):
                report.cancelled.append(_name(snapshot, True))
            return
        message = ChunkMessage(
            batch_id=str(doc.get("batch_id") or batch_ref.id),
            chunk_id=snapshot.id,
            task=doc["task"],
            tenant=doc["tenant"],
        )
        self._reconcile(snapshot, doc, now, report, message)

    def _reconcile(
        self,
        snapshot: Any,
        doc: dict[str, Any],
        now: datetime,
        report: SweepReport,
        chunk: ChunkMessage | None,
    ) -> None:
        """Give up on it, or re-publish its message (``chunk``'s, or the job's)."""
        name = _name(snapshot, chunk is not None)
        created = doc.get("created_at") or now
        if doc.get("status") == JobStatus.QUEUED.value and now - created > timedelta(
            seconds=self._settings.give_up_after_s
        ):
            if chunk is not None:
                given_up = self._end_chunk(
                    snapshot.reference, JobStatus.FAILED, NOT_DISPATCHED_ITEM, now
                )
            else:
                given_up = self._give_up(snapshot.id, doc, snapshot.update_time, now)
            if given_up:
                logger.warning(
                    "gave up on work that stayed queued", extra=_label(snapshot, chunk is not None)
                )
                report.failed.append(name)
            return
        count = int(doc.get("dispatch_count") or 0)
        last = doc.get("dispatched_at")
        wait = timedelta(seconds=self._settings.stale_after_s * 2**count)
        if last is not None and now - last < wait:
            return
        message = chunk or JobMessage(
            job_id=snapshot.id,
            task=doc["task"],
            tenant=doc["tenant"],
            priority=doc.get("priority") or INTERACTIVE,
        )
        publish_one(self._publisher, self._topics, message, TIMEOUT_S, PublishFailed, "re-publish")
        # No precondition: a worker may claim it meanwhile, and these two fields are the
        # reconciler's own; losing a count to a race only re-publishes once more.
        with translated(StoreUnavailable, "dispatch count"):
            snapshot.reference.update(
                {"dispatched_at": now, "dispatch_count": firestore.Increment(1)}, timeout=TIMEOUT_S
            )
        logger.warning(
            "re-published a %s %s no message was carrying",
            doc.get("status"),
            "chunk" if chunk is not None else "job",
            extra={**_label(snapshot, chunk is not None), "dispatch_count": count + 1},
        )
        report.republished.append(name)

    def _give_up(
        self, job_id: str, doc: dict[str, Any], update_time: datetime, now: datetime
    ) -> bool:
        writes = self._client.batch()
        writes.update(
            self._jobs.document(job_id),
            jobstate.terminal(
                JobStatus.FAILED,
                now,
                "reconciler",
                self._settings.result_ttl_s,
                error=NOT_DISPATCHED,
            ),
            option=self._client.write_option(last_update_time=update_time),
        )
        deltas = CountDeltas()
        deltas.move(doc, JobStatus.FAILED)  # an item of a batch: counted in the same commit
        deltas.write(writes, self._client, now)
        try:
            with translated(StoreUnavailable, "give-up commit"):
                writes.commit(timeout=TIMEOUT_S)
        except PreconditionFailed:
            return False  # it moved meanwhile (claimed, cancelled): leave it
        return True

    def _end_chunk(
        self, ref: Any, to: JobStatus, error: dict[str, str] | None, now: datetime
    ) -> bool:
        """End a chunk that is still queued ``to`` (``failed`` with ``error``, or ``cancelled``),
        its queued items with it, in a transaction; False if it is not queued any more, or if the
        transaction could not commit (contended past its tries, Firestore down): the chunk stays
        queued, and the next sweep decides."""
        ttl = self._settings.result_ttl_s

        def _end(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(field_paths=END_FIELDS, transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("status") not in NOT_STARTED:
                return False
            deltas = CountDeltas()
            items = end_unfinished(doc, to, deltas, error)
            fields = {**items, **({"error": error} if error is not None else {})}
            transaction.update(ref, jobstate.terminal(to, now, "reconciler", ttl, **fields))
            deltas.write(transaction, self._client, now)
            return True

        try:
            ended: bool = run_transaction(
                self._client, _end, unavailable=StoreUnavailable, what="chunk end"
            )
        except StoreUnavailable as exc:
            logger.warning(
                "could not end a queued chunk: %s",
                exc,
                extra={"batch_id": ref.parent.parent.id, "chunk_id": ref.id},
            )
            return False  # a worker is claiming it right now, or Firestore is down
        return ended

    # -- open batches never closed -------------------------------------------------------------

    def _expire_open_batches(self, now: datetime, report: SweepReport) -> None:
        query = (
            self._batches.where(filter=FieldFilter("open", "==", True))
            .where(filter=FieldFilter("open_expires_at", "<", now))
            .limit(BATCH_LIMIT)
        )
        with translated(StoreUnavailable, "open batches query"):
            snapshots = list(query.stream(timeout=TIMEOUT_S))
        for snapshot in snapshots:
            try:
                if not self._expire(snapshot, now):
                    continue
                report.expired.append(snapshot.id)
                swept = self._cancel_queued_chunks(snapshot.reference, now)
                report.cancelled.extend(swept)
            except SKIPPED as exc:
                logger.warning(
                    "could not expire an open batch: %s", exc, extra={"batch_id": snapshot.id}
                )

    def _expire(self, snapshot: Any, now: datetime) -> bool:
        """Cancel the open batch and close it to parts, unless it changed since it was read (a
        part or a close came in at that moment: the next sweep looks again)."""
        changes = {"open": False, "cancel_requested": True, "cancelled_at": now, "updated_at": now}
        try:
            with translated(StoreUnavailable, "open batch cancel"):
                snapshot.reference.update(
                    changes,
                    option=self._client.write_option(last_update_time=snapshot.update_time),
                    timeout=TIMEOUT_S,
                )
        except PreconditionFailed:
            return False
        logger.warning(
            "cancelled an open batch not closed in time",
            extra={
                "batch_id": snapshot.id,
                "open_expires_at": str(snapshot.get("open_expires_at")),
            },
        )
        return True

    def _cancel_queued_chunks(self, batch_ref: Any, now: datetime) -> list[str]:
        """End every queued chunk of a cancelled batch, a page a commit; their names."""
        query = (
            batch_ref.collection(CHUNKS)
            .where(filter=FieldFilter("status", "in", NOT_STARTED))
            .select(END_FIELDS)
            .limit(SWEEP_PAGE)
        )
        swept: list[str] = []
        while snapshots := self._page(query):
            done = self._cancel_page(snapshots, now)
            if not done:
                break  # each of them moved meanwhile and the page would repeat
            swept.extend(done)
        return swept

    def _page(self, query: Any) -> list[Any]:
        with translated(StoreUnavailable, "queued chunks query"):
            return list(query.stream(timeout=TIMEOUT_S))

    def _cancel_page(self, snapshots: list[Any], now: datetime) -> list[str]:
        """One commit, each chunk fenced by its update time; if any moved meanwhile (a worker
        claimed it), each is decided in a transaction of its own."""
        writes = self._client.batch()
        deltas = CountDeltas()
        ttl = self._settings.result_ttl_s
        for snapshot in snapshots:
            items = end_unfinished(snapshot.to_dict() or {}, JobStatus.CANCELLED, deltas)
            writes.update(
                snapshot.reference,
                jobstate.terminal(JobStatus.CANCELLED, now, "reconciler", ttl, **items),
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
        deltas.write(writes, self._client, now)
        try:
            with translated(StoreUnavailable, "cancel commit"):
                writes.commit(timeout=TIMEOUT_S)
            return [_name(s, True) for s in snapshots]
        except PreconditionFailed:
            return [
                _name(s, True)
                for s in snapshots
                if self._end_chunk(s.reference, JobStatus.CANCELLED, None, now)
            ]


def _name(snapshot: Any, is_chunk: bool) -> str:
    """How a report and the logs name a job (its id) or a chunk (``BATCH/CHUNK``)."""
    if is_chunk:
        return f"{snapshot.reference.parent.parent.id}/{snapshot.id}"
    return str(snapshot.id)


def _label(snapshot: Any, is_chunk: bool) -> dict[str, str]:
    """The fields a log line names a job or a chunk by, as the other services' lines do."""
    if is_chunk:
        return {"batch_id": snapshot.reference.parent.parent.id, "chunk_id": snapshot.id}
    return {"job_id": str(snapshot.id)}
