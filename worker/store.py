"""The job state machine (``schemas.jobstate``) as the worker drives it, in Firestore.

Claims and outcomes run in transactions; lease renewals are plain updates under the document's
update-time precondition (cheaper, and they lose harmlessly to any concurrent write). Transactions
may re-run their function: nothing in them has side effects beyond the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import translated
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from schemas.quota import COUNTED_FLAG
from worker.attemptstore import MAX_VERSIONS, AttemptStore
from worker.errors import StoreUnavailable
from worker.resultcache import CacheWrites

logger = logging.getLogger(__name__)


def running_doc(batch_path: str | None, tenant: str, counted: bool) -> dict[str, Any]:
    """The fields ``CountDeltas.move`` reads, as a job or chunk stands while this worker's
    attempt owns it (the terminal write's precondition holds it there)."""
    return {
        "batch_path": batch_path,
        "tenant": tenant,
        COUNTED_FLAG: counted,
        "status": JobStatus.RUNNING.value,
    }


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
    batch_path: str | None = None
    """The batch document of an item's job: its outcome is counted there."""
    counted: bool = False
    """Whether the job's creation was counted in its tenant's jobs in flight (its end then is)."""
    deadline: datetime | None = None
    """The job's ``deadline``: past it, the attempt stops at its next safe point."""
    cache_key: str | None = None
    """Where its result goes in the result cache when it succeeds (set by the ingress)."""

    @property
    def label(self) -> dict[str, str]:
        """What a log line names it by."""
        return {"job_id": self.job_id}


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


class JobStore(AttemptStore):
    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        *,
        timeout_s: float,
        lease_s: float,
        result_ttl_s: float,
        cache: CacheWrites | None = None,
    ):
        super().__init__(client, timeout_s=timeout_s, lease_s=lease_s, result_ttl_s=result_ttl_s)
        self._jobs = client.collection(collection)
        self._cache = cache

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]:
        """For each ``(job_id, tenant)``, start a new attempt unless the job is missing, terminal
        or held by a live attempt, for a whole micro-batch at once.

        Optimistic first: one read of every document, then one atomic batch of updates, each
        conditioned on its document's update time (a document changed since the read fails the
        batch). That is what a transaction guarantees here, at a third of the emulator's CPU, which
        competes with the model on a small machine. If any document changed, the batch is decided
        again in a transaction. The commit's update times are kept, so the terminal write can be
        conditioned the same way (``end_many``)."""
        first: dict[str, int] = {}
        for i, (job_id, _tenant) in enumerate(jobs):
            first.setdefault(job_id, i)
        refs = {job_id: self._jobs.document(job_id) for job_id in first}
        snapshots = {s.id: s for s in self._get_all(list(refs.values()), "claim read")}
        docs = {i: s.to_dict() or {} for i, s in snapshots.items() if s.exists}
        cancelled = self._cancelled_batches(docs)
        decisions, writes, deltas = self._decide(jobs, first, docs, worker, cancelled)
        if not writes:
            return decisions
        batch = self._client.batch()
        for job_id, changes in writes:
            self._update(batch, refs[job_id], changes, snapshots[job_id].update_time)
        deltas.write(batch, self._client, datetime.now(UTC))
        results = self._commit(batch, "claim")
        if results is None:
            return self._claim_in_transaction(jobs, first, refs, worker)
        tokens = {c.job_id: c.token for c in decisions if isinstance(c, Claim)}
        if len(self._versions) > MAX_VERSIONS:
            self._versions.clear()  # only makes later writes take the transactional path
        for (job_id, _), result in zip(writes, results, strict=False):
            if job_id in tokens:  # not the jobs a cancelled batch ended here
                self._versions[tokens[job_id]] = result.update_time
        return decisions

    def _cancelled_batches(
        self, docs: dict[str, dict[str, Any]], transaction: firestore.Transaction | None = None
    ) -> set[str]:
        """The batch paths among ``docs``' jobs whose batch was cancelled.

        Read with the jobs, at every claim: an item of a cancelled batch must never start, even
        while the ingress is still marking the batch's queued items ``cancelled``."""
        paths = {doc["batch_path"] for doc in docs.values() if doc.get("batch_path")}
        if not paths:
            return set()
        refs = [self._client.document(path) for path in sorted(paths)]
        with translated(StoreUnavailable, "batch read"):
            if transaction is not None:
                snapshots = self._client.get_all(refs, transaction=transaction)
            else:
                snapshots = self._client.get_all(refs, retry=self._retry, timeout=self._timeout_s)
            return {
                s.reference.path
                for s in snapshots
                if s.exists and (s.to_dict() or {}).get("cancel_requested")
            }

    def _claim_in_transaction(
        self,
        jobs: Sequence[tuple[str, str]],
        first: dict[str, int],
        refs: dict[str, Any],
        worker: str,
    ) -> list[Claim | Skip | Busy]:
        def _claim(transaction: firestore.Transaction) -> list[Claim | Skip | Busy]:
            docs = self._read(refs, transaction)
            cancelled = self._cancelled_batches(docs, transaction)
            decisions, writes, deltas = self._decide(jobs, first, docs, worker, cancelled)
            for job_id, changes in writes:
                transaction.update(refs[job_id], changes)
            deltas.write(transaction, self._client, datetime.now(UTC))
            return decisions

        outcome: list[Claim | Skip | Busy] = self._run(_claim, "claim", _ids(jobs))
        return outcome

    def _decide(
        self,
        jobs: Sequence[tuple[str, str]],
        first: dict[str, int],
        docs: dict[str, dict[str, Any]],
        worker: str,
        cancelled_batches: set[str],
    ) -> tuple[list[Claim | Skip | Busy], list[tuple[str, dict[str, Any]]], CountDeltas]:
        """Each job's claim decision, the updates the claims need and their count changes.

        An item of a cancelled batch that has not started is ended ``cancelled`` here instead of
        claimed, and a job past its ``deadline`` ends ``failed`` (``deadline_exceeded``): neither
        runs."""
        now = datetime.now(UTC)
        out: list[Claim | Skip | Busy] = []
        writes: list[tuple[str, dict[str, Any]]] = []
        deltas = CountDeltas()
        for i, (job_id, tenant) in enumerate(jobs):
            if first[job_id] != i:
                # The same job twice in one batch (a duplicate delivery): one claim runs it.
                out.append(Skip(job_id, "duplicate delivery in the same batch"))
                continue
            doc = docs.get(job_id)
            if (
                doc is not None
                and doc.get("batch_path") in cancelled_batches
                and doc.get("status") == JobStatus.QUEUED.value
                and doc.get("tenant") == tenant
            ):
                changes = jobstate.terminal(
                    JobStatus.CANCELLED, now, "batch-cancel", self._result_ttl_s
                )
                writes.append((job_id, changes))
                deltas.move(doc, JobStatus.CANCELLED)
                out.append(Skip(job_id, "its batch was cancelled"))
                continue
            decision = jobstate.claim(doc, tenant, now, self.lease_s, worker)
            if isinstance(decision, jobstate.Refused):
                if decision.busy_until is not None:
                    out.append(Busy(job_id, decision.busy_until))
                else:
                    out.append(Skip(job_id, decision.reason))
                continue
            assert doc is not None
            if jobstate.past_deadline(doc, now):
                # Never run: ended here, in the claim's commit, counted like any end.
                writes.append(
                    (job_id, jobstate.deadline_failed(now, "deadline", self._result_ttl_s))
                )
                deltas.move(doc, JobStatus.FAILED)
                out.append(Skip(job_id, "its deadline passed"))
                continue
            writes.append((job_id, decision.changes))
            deltas.move(doc, JobStatus.RUNNING)  # nothing when a lapsed attempt is taken over
            out.append(
                Claim(
                    job_id,
                    decision.attempt,
                    decision.token,
                    doc["task"],
                    doc["tenant"],
                    doc["input"],
                    dict(doc.get("metadata") or {}),
                    doc.get("batch_path") or None,
                    counted=bool(doc.get(COUNTED_FLAG)),
                    deadline=doc.get("deadline"),
                    cache_key=doc.get("cache_key"),
                )
            )
        return out, writes, deltas

    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
        """Write each job's terminal state with its fields (``result`` or ``error``), fenced by
        its attempt token; per job, False if that attempt lost the job.

        Optimistic first, as ``claim_many``: when this worker knows the update time of its own
        last write to every document (the claim, or a lease renewal), one atomic batch conditioned
        on them; otherwise, or if any document changed since (a cancel, a takeover), a
        transaction that checks each token."""
        refs = {claim.job_id: self._jobs.document(claim.job_id) for claim, _, _ in ends}
        versions = [self._versions.get(claim.token) for claim, _, _ in ends]
        try:
            if all(v is not None for v in versions):
                now = datetime.now(UTC)
                batch = self._client.batch()
                deltas = CountDeltas()
                for (claim, status, fields), version in zip(ends, versions, strict=True):
                    changes = jobstate.terminal(
                        status, now, claim.token, self._result_ttl_s, **fields
                    )
                    self._update(batch, refs[claim.job_id], changes, version)
                    running = running_doc(claim.batch_path, claim.tenant, claim.counted)
                    deltas.move(running, status)
                    self._cached(batch, claim, status, fields, now)
                deltas.write(batch, self._client, now)
                if self._commit(batch, "terminal write") is not None:
                    return [True] * len(ends)
                # One of them changed since: decide each in a transaction.
            return self._end_in_transaction(ends, refs)
        finally:
            for claim, _, _ in ends:
                self._versions.pop(claim.token, None)

    def _cached(
        self, writer: Any, claim: Claim, status: JobStatus, fields: dict[str, Any], now: datetime
    ) -> None:
        """A succeeded job's result into the result cache, in the commit that ends it."""
        if self._cache is None or claim.cache_key is None or status is not JobStatus.SUCCEEDED:
            return
        self._cache.add(
            writer,
            key=claim.cache_key,
            tenant=claim.tenant,
            task=claim.task,
            result=fields["result"],
            now=now,
        )

    def _end_in_transaction(
        self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]], refs: dict[str, Any]
    ) -> list[bool]:
        def _write(transaction: firestore.Transaction) -> list[bool]:
            docs = self._read(refs, transaction)
            now = datetime.now(UTC)
            written = []
            deltas = CountDeltas()
            for claim, status, fields in ends:
                owned = jobstate.owned_by(docs.get(claim.job_id), claim.token)
                if owned:
                    changes = jobstate.terminal(
                        status, now, claim.token, self._result_ttl_s, **fields
                    )
                    transaction.update(refs[claim.job_id], changes)
                    deltas.move(docs.get(claim.job_id), status)
                    self._cached(transaction, claim, status, fields, now)
                written.append(owned)
            deltas.write(transaction, self._client, now)
            return written

        ids = _ids([(claim.job_id, "") for claim, _, _ in ends])
        written: list[bool] = self._run(_write, "terminal write", ids)
        for (claim, status, _), ok in zip(ends, written, strict=True):
            if not ok:
                logger.warning(
                    "attempt %s no longer owns the job; outcome dropped",
                    claim.attempt,
                    extra={"job_id": claim.job_id, "outcome": status.value},
                )
        return written

    def release(
        self, claim: Claim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool:
        """Hand the job back (``queued``) for a later delivery; False if it was not ours."""

        def changes(doc: dict[str, Any], now: datetime) -> tuple[dict[str, Any], CountDeltas]:
            error = None if last_error is None else {**last_error, "attempt": claim.attempt}
            moved = CountDeltas()
            moved.move(doc, JobStatus.QUEUED)
            return jobstate.released(now, error, started), moved

        self._versions.pop(claim.token, None)
        return self._fenced(self._jobs.document(claim.job_id), claim.token, "release", changes)

    def _read(
        self, refs: dict[str, Any], transaction: firestore.Transaction
    ) -> dict[str, dict[str, Any]]:
        """The existing documents among ``refs``, by job id, read inside ``transaction``."""
        docs: dict[str, dict[str, Any]] = {}
        for snapshot in self._client.get_all(list(refs.values()), transaction=transaction):
            if snapshot.exists:
                docs[snapshot.id] = snapshot.to_dict() or {}
        return docs

    def check(self, claims: Sequence[Claim]) -> dict[str, str]:
        """For each claim (by token): ``ok``, ``cancelled`` or ``lost`` (another attempt owns it,
        or it ended otherwise). Renews the lease of every claim still owned whose lease is past
        half-way; a renewal that loses a race is retried at the next check."""
        if not claims:
            return {}
        refs = {self._jobs.document(c.job_id).path: c for c in claims}
        snapshots = self._get_all([self._jobs.document(c.job_id) for c in claims], "check")
        now = datetime.now(UTC)
        verdicts: dict[str, str] = {}
        for snapshot in snapshots:
            claim = refs[snapshot.reference.path]
            doc = snapshot.to_dict() if snapshot.exists else None
            verdicts[claim.token] = self._verdict(snapshot, doc, claim.token, now)
        return verdicts


def _ids(jobs: Sequence[tuple[str, str]]) -> str:
    """Job ids for an error message: the first few of a batch."""
    ids = [job_id for job_id, _ in jobs]
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
