"""The job state machine (``schemas.jobstate``) as the worker drives it, in Firestore.

Claims and outcomes run in transactions; lease renewals are plain updates under the document's
update-time precondition (cheaper, and they lose harmlessly to any concurrent write). Transactions
may re-run their function: nothing in them has side effects beyond the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from schemas import jobstate
from schemas.googleapi import UNAVAILABLE, bounded_retry, is_contention
from schemas.jobs import JobStatus
from worker.errors import StoreUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """This worker's right to run one attempt of a job."""

    job_id: str
    attempt: int
    token: str
    task: str
    tenant: str
    input: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """Why a delivery needs no work (it is acked)."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class Busy:
    """A live attempt holds the job: try again once its lease may have lapsed."""

    job_id: str
    until: datetime


class JobStore:
    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        *,
        timeout_s: float,
        lease_s: float,
        result_ttl_s: float,
    ):
        self._client = client
        self._jobs = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self.lease_s = lease_s
        self._result_ttl_s = result_ttl_s

    def claim(self, job_id: str, tenant: str) -> Claim | Skip | Busy:
        """Start a new attempt of the job, unless it is missing, terminal or held by a live one."""
        ref = self._jobs.document(job_id)

        @firestore.transactional
        def _claim(transaction: firestore.Transaction) -> Claim | Skip | Busy:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            decision = jobstate.claim(doc, tenant, datetime.now(UTC), self.lease_s)
            if isinstance(decision, jobstate.Refused):
                if decision.busy_until is not None:
                    return Busy(job_id, decision.busy_until)
                return Skip(job_id, decision.reason)
            assert doc is not None
            transaction.update(ref, decision.changes)
            return Claim(
                job_id,
                decision.attempt,
                decision.token,
                doc["task"],
                doc["tenant"],
                doc["input"],
                dict(doc.get("metadata") or {}),
            )

        # @transactional erases the function's type; name it again here.
        outcome: Claim | Skip | Busy = self._run(_claim, "claim", job_id)
        return outcome

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Write ``succeeded`` with the stored result; False if this attempt lost the job."""
        return self._end(claim, JobStatus.SUCCEEDED, {"result": result})

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        """Write ``failed`` with a reason; False if this attempt lost the job."""
        return self._end(claim, JobStatus.FAILED, {"error": {"code": code, "message": message}})

    def release(self, claim: Claim, last_error: dict[str, str] | None) -> bool:
        """Hand the job back (``queued``) for a later delivery; False if it was not ours."""

        def changes(now: datetime) -> dict[str, Any]:
            error = None if last_error is None else {**last_error, "attempt": claim.attempt}
            return jobstate.released(now, error)

        return self._fenced(claim, "release", changes)

    def _end(self, claim: Claim, status: JobStatus, fields: dict[str, Any]) -> bool:
        def changes(now: datetime) -> dict[str, Any]:
            return jobstate.terminal(status, now, claim.token, self._result_ttl_s, **fields)

        written = self._fenced(claim, status.value, changes)
        if not written:
            logger.warning(
                "attempt %s no longer owns the job; outcome dropped",
                claim.attempt,
                extra={"job_id": claim.job_id, "outcome": status.value},
            )
        return written

    def _fenced(
        self, claim: Claim, what: str, changes: Callable[[datetime], dict[str, Any]]
    ) -> bool:
        ref = self._jobs.document(claim.job_id)

        @firestore.transactional
        def _write(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(transaction=transaction)
            if not jobstate.owned_by(snapshot.to_dict() if snapshot.exists else None, claim.token):
                return False
            transaction.update(ref, changes(datetime.now(UTC)))
            return True

        written: bool = self._run(_write, what, claim.job_id)
        return written

    def check(self, claims: Sequence[Claim]) -> dict[str, str]:
        """For each claim (by token): ``ok``, ``cancelled`` or ``lost`` (another attempt owns it,
        or it ended otherwise). Renews the lease of every claim still owned whose lease is past
        half-way; a renewal that loses a race is retried at the next check."""
        if not claims:
            return {}
        refs = {self._jobs.document(c.job_id).path: c for c in claims}
        try:
            snapshots = list(
                self._client.get_all(
                    [self._jobs.document(c.job_id) for c in claims],
                    retry=self._retry,
                    timeout=self._timeout_s,
                )
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore check failed: {type(exc).__name__}") from exc
        now = datetime.now(UTC)
        verdicts: dict[str, str] = {}
        for snapshot in snapshots:
            claim = refs[snapshot.reference.path]
            doc = snapshot.to_dict() if snapshot.exists else None
            if jobstate.owned_by(doc, claim.token):
                verdicts[claim.token] = "ok"
                assert doc is not None
                lease = doc.get("lease_expires_at")
                if lease is None or lease - now < timedelta(seconds=self.lease_s / 2):
                    self._renew(snapshot)
            elif doc is not None and doc.get("status") == JobStatus.CANCELLED.value:
                verdicts[claim.token] = "cancelled"
            else:
                verdicts[claim.token] = "lost"
        return verdicts

    def _renew(self, snapshot: Any) -> None:
        try:
            snapshot.reference.update(
                jobstate.renewed(datetime.now(UTC), self.lease_s),
                option=self._client.write_option(last_update_time=snapshot.update_time),
                timeout=self._timeout_s,
            )
        except gexc.FailedPrecondition:
            pass  # someone wrote it since we read it; the next check decides what that means
        except UNAVAILABLE as exc:
            logger.warning("lease renewal failed: %s", type(exc).__name__)

    def _run(self, function: Callable[[firestore.Transaction], T], what: str, job_id: str) -> T:
        try:
            return function(self._client.transaction())
        except UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"Firestore {what} failed for {job_id}: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:
            if not is_contention(exc):
                raise
            raise StoreUnavailable(f"Firestore {what} contention for {job_id}: {exc}") from exc
