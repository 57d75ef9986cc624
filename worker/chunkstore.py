"""A batch's chunks (``schemas/chunks.py``) as the worker drives them, in Firestore.

A chunk is a unit of work like a job: ``schemas/jobstate.py`` claims, fences, renews, releases and
ends it. Beside jobstate's fields the worker moves the items' letters (``items``) and their counts
(``CountDeltas.move(chunk, to, count=k)``) in the same commit as every status change, so a batch's
counts stay exact whoever writes and however often a chunk is delivered.

Claims and terminal writes are optimistic, as ``worker/store.py``'s: one read, then one commit
conditioned on the chunk's update time; a document changed since (a cancel, another attempt) makes
the decision again in a transaction. The lease renewals of the watcher are conditioned the same
way, and their update times kept, so a chunk's terminal commit is usually one conditioned write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from google.cloud import firestore

from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.chunks import CHUNKS, CODE_OF, PENDING, end_unfinished, unpack_inputs
from schemas.jobs import JobStatus
from schemas.quota import COUNTED_FLAG
from worker.attemptstore import AttemptStore
from worker.store import Busy, Skip, running_doc

logger = logging.getLogger(__name__)

DOC_LIMIT_BYTES = 1_000_000
"""What a chunk document may take at its terminal commit, bytes: Firestore's limit is 1 MiB
(1,048,576), less room for what the estimate leaves out."""
DOC_OVERHEAD_BYTES = 8_192
"""The estimate's allowance for the fields beside inputs, results and errors (ids, timestamps,
the status event log), bytes."""
_WATCHED_FIELDS = ["status", "attempt_token", "lease_expires_at", "cancel_requested"]
"""What ``check`` reads of chunks and batches: never a chunk's inputs, every second."""
_FENCE_FIELDS = ["status", "attempt_token", "items", "batch_path", "tenant", COUNTED_FLAG]
"""What a fenced write must read of its chunk (its inputs stay unread)."""
RUNNING, QUEUED = "r", "q"


DEADLINE_SKIP = "its batch's deadline passed"
"""Why a claim ended a chunk without running it (its successor is released, as for any end)."""


@dataclass(frozen=True)
class ChunkClaim:
    """This worker's right to run one attempt of a chunk."""

    batch_id: str
    chunk_id: str
    path: str
    attempt: int
    token: str
    task: str
    tenant: str
    inputs: list[bytes] = field(repr=False)
    """Every item's input line, by position."""
    todo: tuple[int, ...]
    """The positions this attempt runs (queued, or running under a lapsed attempt)."""
    items: str
    """The items' letters as this claim wrote them (``r`` for every position of ``todo``)."""
    batch_path: str
    counted: bool = False
    inputs_bytes: int = 0
    """The size of the stored ``inputs`` value, for the document size estimate."""

    @property
    def label(self) -> dict[str, str]:
        """What a log line names it by."""
        return {"batch_id": self.batch_id, "chunk_id": self.chunk_id}


@dataclass
class ChunkOutcome:
    """What an attempt did to a chunk's items, built by the runner and written by ``commit``.

    ``letters`` holds every position's letter (positions not run keep theirs), ``results`` a
    stored result per position (``b""`` where none), ``errors`` the failed positions' errors."""

    status: JobStatus
    letters: bytearray
    results: list[bytes]
    errors: dict[str, dict[str, str]] = field(default_factory=dict)


def ended(claim: ChunkClaim, outcome: ChunkOutcome) -> dict[str, int]:
    """How many of the attempt's items ``outcome`` ended, per item status: the positions it did
    not run keep their letters, so the counts are the letters' less the claim's."""
    counts = {}
    for status in ("succeeded", "failed", "cancelled"):
        code = CODE_OF[status]
        counts[status] = outcome.letters.count(ord(code)) - claim.items.count(code)
    return counts


def doc_bytes(claim: ChunkClaim, outcome: ChunkOutcome) -> int:
    """Roughly what the chunk document takes once ``outcome`` is written (Firestore's sizes:
    bytes by length, strings by UTF-8 length plus one, each map key like a string)."""
    errors = sum(
        len(key) + len(error.get("code", "")) + len(error.get("message", "").encode()) + 24
        for key, error in outcome.errors.items()
    )
    results = sum(len(result) for result in outcome.results)
    return claim.inputs_bytes + results + errors + 2 * len(outcome.letters) + DOC_OVERHEAD_BYTES


