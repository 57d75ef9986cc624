"""Job documents in Firestore, as the ingress reads and writes them.

Every Google error is translated here into the ingress's own (``ingress/errors.py``), so views deal
in one exception tree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import (
    AlreadyExists,
    BackendError,
    Invalid,
    PreconditionFailed,
    bounded_retry,
    run_transaction,
    translated,
)
from ingress.errors import AlreadyFinished, StoreRejected, StoreUnavailable
from ingress.pages import Cursor, newest_first
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from schemas.quota import COUNTED_FLAG

logger = logging.getLogger(__name__)


class JobStore:
    def __init__(
        self, client: firestore.Client, collection: str, timeout_s: float, result_ttl_s: float
    ):
        self._client = client
        self._jobs = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self._result_ttl_s = result_ttl_s

    def create(self, job_id: str, doc: dict[str, Any]) -> datetime:
        """Write a new job document; returns its update time (the precondition for later).

        The tenant's jobs-in-flight counter moves in the same commit (``schemas/quota.py``),
        unless the job is not counted (one answered from the result cache is born finished)."""
        writes = self._client.batch()
        writes.create(self._jobs.document(job_id), doc)
        if doc.get(COUNTED_FLAG):
            deltas = CountDeltas()
            deltas.created(doc["tenant"])
            deltas.write(writes, self._client, datetime.now(UTC))
        try:
            with translated(StoreUnavailable, "create"):
                result = writes.commit(retry=self._retry, timeout=self._timeout_s)[0]
        except AlreadyExists:
            # Ids are uuid4: the document exists because an earlier try of this very create
            # landed and only its answer was lost to the client's retry. It is ours.
            with translated(StoreUnavailable, "read"):
                snapshot = self._jobs.document(job_id).get(
                    retry=self._retry, timeout=self._timeout_s
                )
            return snapshot.update_time  # type: ignore[no-any-return]
        except Invalid as exc:
            raise StoreRejected(str(exc)) from exc
        return result.update_time  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with translated(StoreUnavailable, "read"):
            snapshot = self._jobs.document(job_id).get(retry=self._retry, timeout=self._timeout_s)
        return snapshot.to_dict() if snapshot.exists else None

    def fail_unpublished(
        self, job_id: str, tenant: str, written_at: datetime, message: str
    ) -> bool:
        """Mark a job whose publish failed ``failed``, unless anyone touched it since we wrote it.

        The precondition matters: a publish can time out here and still reach Pub/Sub, and a worker
        may already have claimed the job; that job must then run, not be overwritten. Returns
        whether the job was marked.
        """
        now = datetime.now(UTC)
        error = {"code": "publish_failed", "message": message}
        writes = self._client.batch()
        writes.update(
            self._jobs.document(job_id),
            # No webhook either: the client got a 503 and never learnt this job's id.
            jobstate.terminal(
                JobStatus.FAILED,
                now,
                "ingress",
                self._result_ttl_s,
                error=error,
                webhook_pending=False,
            ),
            option=self._client.write_option(last_update_time=written_at),
        )
        deltas = CountDeltas()
        # The precondition holds the job as this request wrote it: queued, with its tenant.
        written = {"tenant": tenant, "status": JobStatus.QUEUED.value, COUNTED_FLAG: True}
        deltas.move(written, JobStatus.FAILED)
        deltas.write(writes, self._client, now)
        try:
            with translated(StoreUnavailable, "commit"):
                writes.commit(retry=self._retry, timeout=self._timeout_s)
        except PreconditionFailed:
            logger.info("job changed after a failed publish; leaving it", extra={"job_id": job_id})
            return False
        except (BackendError, StoreUnavailable):
            # The client still gets its 503; the job stays queued until the reconciler (the
            # reliability issue) re-publishes or fails it.
            logger.exception("could not mark unpublished job failed", extra={"job_id": job_id})
            return False
        return True

    def cancel(self, job_id: str, tenant: str) -> dict[str, Any] | None:
        """Cancel a queued or running job; the document afterwards, or None if the tenant has no
        such job. Raises ``AlreadyFinished`` for a terminal job.

        The job turns ``cancelled`` at once, in one transaction with the read: a worker running it
        can no longer write an outcome (it does not own a running job any more) and stops at its
        next safe point when its watcher sees the cancel."""
        ref = self._jobs.document(job_id)

        def _cancel(transaction: firestore.Transaction) -> dict[str, Any] | None:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != tenant:
                return None
            if jobstate.is_terminal(doc):
                raise AlreadyFinished(doc)
            now = datetime.now(UTC)
            changes = jobstate.terminal(JobStatus.CANCELLED, now, "cancel", self._result_ttl_s)
            transaction.update(ref, changes)
            deltas = CountDeltas()
            deltas.move(doc, JobStatus.CANCELLED)  # an item of a batch: counted with the change
            deltas.write(transaction, self._client, now)
            return jobstate.applied(doc, changes)

        outcome: dict[str, Any] | None = run_transaction(
            self._client, _cancel, unavailable=StoreUnavailable, what="cancel"
        )
        return outcome

    def delete(self, job_id: str, tenant: str, also: Sequence[Any] = ()) -> bool:
        """Delete the tenant's job, and the documents ``also`` names (its webhook ledger, its
        result-cache entry), in one transaction; False if the tenant has no such job.

        A job not yet ended leaves its tenant's jobs in flight in the same commit. A worker
        running it loses it at its next check (the document is gone), and every write it could
        still try (lease renewal, outcome) is conditioned on the document, so nothing of it comes
        back."""
        ref = self._jobs.document(job_id)

        def _delete(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != tenant:
                return False
            deltas = CountDeltas()
            if not jobstate.is_terminal(doc):
                deltas.move(doc, JobStatus.CANCELLED)
            transaction.delete(ref)
            for other in also:
                transaction.delete(other)
            deltas.write(transaction, self._client, datetime.now(UTC))
            return True

        deleted: bool = run_transaction(
            self._client, _delete, unavailable=StoreUnavailable, what="delete"
        )
        return deleted

    def page(
        self,
        tenant: str,
        *,
        limit: int,
        fields: tuple[str, ...],
        status: str | None = None,
        task: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: Cursor | None = None,
    ) -> tuple[list[tuple[str, dict[str, Any]]], Cursor | None]:
        """A page of the tenant's jobs (their ``fields``), newest first, and the cursor of the
        next page (``ingress.pages.newest_first``)."""
        return newest_first(
            self._jobs,
            tenant,
            limit=limit,
            fields=fields,
            equal={"status": status, "task": task},
            created_after=created_after,
            created_before=created_before,
            after=after,
            retry=self._retry,
            timeout_s=self._timeout_s,
        )

    def ping(self) -> bool:
        """Whether Firestore answers a cheap read now."""
        try:
            self._jobs.document("_health").get(timeout=min(self._timeout_s, 3.0), retry=None)
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False
        return True
