"""The job state machine as the worker drives it, in Firestore transactions.

    queued ──claim──▶ running ──finish──▶ succeeded
                         │    ──fail────▶ failed
                         └──(redelivery)─▶ running (attempts + 1)

Invariants:
- Terminal states (succeeded, failed, cancelled) never change; a delivery of a terminal job is
  acked without work.
- ``attempts`` is the fence: ``finish``/``fail`` write only while the job is ``running`` *and* still
  at the attempt that claimed it, so an older attempt that outlived its lease cannot overwrite a
  newer one's outcome.
Transactions may re-run their function: nothing in them has side effects beyond the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.cloud import firestore

from schemas.googleapi import UNAVAILABLE, bounded_retry
from schemas.jobs import TERMINAL_STATUSES, JobStatus
from worker.errors import TransientError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """This worker's right to run one attempt of a job."""

    job_id: str
    attempt: int
    task: str
    tenant: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Skip:
    """Why a delivery needs no work (it is acked)."""

    job_id: str
    reason: str


class JobStore:
    def __init__(self, client: firestore.Client, collection: str, timeout_s: float):
        self._client = client
        self._jobs = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def claim(self, job_id: str, tenant: str) -> Claim | Skip:
        """Move the job to ``running`` for a new attempt, unless it is missing or terminal."""
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def _claim(transaction: firestore.Transaction) -> Claim | Skip:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return Skip(job_id, "missing")
            doc = snapshot.to_dict() or {}
            if doc.get("tenant") != tenant:
                return Skip(job_id, "tenant_mismatch")
            try:
                status = JobStatus(str(doc.get("status")))
            except ValueError:
                return Skip(job_id, f"unknown status {doc.get('status')!r}")
            if status in TERMINAL_STATUSES:
                return Skip(job_id, f"already {status.value}")
            attempt = int(doc.get("attempts", 0)) + 1
            now = datetime.now(UTC)
            changes: dict[str, Any] = {
                "status": JobStatus.RUNNING.value,
                "attempts": attempt,
                "updated_at": now,
            }
            if not doc.get("started_at"):
                changes["started_at"] = now
            transaction.update(ref, changes)
            return Claim(job_id, attempt, doc["task"], doc["tenant"], doc["input"])

        # @transactional erases the function's type; name it again here.
        outcome: Claim | Skip = self._run(_claim, "claim", job_id)
        return outcome

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Write ``succeeded`` with the stored result; False if this attempt lost the job."""
        return self._end(claim, JobStatus.SUCCEEDED, {"result": result})

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        """Write ``failed`` with a reason; False if this attempt lost the job."""
        return self._end(claim, JobStatus.FAILED, {"error": {"code": code, "message": message}})

    def _end(self, claim: Claim, status: JobStatus, fields: dict[str, Any]) -> bool:
        ref = self._jobs.document(claim.job_id)

        @firestore.transactional
        def _write(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if (
                doc is None
                or doc.get("status") != JobStatus.RUNNING.value
                or doc.get("attempts") != claim.attempt
            ):
                return False
            now = datetime.now(UTC)
            transaction.update(
                ref, {**fields, "status": status.value, "updated_at": now, "finished_at": now}
            )
            return True

        written: bool = self._run(_write, status.value, claim.job_id)
        if not written:
            logger.warning(
                "attempt %s no longer owns the job; outcome dropped",
                claim.attempt,
                extra={"job_id": claim.job_id, "outcome": status.value},
            )
        return written

    def _run(self, function: Callable[[firestore.Transaction], T], what: str, job_id: str) -> T:
        try:
            return function(self._client.transaction())
        except UNAVAILABLE as exc:
            raise TransientError(
                f"Firestore {what} failed for {job_id}: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:
            # google-cloud-firestore says "Failed to commit transaction in N attempts." with a
            # bare ValueError; any other ValueError is a bug and must not pass for contention.
            if "Failed to commit transaction" not in str(exc):
                raise
            raise TransientError(f"Firestore {what} contention for {job_id}: {exc}") from exc
