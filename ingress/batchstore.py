"""Batch documents and their items' jobs in Firestore, as the ingress reads and writes them.

Creating a batch writes its document (``state: creating``), then its jobs in atomic batched writes
of up to ``CHUNK`` documents from ``WRITERS`` threads at once, each thread publishing its chunk's
messages as soon as the chunk is durable, and marks the batch ``accepted`` only when Pub/Sub
confirmed every message. Documents and messages are built as protobufs directly
(``ItemDocuments``, ``JobPublisher.publish_all``): through the clients' wrappers, Python alone
took ~40 s of CPU for 100,000 items on this machine.

Any failure on the way abandons the batch: it is marked cancelled (so no worker starts one of its
items) and its queued items are swept, and the client gets 503 and may retry.
Counts: ``schemas/batches.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from opentelemetry import context as otel_context

from ingress.itemdocs import ItemDocuments, chunks
from ingress.publisher import JobPublisher, PublishFailed
from ingress.store import AlreadyFinished, StoreUnavailable
from schemas import jobstate, tracing
from schemas.batches import COUNTED, COUNTERS, SHARDS, CountDeltas, counts_of, item_fields
from schemas.batches import batch_status as status_of_batch
from schemas.googleapi import UNAVAILABLE, bounded_retry, is_contention
from schemas.jobs import JobStatus, new_job_document, new_job_id
from schemas.messages import JobMessage

logger = logging.getLogger(__name__)

WRITERS = 4
"""Chunks written at once: Firestore answers each commit in tens of ms, so a few in flight keep
it busy while this process builds the next."""
PAGE = 1000
"""Jobs per page when a batch's results are read in order."""
SWEEP_PAGE = 400
"""Queued items cancelled per commit by a batch cancel (plus one counter write)."""
RETRY_PAGE = 200
"""Failed items re-queued per commit by a batch retry (two writes each, plus one counter)."""


class BatchExists(Exception):
    """A batch with this id exists already (an idempotent replay); ``doc`` is what it holds."""

    def __init__(self, doc: dict[str, Any]):
        super().__init__("batch exists")
        self.doc = doc


class BatchCancelled(Exception):
    """The batch was cancelled: it takes no retry."""


@dataclass(frozen=True)
class Batch:
    """A batch document and its counter shards, read together."""

    id: str
    doc: dict[str, Any]
    shards: list[dict[str, Any]]


