"""A batch retry: exactly its failed items move to new retry chunks, and run again.

    source chunk (ended)                        new retry chunk ``r<hex>`` (queued)
    items "sfsf", moved {}      ──one commit──▶ indexes [1, 3], inputs: their lines, items "qq"
    items "s>s>", moved {"1": r…, "3": r…}       counts: failed − 2, queued + 2 (tenant +2)

Each commit creates one retry chunk and moves the items of every source chunk it takes, each
source fenced by its update time, with the counts: an item moves once, or not at all when a
concurrent retry took it first (the commit fails; each source is then read again and retried on
its own). A source's failed items never split: they came from one chunk, so they fit one. Sources
are grouped until a retry chunk is full (the task's items per chunk, ``DOC_BUDGET_BYTES``), so a
batch with one failure per chunk does not make a chunk and a message per failure.

Messages are published after the commits; one that fails leaves its chunk queued, and the
reconciler publishes queued chunks that nobody claims.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath
from pydantic import ValidationError

from common.googleapi import PreconditionFailed, bounded_retry, translated
from ingress.batches.documents import Batch as StoredBatch
from ingress.errors import StoreUnavailable
from ingress.publisher import JobPublisher, PublishFailed
from schemas import TaskSpec, get_task
from schemas.batches import CountDeltas
from schemas.chunks import (
    CODE_OF,
    DOC_BUDGET_BYTES,
    ITEM_OVERHEAD_BYTES,
    MOVED,
    RETRY_PREFIX,
    ChunkMessage,
    item_indexes,
    pack_inputs,
    result_bound,
    unpack_inputs,
)
from schemas.jobs import JobStatus, new_job_id
from schemas.quota import COUNTED_FLAG

logger = logging.getLogger(__name__)

SCAN_PAGE = 200
"""Ended chunks scanned per query for failed items (their letters only)."""
READS = 16
"""Chunks with failed items read at once with their inputs (each under ~0.9 MB)."""
SOURCE_FIELDS = [
    "status",
    "tenant",
    "batch_path",
    "part",
    "start",
    "indexes",
    "n",
    "inputs",
    "items",
    "moved",
    COUNTED_FLAG,
]
FAILED = CODE_OF["failed"]


class BatchCancelled(Exception):
    """The batch was cancelled: it takes no retry."""


@dataclass(frozen=True)
class _Source:
    """A chunk with failed items, as read for one retry commit."""

    ref: Any
    update_time: datetime
    doc: dict[str, Any]
    """Its fields without ``inputs``."""
    positions: list[int]
    indexes: list[int]
    lines: list[bytes]
    size: int
    """Its failed items' bytes in a chunk: inputs, results at their bound, overhead."""


