"""Batches: the request, the resource, and the item counts every job writer keeps exact.

A batch is one Firestore document (``batches/ID``) plus one job document per item. Each item's job
carries ``batch_id``, ``batch_index`` (its place in the input, from 0), ``batch_path`` (the batch
document's path, so that any writer can find the counters without configuration) and
``superseded_by`` (set when a retry gave the item a new job; the item's *latest* job is the one
where it is null).

**Counts are sharded counters** (measured in ``bench/batch_counts.py``; ``docs/decisions.md``). The
batch document holds the counts at creation (``total`` = ``queued`` = the number of items); every
later change lives in ``batches/ID/counters/<0..SHARDS-1>`` as ``Increment`` deltas. Every writer
that moves a batch item's job from one status to another (the worker's claim, outcome and release,
the ingress's cancel, the dead-letter function, the reconciler, a batch cancel or retry) adds the
delta to a random shard *in the same commit* as the job's own fenced write (``CountDeltas``), so a
change is counted exactly when it happens, once, however many workers finish items at once. A read
sums the batch document and its shards: ~10 ms, against 5 s for ``count()`` over 100,000 jobs.

The same ``CountDeltas`` keeps each tenant's jobs in flight (``schemas/quota.py``): every job,
in a batch or not, moves its tenant's counter in the same commit.
"""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from google.cloud.firestore import Increment
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.jobs import JobStatus, Metadata, Webhook
from schemas.quota import COUNTED_FLAG, TENANT_SHARDS, in_flight_delta, shard_paths
from schemas.quota import FIELD as IN_FLIGHT_FIELD

SHARDS = 16
"""Counter shards per batch: enough that no shard sees more than a write a second in
production at thousands of items a second (one document sustains about one)."""
COUNTED = tuple(status.value for status in JobStatus)
"""Per-status item counts; ``total`` is fixed at creation."""
COUNTERS = "counters"
"""The subcollection of a batch document that holds its shards."""