def fit(claim: ChunkClaim, outcome: ChunkOutcome, limit: int = DOC_LIMIT_BYTES) -> int:
    """Fail the items with the largest results ``result_too_large`` until the document fits;
    returns how many failed so."""
    size = doc_bytes(claim, outcome)
    if size <= limit:
        return 0
    failed = 0
    largest = sorted(range(len(outcome.results)), key=lambda i: len(outcome.results[i]))
    while size > limit and largest:
        position = largest.pop()
        result = outcome.results[position]
        if not result:
            break
        message = f"the result ({len(result)} bytes) does not fit its chunk's document"
        error = {"code": "result_too_large", "message": message}
        outcome.results[position] = b""
        outcome.letters[position] = ord(CODE_OF["failed"])
        outcome.errors[str(position)] = error
        size += len(message) + 64 - len(result)
        failed += 1
    return failed


class ChunkStoreLike(Protocol):
    """What ``worker.chunkrun`` drives (``ChunkStore`` in production, fakes in unit tests)."""

    lease_s: float

    def claim(
        self, batch_id: str, chunk_id: str, tenant: str, worker: str = ""
    ) -> ChunkClaim | Skip | Busy: ...
    def check(self, claims: Sequence[ChunkClaim]) -> dict[str, str]: ...
    def commit(self, claim: ChunkClaim, outcome: ChunkOutcome) -> bool: ...
    def release(
        self, claim: ChunkClaim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool: ...
    def forget(self, claim: ChunkClaim) -> None: ...
    def batch_path(self, batch_id: str) -> str: ...


class ChunkStore(AttemptStore):
    RENEWAL = "chunk lease renewal"

    def __init__(
        self,
        client: firestore.Client,
        batches_collection: str,
        *,
        timeout_s: float,
        lease_s: float,
        result_ttl_s: float,
    ):
        super().__init__(client, timeout_s=timeout_s, lease_s=lease_s, result_ttl_s=result_ttl_s)
        self._batches = client.collection(batches_collection)

    def batch_path(self, batch_id: str) -> str:
        return str(self._batches.document(batch_id).path)

    def _refs(self, batch_id: str, chunk_id: str) -> tuple[Any, Any]:
        batch = self._batches.document(batch_id)
        return batch.collection(CHUNKS).document(chunk_id), batch

    # -- claim -----------------------------------------------------------------------------------
    def claim(
        self, batch_id: str, chunk_id: str, tenant: str, worker: str = ""
    ) -> ChunkClaim | Skip | Busy:
        """Start a new attempt of the chunk unless it is not runnable (pending, missing, ended:
        ``Skip``) or a live attempt holds it (``Busy``). A queued chunk of a cancelled batch is
        ended ``cancelled`` here, whole, and never runs."""
        chunk_ref, batch_ref = self._refs(batch_id, chunk_id)
        read = self._get_all([chunk_ref, batch_ref], "chunk read")
        snapshots = {s.reference.path: s for s in read}
        chunk = snapshots.get(chunk_ref.path)
        batch = snapshots.get(batch_ref.path)
        doc = chunk.to_dict() if chunk is not None and chunk.exists else None
        batch_doc = (batch.to_dict() or {}) if batch is not None and batch.exists else {}
        decision, changes, deltas = self._decide(batch_id, chunk_id, doc, batch_doc, tenant, worker)
        if changes is None:
            return decision
        assert chunk is not None
        write = self._client.batch()
        option = self._client.write_option(last_update_time=chunk.update_time)
        write.update(chunk_ref, changes, option=option)
        deltas.write(write, self._client, datetime.now(UTC))
        results = self._commit(write, "chunk claim")
        if results is None:
            return self._claim_in_transaction(batch_id, chunk_id, tenant, worker)
        if isinstance(decision, ChunkClaim):
            self._versions[decision.token] = results[0].update_time
        return decision

    def _claim_in_transaction(
        self, batch_id: str, chunk_id: str, tenant: str, worker: str
    ) -> ChunkClaim | Skip | Busy:
        chunk_ref, batch_ref = self._refs(batch_id, chunk_id)

        def _claim(transaction: firestore.Transaction) -> ChunkClaim | Skip | Busy:
            snapshots = {
                s.reference.path: s
                for s in self._client.get_all([chunk_ref, batch_ref], transaction=transaction)
            }
            chunk, batch = snapshots.get(chunk_ref.path), snapshots.get(batch_ref.path)
            doc = chunk.to_dict() if chunk is not None and chunk.exists else None
            batch_doc = (batch.to_dict() or {}) if batch is not None and batch.exists else {}
            decision, changes, deltas = self._decide(
                batch_id, chunk_id, doc, batch_doc, tenant, worker
            )
            if changes is not None:
                transaction.update(chunk_ref, changes)
                deltas.write(transaction, self._client, datetime.now(UTC))
            return decision

        decision: ChunkClaim | Skip | Busy = self._run(_claim, "chunk claim", chunk_ref.path)
        return decision

    def _decide(
        self,
        batch_id: str,
        chunk_id: str,
        doc: dict[str, Any] | None,
        batch_doc: dict[str, Any],
        tenant: str,
        worker: str,
    ) -> tuple[ChunkClaim | Skip | Busy, dict[str, Any] | None, CountDeltas]:
        """The claim decision, the chunk's changes (None: nothing to write) and their counts."""
        deltas = CountDeltas()
        now = datetime.now(UTC)
        if doc is None or doc.get("status") == PENDING:
            # Pending: its request was never accepted (no message should exist; nothing runs).
            return Skip(chunk_id, "missing" if doc is None else "pending"), None, deltas
        items = str(doc.get("items") or "")
        if (
            batch_doc.get("cancel_requested")
            and doc.get("status") == JobStatus.QUEUED.value
            and doc.get("tenant") == tenant
        ):
            ended = end_unfinished(doc, JobStatus.CANCELLED, deltas)
            changes = jobstate.terminal(
                JobStatus.CANCELLED, now, "batch-cancel", self._result_ttl_s, **ended
            )
            return Skip(chunk_id, "its batch was cancelled"), changes, deltas
        if (
            jobstate.past_deadline(batch_doc, now)
            and doc.get("status") == JobStatus.QUEUED.value
            and doc.get("tenant") == tenant
        ):
            # Never started: its items end failed, deadline_exceeded, and never run.
            error = dict(jobstate.DEADLINE_ERROR)
            ended = end_unfinished(doc, JobStatus.FAILED, deltas, error)
            changes = jobstate.terminal(
                JobStatus.FAILED, now, "deadline", self._result_ttl_s, error=error, **ended
            )
            return Skip(chunk_id, DEADLINE_SKIP), changes, deltas
        decision = jobstate.claim(doc, tenant, now, self.lease_s, worker)
        if isinstance(decision, jobstate.Refused):
            if decision.busy_until is not None:
                return Busy(chunk_id, decision.busy_until), None, deltas
            return Skip(chunk_id, decision.reason), None, deltas
        todo = tuple(i for i, code in enumerate(items) if code in (QUEUED, RUNNING))
        claimed = items.replace(QUEUED, RUNNING)
        changes = {**decision.changes, "items": claimed}
        # Only the queued ones move: a lapsed attempt's running items are counted already.
        deltas.move(doc, JobStatus.RUNNING, count=items.count(QUEUED))
        inputs = doc.get("inputs") or b""
        claim = ChunkClaim(
            batch_id=batch_id,
            chunk_id=chunk_id,
            path=self._refs(batch_id, chunk_id)[0].path,
            attempt=decision.attempt,
            token=decision.token,
            task=str(doc.get("task")),
            tenant=str(doc.get("tenant")),
            inputs=unpack_inputs(inputs),
            todo=todo,
            items=claimed,
            batch_path=str(doc.get("batch_path") or self._batches.document(batch_id).path),
            counted=bool(doc.get(COUNTED_FLAG)),
            inputs_bytes=len(inputs),
        )
        return claim, changes, deltas

    # -- watch -----------------------------------------------------------------------------------
    def check(self, claims: Sequence[ChunkClaim]) -> dict[str, str]:
        """For each claim (by token): ``ok``, ``cancelled`` (the chunk was cancelled, or its batch
        asked to be) or ``lost``. Renews the lease of every claim still owned whose lease is past
        half-way, as ``JobStore.check`` does."""
        if not claims:
            return {}
        chunk_refs = [self._refs(c.batch_id, c.chunk_id)[0] for c in claims]
        batch_refs = {c.batch_id: self._batches.document(c.batch_id) for c in claims}
        snapshots = {
            s.reference.path: s
            for s in self._get_all(
                chunk_refs + list(batch_refs.values()), "chunk check", _WATCHED_FIELDS
            )
        }
        now = datetime.now(UTC)
        verdicts: dict[str, str] = {}
        for claim, ref in zip(claims, chunk_refs, strict=True):
            snapshot = snapshots.get(ref.path)
            doc = snapshot.to_dict() if snapshot is not None and snapshot.exists else None
            batch = snapshots.get(batch_refs[claim.batch_id].path)
            cancel = batch is not None and bool((batch.to_dict() or {}).get("cancel_requested"))
            verdicts[claim.token] = self._verdict(snapshot, doc, claim.token, now, cancel)
        return verdicts

    # -- end -------------------------------------------------------------------------------------
    def commit(self, claim: ChunkClaim, outcome: ChunkOutcome) -> bool:
        """Write the attempt's outcome: every item's letter, result and error, the chunk's
        terminal status and the counts of the items it ran, in one commit fenced by the attempt
        token. False if this attempt no longer owns the chunk (nothing is written)."""
        fit(claim, outcome)
        ref = self._refs(claim.batch_id, claim.chunk_id)[0]

        def changes(now: datetime) -> dict[str, Any]:
            return jobstate.terminal(
                outcome.status,
                now,
                claim.token,
                self._result_ttl_s,
                items=outcome.letters.decode(),
                results=outcome.results,
                errors=outcome.errors,
                done_at=firestore.SERVER_TIMESTAMP,
            )

        def deltas() -> CountDeltas:
            moved = CountDeltas()
            running = running_doc(claim.batch_path, claim.tenant, claim.counted)
            for status, count in ended(claim, outcome).items():
                if count:
                    moved.move(running, status, count=count)
            return moved

        version = self._versions.pop(claim.token, None)
        if version is not None:
            now = datetime.now(UTC)
            write = self._client.batch()
            write.update(
                ref, changes(now), option=self._client.write_option(last_update_time=version)
            )
            deltas().write(write, self._client, now)
            if self._commit(write, "chunk commit") is not None:
                return True
            # Changed since (a cancel's write, a takeover): decide in a transaction.
        return self._owned_write(claim, "chunk commit", lambda _doc, now: (changes(now), deltas()))

    def release(
        self, claim: ChunkClaim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool:
        """Hand the chunk back (``queued``, its running items ``queued`` again) for a later
        delivery; False if it was not ours."""

        def changes(doc: dict[str, Any], now: datetime) -> tuple[dict[str, Any], CountDeltas]:
            error = None if last_error is None else {**last_error, "attempt": claim.attempt}
            items = str(doc.get("items") or "")
            moved = CountDeltas()
            moved.move(doc, JobStatus.QUEUED, count=items.count(RUNNING))
            return {
                **jobstate.released(now, error, started),
                "items": items.replace(RUNNING, QUEUED),
            }, moved

        self._versions.pop(claim.token, None)
        return self._owned_write(claim, "chunk release", changes)

    def forget(self, claim: ChunkClaim) -> None:
        """Drop what is kept for ``claim`` (an attempt that ends without a write)."""
        self._versions.pop(claim.token, None)

    def _owned_write(
        self,
        claim: ChunkClaim,
        what: str,
        changes: Callable[[dict[str, Any], datetime], tuple[dict[str, Any], CountDeltas]],
    ) -> bool:
        ref = self._refs(claim.batch_id, claim.chunk_id)[0]
        written = self._fenced(ref, claim.token, what, changes, _FENCE_FIELDS)
        if not written:
            logger.warning(
                "attempt %s no longer owns the chunk; %s dropped",
                claim.attempt,
                what,
                extra=claim.label,
            )
        return written