class BatchStore:
    def __init__(
        self,
        client: firestore.Client,
        batches_collection: str,
        jobs_collection: str,
        publisher: JobPublisher,
        timeout_s: float,
        result_ttl_s: float,
    ):
        self._client = client
        self._batches = client.collection(batches_collection)
        self._jobs = client.collection(jobs_collection)
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self._result_ttl_s = result_ttl_s
        # Guards _sweeping, the batches whose cancel sweep runs in this process now.
        self._sweeps_lock = threading.Lock()
        self._sweeping: set[str] = set()

    # -- create --------------------------------------------------------------------------------

    def create(
        self,
        batch_id: str,
        tenant: str,
        task: str,
        inputs: list[dict[str, Any]],
        sizes: list[int],
        metadata: dict[str, str] | None,
        webhook: str | None = None,
    ) -> Batch:
        """Write the batch and one queued job per input, publish them all; the batch once every
        message is confirmed. ``StoreUnavailable`` or ``PublishFailed`` abandon it."""
        now = datetime.now(UTC)
        ref = self._batches.document(batch_id)
        total = len(inputs)
        doc = {
            "tenant": tenant,
            "task": task,
            "state": "creating",
            "created_at": now,
            "updated_at": now,
            "metadata": metadata or {},
            "counts": {"total": total, **{s: 0 for s in COUNTED}, "queued": total},
            "cancel_requested": False,
            "expire_at": now + timedelta(seconds=self._result_ttl_s),
            "trace_id": tracing.trace_id(),
        }
        if webhook is not None:
            doc["webhook"] = webhook
        try:
            ref.create(doc, retry=self._retry, timeout=self._timeout_s)
        except gexc.AlreadyExists:
            existing = ref.get(retry=self._retry, timeout=self._timeout_s)
            raise BatchExists(existing.to_dict() or {}) from None
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore batch create failed: {type(exc).__name__}") from exc

        template = new_job_document(
            tenant=tenant,
            task=task,
            input={},
            metadata=None,
            now=now,
            result_ttl_s=self._result_ttl_s,
        )
        # Every item continues the batch request's trace: the writer threads get its context.
        context = otel_context.get_current()
        template["trace_id"] = doc["trace_id"]
        documents = ItemDocuments(self._jobs, {**template, **item_fields(batch_id, ref.path, 0)})

        def write_chunk(bounds: tuple[int, int]) -> None:
            job_ids = [new_job_id() for _ in range(*bounds)]
            pbs = [
                documents.write(job_id, index, inputs[index])
                for job_id, index in zip(job_ids, range(*bounds), strict=True)
            ]
            # The chunk's first job must not exist yet: a retried commit whose first try landed
            # then fails whole, so the tenant's counter below is never incremented twice.
            pbs[0].current_document.exists = False
            writes = self._client.batch()
            writes._add_write_pbs(pbs)  # the protected hook WriteBatch offers for ready-made writes
            deltas = CountDeltas()
            deltas.created(tenant, len(job_ids))  # the tenant's jobs in flight, with the jobs
            deltas.write(writes, self._client, now)
            # Fresh uuid4 ids: AlreadyExists means an earlier try of this very commit landed.
            with contextlib.suppress(gexc.AlreadyExists):
                writes.commit(retry=self._retry, timeout=self._timeout_s)
            self._publisher.publish_all(
                [JobMessage(job_id=job_id, task=task, tenant=tenant) for job_id in job_ids],
                context,
            )

        try:
            with ThreadPoolExecutor(WRITERS, thread_name_prefix="batch-create") as pool:
                list(pool.map(write_chunk, chunks(sizes)))
            # ``webhook_pending`` only now: an abandoned batch (its client got a 503) never calls.
            accepted: dict[str, Any] = {"state": "accepted", "updated_at": datetime.now(UTC)}
            if webhook is not None:
                accepted["webhook_pending"] = True
            ref.update(
                accepted,
                retry=self._retry,
                timeout=self._timeout_s,
            )
        except PublishFailed:
            self.abandon(batch_id)
            raise
        except UNAVAILABLE as exc:
            self.abandon(batch_id)
            raise StoreUnavailable(f"Firestore batch write failed: {type(exc).__name__}") from exc
        doc.update(accepted)
        return Batch(batch_id, doc, [])

    def abandon(self, batch_id: str) -> None:
        """A batch whose creation failed: no item may run, the client was told 503."""
        try:
            self._batches.document(batch_id).update(
                {"state": "abandoned", "cancel_requested": True}, timeout=self._timeout_s
            )
        except gexc.GoogleAPICallError:
            logger.exception("could not mark an abandoned batch", extra={"batch_id": batch_id})
            return
        self.sweep_in_background(batch_id)

    # -- read ----------------------------------------------------------------------------------

    def get(self, batch_id: str) -> Batch | None:
        """The accepted batch with its counts, or None."""
        ref = self._batches.document(batch_id)
        shard_refs = [ref.collection(COUNTERS).document(str(i)) for i in range(SHARDS)]
        try:
            snapshots = list(
                self._client.get_all([ref, *shard_refs], retry=self._retry, timeout=self._timeout_s)
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore batch read failed: {type(exc).__name__}") from exc
        by_path = {s.reference.path: s for s in snapshots}
        main = by_path.get(ref.path)
        if main is None or not main.exists:
            return None
        doc = main.to_dict() or {}
        if doc.get("state") != "accepted":
            return None
        shards = [s.to_dict() or {} for s in snapshots if s.exists and s.reference.path != ref.path]
        return Batch(batch_id, doc, shards)

    def shards(self, batch_id: str) -> Any:
        """The counters subcollection, for a listener."""
        return self._batches.document(batch_id).collection(COUNTERS)

    def items(
        self, batch_id: str, status: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each item's latest job, in input order (optionally only those in ``status``), read a
        page at a time so that 100,000 items are never held at once."""
        query = self._jobs.where(filter=FieldFilter("batch_id", "==", batch_id)).where(
            filter=FieldFilter("superseded_by", "==", None)
        )
        if status is not None:
            query = query.where(filter=FieldFilter("status", "==", status))
        query = query.select(["batch_index", "status", "task", "result", "error"])
        query = query.order_by("batch_index").limit(PAGE)
        last: Any = None
        while True:
            page = query.start_after(last) if last is not None else query
            try:
                snapshots = list(page.stream(retry=self._retry, timeout=self._timeout_s))
            except UNAVAILABLE as exc:
                raise StoreUnavailable(
                    f"Firestore results read failed: {type(exc).__name__}"
                ) from exc
            for snapshot in snapshots:
                yield snapshot.id, snapshot.to_dict() or {}
            if len(snapshots) < PAGE:
                return
            last = snapshots[-1]

    def finished_since(self, batch_id: str, since: datetime) -> list[tuple[str, dict[str, Any]]]:
        """Items that finished at or after ``since`` (the end of an event stream's catch-up)."""
        query = self._finished_query(batch_id, since)
        try:
            return [(s.id, s.to_dict() or {}) for s in query.stream(timeout=self._timeout_s)]
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore items read failed: {type(exc).__name__}") from exc

    def _finished_query(self, batch_id: str, since: datetime) -> Any:
        return (
            self._jobs.where(filter=FieldFilter("batch_id", "==", batch_id))
            .where(filter=FieldFilter("finished_at", ">=", since))
            .select(["batch_index", "status", "task", "result", "error", "finished_at"])
        )

    def watch_finished(
        self, batch_id: str, since: datetime, callback: Callable[[list[Any]], None]
    ) -> Any:
        """A listener on items finishing from ``since`` on; ``callback`` gets changed snapshots."""

        def on_snapshot(_docs: Any, changes: Any, _read_time: Any) -> None:
            callback([change.document for change in changes if change.type.name != "REMOVED"])

        return self._finished_query(batch_id, since).on_snapshot(on_snapshot)

    # -- cancel --------------------------------------------------------------------------------

    def request_cancel(self, batch: Batch) -> Batch:
        """Record the cancel (from now on no worker starts an item of the batch) and start the
        sweep of its queued items; ``AlreadyFinished`` if nothing is in flight any more.

        Only the request that records the cancel starts a sweep: a repeated cancel (a client
        retrying, or fifty at once) is answered from the batch and starts nothing, so cancels
        cannot be used to pile up sweep threads."""
        batch_id = batch.id
        counts = counts_of(batch.doc, batch.shards)
        if counts.in_flight == 0:  # as for a job: a finished batch cannot be cancelled
            status = status_of_batch(counts, bool(batch.doc.get("cancel_requested")))
            raise AlreadyFinished({"status": status.value})
        if batch.doc.get("cancel_requested"):
            return batch  # a second cancel while the first one is under way: its answer
        now = datetime.now(UTC)
        try:
            self._batches.document(batch_id).update(
                {"cancel_requested": True, "cancelled_at": now, "updated_at": now},
                retry=self._retry,
                timeout=self._timeout_s,
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore batch cancel failed: {type(exc).__name__}") from exc
        batch.doc.update(cancel_requested=True, cancelled_at=now)
        self.sweep_in_background(batch_id)
        return batch

    def sweep_in_background(self, batch_id: str) -> None:
        """End the batch's queued items ``cancelled`` without holding up the request; at most
        one sweep of a batch runs in this process at a time (concurrent first cancels, an
        abandon during a cancel), whatever asks for it.

        Correctness does not depend on it: a worker that claims an item of a cancelled batch
        ends it ``cancelled`` itself. The sweep makes the counts show the cancel at once rather
        than as the backlog drains, and frees the workers from those messages."""
        with self._sweeps_lock:
            if batch_id in self._sweeping:
                return
            self._sweeping.add(batch_id)
        logger.info("batch cancel sweep started", extra={"batch_id": batch_id})
        threading.Thread(
            target=self._sweep_logged, args=(batch_id,), name="batch-cancel", daemon=True
        ).start()

    def _sweep_logged(self, batch_id: str) -> None:
        try:
            swept = self.sweep_cancelled(batch_id)
            logger.info("batch cancel swept", extra={"batch_id": batch_id, "cancelled": swept})
        except Exception:  # noqa: BLE001 - a background thread: log, the workers finish the job
            logger.exception("batch cancel sweep failed", extra={"batch_id": batch_id})
        finally:
            with self._sweeps_lock:
                self._sweeping.discard(batch_id)

    def sweep_cancelled(self, batch_id: str) -> int:
        """Cancel every queued item of the batch, a page at a time; returns how many."""
        query = (
            self._jobs.where(filter=FieldFilter("batch_id", "==", batch_id))
            .where(filter=FieldFilter("status", "==", JobStatus.QUEUED.value))
            .limit(SWEEP_PAGE)
        )
        swept = 0
        while snapshots := list(query.stream(retry=self._retry, timeout=self._timeout_s)):
            done = self._cancel_page(snapshots)
            if done == 0:
                return swept  # every one of them moved meanwhile and the page repeats: stop
            swept += done
        return swept

    def _cancel_page(self, snapshots: list[Any]) -> int:
        """Cancel a page of queued items in one commit, each fenced by its update time; if any
        moved meanwhile (a worker claimed it), each is decided in a transaction of its own."""
        now = datetime.now(UTC)
        writes = self._client.batch()
        deltas = CountDeltas()
        for snapshot in snapshots:
            writes.update(
                snapshot.reference,
                jobstate.terminal(JobStatus.CANCELLED, now, "batch-cancel", self._result_ttl_s),
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
            deltas.move(snapshot.to_dict(), JobStatus.CANCELLED)
        deltas.write(writes, self._client, now)
        try:
            writes.commit(retry=self._retry, timeout=self._timeout_s)
            return len(snapshots)
        except gexc.FailedPrecondition:
            return sum(self._cancel_one(s.reference) for s in snapshots)

    def _cancel_one(self, ref: Any) -> bool:
        @firestore.transactional
        def _cancel(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("status") != JobStatus.QUEUED.value:
                return False
            now = datetime.now(UTC)
            transaction.update(
                ref, jobstate.terminal(JobStatus.CANCELLED, now, "batch-cancel", self._result_ttl_s)
            )
            deltas = CountDeltas()
            deltas.move(doc, JobStatus.CANCELLED)
            deltas.write(transaction, self._client, now)
            return True

        try:
            done: bool = _cancel(self._client.transaction())
        except ValueError as exc:
            if not is_contention(exc):
                raise
            return False
        return done

    # -- retry ---------------------------------------------------------------------------------

    def retry_failed(self, batch: Batch) -> int:
        """Give each failed item a new queued job (the old one stays ``failed``, marked
        ``superseded_by`` the new one, in the same commit); returns how many were re-queued.

        A message that cannot be published leaves its job queued: the reconciler publishes
        jobs that stay queued, so the retry is not lost (the request still succeeds)."""
        if batch.doc.get("cancel_requested"):
            raise BatchCancelled(batch.id)
        query = (
            self._jobs.where(filter=FieldFilter("batch_id", "==", batch.id))
            .where(filter=FieldFilter("status", "==", JobStatus.FAILED.value))
            .where(filter=FieldFilter("superseded_by", "==", None))
            .limit(RETRY_PAGE)
        )
        requeued = 0
        try:
            while snapshots := list(query.stream(retry=self._retry, timeout=self._timeout_s)):
                done = self._retry_page(batch, snapshots)
                if not done:
                    break  # another retry superseded each of them first
                requeued += done
            changes: dict[str, Any] = {
                "updated_at": datetime.now(UTC),
                "expire_at": datetime.now(UTC) + timedelta(seconds=self._result_ttl_s),
            }
            if requeued and batch.doc.get("webhook"):
                # The batch will end again: its webhook is sent again then, as a new event.
                # Only now, once the items are queued: before, the batch still reads as ended.
                changes["webhook_pending"] = True
            self._batches.document(batch.id).update(
                changes, retry=self._retry, timeout=self._timeout_s
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore batch retry failed: {type(exc).__name__}") from exc
        return requeued

    def _retry_page(self, batch: Batch, snapshots: list[Any]) -> int:
        now = datetime.now(UTC)
        planned: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
        for snapshot in snapshots:
            old = snapshot.to_dict() or {}
            job_id = new_job_id()
            job = new_job_document(
                tenant=old["tenant"],
                task=old["task"],
                input=old["input"],
                metadata=old.get("metadata") or None,
                now=now,
                result_ttl_s=self._result_ttl_s,
            )
            job.update(item_fields(batch.id, old["batch_path"], int(old["batch_index"])))
            job["retry_of"] = snapshot.id
            planned.append((snapshot, job_id, job, old))
        try:
            self._commit_retries(planned, now)
            chosen = planned
        except gexc.FailedPrecondition:
            # Another retry got to some of them: one commit per item, keep those that land.
            chosen = []
            for plan in planned:
                try:
                    self._commit_retries([plan], now)
                    chosen.append(plan)
                except gexc.FailedPrecondition:
                    continue
        messages = [
            JobMessage(job_id=job_id, task=job["task"], tenant=job["tenant"])
            for _, job_id, job, _ in chosen
        ]
        try:
            self._publisher.publish_all(messages)
        except PublishFailed:
            logger.warning(
                "retried items not published; the reconciler will",
                extra={"batch_id": batch.id, "items": len(messages)},
            )
        return len(chosen)

    def _commit_retries(
        self, planned: list[tuple[Any, str, dict[str, Any], dict[str, Any]]], now: datetime
    ) -> None:
        writes = self._client.batch()
        deltas = CountDeltas()
        for snapshot, job_id, job, old in planned:
            writes.set(self._jobs.document(job_id), job)
            writes.update(
                snapshot.reference,
                {"superseded_by": job_id},
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
            deltas.move(old, JobStatus.QUEUED)  # the item: failed → queued again
        deltas.write(writes, self._client, now)
        writes.commit(retry=self._retry, timeout=self._timeout_s)