class BatchStatus(StrEnum):
    OPEN = "open"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchRequest(BaseModel):
    """The JSON form of ``POST /v1/batches``; each item is checked against the task's schema
    afterwards (the NDJSON form carries the items as lines and the task in ``?task=``)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=64)
    items: list[dict[str, Any]] = Field(min_length=1)
    metadata: Metadata = None
    webhook: Webhook = None
    deadline: AwareDatetime | None = Field(
        default=None,
        description=(
            "RFC 3339 with an offset: items not started by then end `failed` with code "
            "`deadline_exceeded` and never run. `Cancel-After: <seconds>` is a synonym (the "
            "earlier wins); the NDJSON form takes `?deadline=`."
        ),
    )


class BatchCounts(BaseModel):
    total: int
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def in_flight(self) -> int:
        return self.queued + self.running

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


class BatchLinks(BaseModel):
    self: str
    results: str
    events: str
    cancel: str
    retry: str
    webhook_deliveries: str | None = None

    @classmethod
    def for_batch(cls, batch_id: str, webhook: bool = False) -> BatchLinks:
        base = f"/v1/batches/{batch_id}"
        return cls(
            self=base,
            results=f"{base}/results",
            events=f"{base}/events",
            cancel=f"{base}/cancel",
            retry=f"{base}/retry",
            webhook_deliveries=f"{base}/webhook-deliveries" if webhook else None,
        )


class Batch(BaseModel):
    """The batch resource, as ``GET /v1/batches/ID`` answers it."""

    id: str
    task: str
    status: BatchStatus
    counts: BatchCounts
    created_at: datetime
    finished_at: datetime | None = None
    metadata: dict[str, str] | None = None
    webhook: str | None = None
    deadline: datetime | None = None
    progress: dict[str, float] | None = Field(
        default=None,
        description=(
            "A running batch read alone: `items_per_s` (its own rate once it has finished "
            "some items, else the workers' measured rate for its task) and `eta_s` (its items "
            "not yet ended over that rate)."
        ),
    )
    links: BatchLinks

    @classmethod
    def from_documents(
        cls, batch_id: str, doc: dict[str, Any], shards: list[dict[str, Any]]
    ) -> Batch:
        """The resource from the batch document and its counter shards.

        ``finished_at`` is the last counted change once nothing is in flight: the newest shard's
        ``at`` (every counted change writes it), so no writer has to know it moved the last item."""
        counts = counts_of(doc, shards)
        status = batch_status(counts, bool(doc.get("cancel_requested")), bool(doc.get("open")))
        finished_at = None
        if status not in (BatchStatus.RUNNING, BatchStatus.OPEN):
            times = [s["at"] for s in shards if s.get("at") is not None]
            finished_at = max(times) if times else doc.get("created_at")
        return cls(
            id=batch_id,
            task=doc["task"],
            status=status,
            counts=counts,
            created_at=doc["created_at"],
            finished_at=finished_at,
            metadata=doc.get("metadata") or None,
            webhook=doc.get("webhook"),
            deadline=doc.get("deadline"),
            links=BatchLinks.for_batch(batch_id, webhook=bool(doc.get("webhook"))),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def counts_of(doc: dict[str, Any], shards: list[dict[str, Any]]) -> BatchCounts:
    """The batch document's counts at creation plus every shard's deltas."""
    base = doc.get("counts") or {}
    totals = {status: int(base.get(status) or 0) for status in COUNTED}
    total = int(base.get("total") or 0)
    for shard in shards:
        for status in COUNTED:
            totals[status] += int(shard.get(status) or 0)
        total += int(shard.get("total") or 0)  # the items of each part, as it was accepted
    return BatchCounts(total=total, **totals)


def batch_status(counts: BatchCounts, cancel_requested: bool, open_: bool = False) -> BatchStatus:
    """``open`` while an open batch takes parts (and no cancel came); ``running`` while any item
    is queued or running; then ``cancelled`` if a cancel was accepted, else ``succeeded`` if no
    item failed, else ``failed`` (the contract's rule)."""
    if open_ and not cancel_requested:
        return BatchStatus.OPEN
    if counts.in_flight > 0:
        return BatchStatus.RUNNING
    if cancel_requested:
        return BatchStatus.CANCELLED
    return BatchStatus.FAILED if counts.failed else BatchStatus.SUCCEEDED


def item_fields(batch_id: str, batch_path: str, index: int) -> dict[str, Any]:
    """The fields that make a job an item of a batch."""
    return {
        "batch_id": batch_id,
        "batch_index": index,
        "batch_path": batch_path,
        "superseded_by": None,
    }


def item_line(job_id: str, doc: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """One line of ``GET /v1/batches/ID/results`` (and the data of an ``item`` event)."""
    line: dict[str, Any] = {
        "index": doc.get("batch_index"),
        "job_id": job_id,
        "status": doc.get("status"),
    }
    if doc.get("status") == JobStatus.SUCCEEDED.value and result is not None:
        line["result"] = result
    if doc.get("status") == JobStatus.FAILED.value and doc.get("error"):
        line["error"] = doc["error"]
    return line


class _Writer(Protocol):
    """A ``WriteBatch`` or a ``Transaction``: anything that commits writes together."""

    def set(self, reference: Any, document_data: dict[str, Any], merge: bool = ...) -> Any: ...


class CountDeltas:
    """The count changes of one commit's job transitions: per batch (its items' statuses) and
    per tenant (jobs in flight, ``schemas/quota.py``); ``write`` adds them to the commit. Every
    writer calls ``move`` for every job it moves, and ``created`` for every job it creates."""

    def __init__(self) -> None:
        self._by_batch: dict[str, Counter[str]] = {}
        self._by_tenant: Counter[str] = Counter()

    def move(self, doc: dict[str, Any] | None, to: JobStatus | str, count: int = 1) -> None:
        """Count ``doc``'s job (``count`` of them) leaving its current status for ``to``."""
        path = (doc or {}).get("batch_path")
        tenant = (doc or {}).get("tenant")
        before = str((doc or {}).get("status"))
        after = to.value if isinstance(to, JobStatus) else to
        if before == after:
            return
        # Only jobs whose creation was counted: a job from before the counters existed would
        # push its tenant's sum below the truth for good when it ends.
        if tenant and (doc or {}).get(COUNTED_FLAG):
            self._by_tenant[str(tenant)] += in_flight_delta(before, after) * count
        if not path:
            return
        deltas = self._by_batch.setdefault(path, Counter())
        deltas[before] -= count
        deltas[after] += count

    def added(self, batch_path: str, tenant: str, count: int) -> None:
        """Count ``count`` new queued items of a batch (a part, as it is accepted): the batch's
        ``total`` and ``queued``, and the tenant's items in flight."""
        deltas = self._by_batch.setdefault(batch_path, Counter())
        deltas["total"] += count
        deltas["queued"] += count
        self._by_tenant[tenant] += count

    def removed(self, tenant: str, count: int) -> None:
        """Count ``count`` items in flight of ``tenant`` deleted with their batch (they will
        never end, so no later move counts them out)."""
        self._by_tenant[tenant] -= count

    def created(self, tenant: str, count: int = 1) -> None:
        """Count ``count`` new queued jobs of ``tenant`` (a batch's items are counted in the
        batch document at creation; only the tenant's counter moves here)."""
        self._by_tenant[tenant] += count

    def __bool__(self) -> bool:
        return any(self._by_tenant.values()) or any(
            any(c.values()) for c in self._by_batch.values()
        )

    def write(self, writer: _Writer, client: Any, now: datetime) -> None:
        """Add one shard write per batch and per tenant to the commit ``writer`` is building."""
        for path, deltas in self._by_batch.items():
            changes: dict[str, Any] = {k: Increment(v) for k, v in deltas.items() if v}
            if not changes:
                continue
            shard = client.document(path, COUNTERS, str(secrets.randbelow(SHARDS)))
            writer.set(shard, {**changes, "at": now}, merge=True)
        for tenant, delta in self._by_tenant.items():
            if not delta:
                continue
            shard = client.document(*shard_paths(tenant)[secrets.randbelow(TENANT_SHARDS)])
            writer.set(shard, {IN_FLIGHT_FIELD: Increment(delta), "at": now}, merge=True)