class RetryPlanner:
    def __init__(
        self,
        client: firestore.Client,
        publisher: JobPublisher,
        timeout_s: float,
        result_ttl_s: float,
        chunk_items: Callable[[str], int],
    ):
        self._client = client
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self._result_ttl_s = result_ttl_s
        self._chunk_items = chunk_items

    def retry(self, batch: StoredBatch, chunks: Any) -> list[tuple[ChunkMessage, int]]:
        """Move every failed item of the batch to retry chunks: each new chunk's message and
        how many items it holds. Google errors propagate (the caller translates them)."""
        task = str(batch.doc["task"])
        spec = get_task(task)
        most = self._chunk_items(task)
        made: list[tuple[ChunkMessage, int]] = []
        group: list[_Source] = []
        items = used = 0
        for source in self._sources(chunks, spec):
            n = len(source.positions)
            if group and (items + n > most or used + source.size > DOC_BUDGET_BYTES):
                made.extend(self._commit(batch, chunks, spec, group))
                group, items, used = [], 0, 0
            group.append(source)
            items += n
            used += source.size
        if group:
            made.extend(self._commit(batch, chunks, spec, group))
        return made

    def publish(self, messages: list[ChunkMessage], batch_id: str) -> None:
        if not messages:
            return
        try:
            self._publisher.publish_chunks(messages)
        except PublishFailed:
            logger.warning(
                "retry chunks not published; the reconciler will",
                extra={"batch_id": batch_id, "chunks": len(messages)},
            )

    def _sources(self, chunks: Any, spec: TaskSpec) -> Iterator[_Source]:
        """Every ended chunk with failed items, in id order, read with its inputs a few at a
        time."""
        query = (
            chunks.where(
                filter=FieldFilter(
                    "status", "in", [JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]
                )
            )
            .order_by(FieldPath.document_id())
            .select(["items"])
            .limit(SCAN_PAGE)
        )
        last: Any = None
        while True:
            page = query.start_after(last) if last is not None else query
            snapshots = list(page.stream(retry=self._retry, timeout=self._timeout_s))
            wanted = [s.reference for s in snapshots if FAILED in str(s.get("items") or "")]
            for start in range(0, len(wanted), READS):
                for snapshot in self._client.get_all(
                    wanted[start : start + READS],
                    field_paths=SOURCE_FIELDS,
                    retry=self._retry,
                    timeout=self._timeout_s,
                ):
                    if (source := _source(snapshot, spec)) is not None:
                        yield source
            if len(snapshots) < SCAN_PAGE:
                return
            last = snapshots[-1]

    def _commit(
        self, batch: StoredBatch, chunks: Any, spec: TaskSpec, group: list[_Source]
    ) -> list[tuple[ChunkMessage, int]]:
        try:
            with translated(StoreUnavailable, "retry commit"):
                return [self._write(batch, chunks, group)]
        except PreconditionFailed:
            pass  # a source changed since it was read (a concurrent retry): each on its own
        made = []
        for stale in group:
            with translated(StoreUnavailable, "retry read"):
                snapshot = stale.ref.get(
                    field_paths=SOURCE_FIELDS, retry=self._retry, timeout=self._timeout_s
                )
            fresh = _source(snapshot, spec)
            if fresh is None:
                continue  # its failed items moved already
            try:
                with translated(StoreUnavailable, "retry commit"):
                    made.append(self._write(batch, chunks, [fresh]))
            except PreconditionFailed:
                continue  # moved again meanwhile: that retry has them
        return made

    def _write(
        self, batch: StoredBatch, chunks: Any, group: list[_Source]
    ) -> tuple[ChunkMessage, int]:
        """One commit: the retry chunk created, each source's failed items marked moved to it,
        the counts moved from failed to queued."""
        now = datetime.now(UTC)
        name = RETRY_PREFIX + new_job_id()
        first = group[0].doc
        indexes = [index for source in group for index in source.indexes]
        doc = {
            "tenant": first["tenant"],
            "task": batch.doc["task"],
            "batch_id": batch.id,
            "batch_path": first["batch_path"],
            "part": first.get("part", 0),
            "retry_of": [source.ref.id for source in group],
            "indexes": indexes,
            "n": len(indexes),
            "inputs": pack_inputs(line for source in group for line in source.lines),
            "items": CODE_OF["queued"] * len(indexes),
            "status": JobStatus.QUEUED.value,
            COUNTED_FLAG: True,
            "attempts": 0,
            "terminal_writes": 0,
            "created_at": now,
            "updated_at": now,
            "expire_at": now + timedelta(seconds=self._result_ttl_s),
        }
        writes = self._client.batch()
        writes.create(chunks.document(name), doc)
        deltas = CountDeltas()
        for source in group:
            items = list(str(source.doc["items"]))
            moved = dict(source.doc.get("moved") or {})
            for position in source.positions:
                items[position] = MOVED
                moved[str(position)] = name
            writes.update(
                source.ref,
                {"items": "".join(items), "moved": moved, "updated_at": now},
                option=self._client.write_option(last_update_time=source.update_time),
            )
            # Its failed items are queued again: the batch's counts and the tenant's in flight.
            as_failed = {**source.doc, "status": JobStatus.FAILED.value}
            deltas.move(as_failed, JobStatus.QUEUED, count=len(source.positions))
        deltas.write(writes, self._client, now)
        # A fresh id: AlreadyExists means an earlier try of this very commit landed.
        with contextlib.suppress(gexc.AlreadyExists):
            writes.commit(retry=self._retry, timeout=self._timeout_s)
        message = ChunkMessage(
            batch_id=batch.id, chunk_id=name, task=str(batch.doc["task"]), tenant=doc["tenant"]
        )
        return message, len(indexes)


def _source(snapshot: Any, spec: TaskSpec) -> _Source | None:
    """The chunk's failed items, or None when it has none (any more)."""
    if not snapshot.exists:
        return None
    doc = snapshot.to_dict() or {}
    if doc.get("status") not in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
        return None
    items = str(doc.get("items") or "")
    positions = [p for p, code in enumerate(items) if code == FAILED]
    if not positions:
        return None
    lines = unpack_inputs(doc.pop("inputs", b"") or b"")
    indexes = item_indexes(doc)
    chosen = [lines[p] for p in positions]
    size = sum(_item_size(spec, line) for line in chosen)
    return _Source(
        ref=snapshot.reference,
        update_time=snapshot.update_time,
        doc=doc,
        positions=positions,
        indexes=[indexes[p] for p in positions],
        lines=chosen,
        size=size,
    )


def _item_size(spec: TaskSpec, line: bytes) -> int:
    try:
        bound = result_bound(spec.name, spec.input_model.model_validate_json(line), len(line))
    except ValidationError:
        bound = max(16 * 1024, len(line) * 4)  # validated at acceptance: never expected here
    return len(line) + bound + ITEM_OVERHEAD_BYTES
