"""A batch's chunks (``batches/ID/chunks``, ``schemas/chunks.py``) as the ingress reads them,
cancels them and retries their failed items.

Reading never loads a batch at once: results go a page of chunks at a time in document id order
(an original chunk's id is its zero-padded ``start``, so id order is input order; retry chunks,
``r…``, sort after them and are left out of that scan), and an item a retry moved (``>``) is read
from the chunk ``moved`` names, each page's retry chunks in one ``get_all`` (again for a retry of
a retry), so each item shows its latest outcome. ``pending`` chunks (a part not accepted yet, or a
dead request's) are not the batch's and are skipped.

Item events are a cursor over chunk completions: every terminal chunk commit writes ``done_at``
(its server timestamp), and ``completions`` reads chunks by ``(done_at, id)``, each item it ended
an event with id ``event_id(done_at, chunk, position)``. A query at read time R sees every commit
stamped at or before R, so a chunk read later has a later ``done_at``: reading on from the last id
sent loses nothing and repeats nothing.

Cancel records ``cancel_requested`` and sweeps the queued chunks in the background
(``ingress/batches/chunkcancel.py``); retry moves exactly the failed items to new retry chunks
(``ingress/batches/chunkretry.py``). Both move counts with
``CountDeltas`` in the same commit as the chunks they change. Every Google error becomes
``StoreUnavailable``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from common.googleapi import PreconditionFailed, bounded_retry, translated
from ingress.batches.chunkcancel import CancelSweeper
from ingress.batches.chunkretry import BatchCancelled, RetryPlanner
from ingress.batches.documents import Batch as StoredBatch
from ingress.errors import AlreadyFinished, StoreUnavailable
from ingress.publisher import JobPublisher
from schemas.batches import COUNTERS, BatchStatus, batch_status, counts_of
from schemas.chunks import (
    CHUNKS,
    CODE_OF,
    MOVED,
    PENDING,
    RETRY_PREFIX,
    event_id,
    item_indexes,
    item_line,
    parse_event_id,
)
from schemas.jobs import JobStatus

__all__ = ["BatchCancelled", "ChunkStore", "EventKey"]

EventKey = tuple[int, str, int]
"""An item event's id as ``parse_event_id`` reads it: (done_at µs, chunk id, position)."""

DOC_ID = FieldPath.document_id()
READ_FIELDS = ["status", "start", "indexes", "n", "items", "errors", "moved", "attempts"]
"""What a results line needs of a chunk, its results aside (never its inputs)."""
PLACE_FIELDS = ["status", "start", "n"]
"""What finding the chunk that holds an index needs (``_holding`` reads up to ``LOOKBACK``)."""
RESULTS_PAGE = 8
"""Chunks read at once with their results: each is under ``DOC_BUDGET_BYTES`` (~0.9 MB), so a
results stream holds a few MB whatever the batch's size."""
LINES_PAGE = 100
"""Chunks read at once without their results (a few KB each)."""
LOOKBACK = 8
"""Chunks read below an index to find the one holding it: a dead request's ``pending`` chunk may
sort between the accepted one and the index."""
FINISHED = frozenset(CODE_OF[s] for s in ("succeeded", "failed", "cancelled"))
"""Item letters that an ``item`` event reports (not queued, running or moved)."""
LAST_POSITION = 99_999
"""Above every position ``event_id`` writes (five digits)."""
CANCEL_ATTEMPTS = 5
"""Conditional cancel writes tried before giving up with 503: each failure means the batch
document changed meanwhile (another cancel, a part, a close), and is read again."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ChunkStore:
    def __init__(
        self,
        client: firestore.Client,
        batches_collection: str,
        publisher: JobPublisher,
        timeout_s: float,
        result_ttl_s: float,
        chunk_items: Callable[[str], int],
    ):
        self._client = client
        self._batches = client.collection(batches_collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self._result_ttl_s = result_ttl_s
        self._retrier = RetryPlanner(client, publisher, timeout_s, result_ttl_s, chunk_items)
        self._sweeper = CancelSweeper(client, self._chunks, timeout_s, result_ttl_s)

    def _chunks(self, batch_id: str) -> Any:
        return self._batches.document(batch_id).collection(CHUNKS)

    def shards(self, batch_id: str) -> Any:
        """The batch's counter shards, for a listener."""
        return self._batches.document(batch_id).collection(COUNTERS)

    def document(self, batch_id: str) -> Any:
        """The batch document, for a listener."""
        return self._batches.document(batch_id)

    def _read(self, query: Any, what: str) -> list[Any]:
        with translated(StoreUnavailable, f"{what} read"):
            return list(query.stream(retry=self._retry, timeout=self._timeout_s))

    # -- results -------------------------------------------------------------------------------

    def lines(
        self, batch_id: str, total: int, status: str | None = None, after: int = -1
    ) -> Iterator[dict[str, Any]]:
        """Each item's results line from index ``after + 1`` on, in input order (only those in
        ``status``, if given), a page of chunks at a time."""
        first = after + 1
        with_result = status in (None, JobStatus.SUCCEEDED.value)
        fields = [*READ_FIELDS, "results"] if with_result else READ_FIELDS
        size = RESULTS_PAGE if with_result else LINES_PAGE
        holding = self._holding(batch_id, first) if first < total else None
        if holding is None:
            return
        chunks = self._chunks(batch_id)
        query = (
            chunks.where(filter=FieldFilter(DOC_ID, ">=", chunks.document(holding[0])))
            .where(filter=FieldFilter(DOC_ID, "<", chunks.document(RETRY_PREFIX)))
            .order_by(DOC_ID)
            .select(fields)
            .limit(size)
        )
        last: Any = None
        while True:
            snapshots = self._read(
                query.start_after(last) if last is not None else query, "results"
            )
            located = []
            for snapshot in snapshots:
                doc = snapshot.to_dict() or {}
                if doc.get("status") == PENDING:
                    continue
                for position, index in enumerate(item_indexes(doc)):
                    if first <= index < total:
                        located.append((index, doc, position))
            for index, doc, position in self._latest(batch_id, located, fields):
                line = item_line(index, doc, position, with_result)
                if status is None or line["status"] == status:
                    yield line
            if len(snapshots) < size or (located and located[-1][0] >= total - 1):
                return
            last = snapshots[-1]

    def item(self, batch_id: str, index: int) -> dict[str, Any] | None:
        """One item's results line; None when no accepted chunk holds ``index``."""
        fields = [*READ_FIELDS, "results"]
        holding = self._holding(batch_id, index)
        if holding is None:
            return None
        # Found by its place alone, then read whole: the lookback never reads up to
        # ``LOOKBACK`` chunks with their results (~0.9 MB each) for one line.
        doc = self._get_all(batch_id, [holding[0]], fields).get(holding[0])
        if doc is None:
            return None
        located = [(index, doc, index - int(holding[1]["start"]))]
        [(_, latest, position)] = self._latest(batch_id, located, fields)
        return item_line(index, latest, position)

    def _holding(self, batch_id: str, index: int) -> tuple[str, dict[str, Any]] | None:
        """The accepted original chunk that holds ``index`` (its id, and its ``PLACE_FIELDS``):
        the nearest that starts at or before it."""
        # By ``start``, not by id: the emulator refuses descending key scans. Retry chunks
        # have no ``start`` and so are not in this index.
        query = (
            self._chunks(batch_id)
            .where(filter=FieldFilter("start", "<=", index))
            .order_by("start", direction=firestore.Query.DESCENDING)
            .select(PLACE_FIELDS)
            .limit(LOOKBACK)
        )
        for snapshot in self._read(query, "chunk"):
            doc = snapshot.to_dict() or {}
            if doc.get("status") == PENDING:
                continue
            start = int(doc.get("start") or 0)
            return (snapshot.id, doc) if start <= index < start + int(doc["n"]) else None
        return None

    def _latest(
        self, batch_id: str, located: list[tuple[int, dict[str, Any], int]], fields: list[str]
    ) -> list[tuple[int, dict[str, Any], int]]:
        """Each (index, chunk, position) with moved items replaced by where a retry put them:
        one ``get_all`` per level of retries, for the whole page."""
        out = list(located)
        positions: dict[str, dict[int, int]] = {}
        while True:
            waiting = {
                i: str((doc.get("moved") or {}).get(str(position)) or "")
                for i, (_, doc, position) in enumerate(out)
                if _letter(doc, position) == MOVED
            }
            if not waiting:
                return out
            wanted = sorted({target for target in waiting.values() if target})
            docs = self._get_all(batch_id, wanted, fields)
            for i, target in waiting.items():
                index = out[i][0]
                doc = docs.get(target)
                if doc is None:
                    # Not found (its TTL went first): the item's outcome is unknown; never loop.
                    out[i] = (index, {"items": ""}, 0)
                    continue
                where = positions.setdefault(
                    target, {idx: pos for pos, idx in enumerate(item_indexes(doc))}
                )
                out[i] = (index, doc, where[index]) if index in where else (index, {"items": ""}, 0)

    def _get_all(self, batch_id: str, ids: list[str], fields: list[str]) -> dict[str, Any]:
        if not ids:
            return {}
        chunks = self._chunks(batch_id)
        with translated(StoreUnavailable, "chunk read"):
            snapshots = self._client.get_all(
                [chunks.document(i) for i in ids],
                field_paths=fields,
                retry=self._retry,
                timeout=self._timeout_s,
            )
            return {s.id: s.to_dict() or {} for s in snapshots if s.exists}

    # -- item events ---------------------------------------------------------------------------

    def completions(
        self, batch_id: str, after: EventKey | None, with_results: bool
    ) -> Iterator[tuple[EventKey, str, dict[str, Any]]]:
        """``(key, event id, results line)`` of every item a chunk ended after ``after`` (None:
        from the first), in event id order.

        The key of a chunk's last item has position ``LAST_POSITION``, as ``latest_completion``'s
        has: a cursor that says its chunk was sent whole, so the next call starts after that
        chunk rather than reading it (with its results) again at every look of a stream."""
        fields = [*READ_FIELDS, "done_at", *(["results"] if with_results else [])]
        size = RESULTS_PAGE if with_results else LINES_PAGE
        query = self._chunks(batch_id).order_by("done_at").order_by(DOC_ID)
        if after is not None:
            at = _EPOCH + timedelta(microseconds=after[0])
            if after[2] == LAST_POSITION:
                query = query.start_after({"done_at": at, "__name__": after[1]})
            else:  # a client's Last-Event-ID, maybe within a chunk: read that chunk again
                # One µs lower: event_id's float arithmetic may round a time down by one.
                lower = at - timedelta(microseconds=1)
                query = query.where(filter=FieldFilter("done_at", ">=", lower))
        query = query.select(fields).limit(size)
        last: Any = None
        while True:
            snapshots = self._read(
                query.start_after(last) if last is not None else query, "item event"
            )
            for snapshot in snapshots:
                doc = snapshot.to_dict() or {}
                done_at = doc.get("done_at")
                if done_at is None:
                    continue
                ended = []
                for position, index in enumerate(item_indexes(doc)):
                    if _letter(doc, position) not in FINISHED:
                        continue
                    eid = event_id(done_at, snapshot.id, position)
                    key = parse_event_id(eid)
                    assert key is not None
                    if after is None or key > after:
                        ended.append((key, eid, item_line(index, doc, position, with_results)))
                if ended:  # a terminal chunk's letters do not change: the whole of it is sent
                    key, eid, line = ended[-1]
                    ended[-1] = ((key[0], key[1], LAST_POSITION), eid, line)
                yield from ended
            if len(snapshots) < size:
                return
            last = snapshots[-1]

    def latest_completion(self, batch_id: str) -> EventKey | None:
        """A key after every item event so far (None: no chunk has ended yet)."""
        query = (
            self._chunks(batch_id)
            .order_by("done_at", direction=firestore.Query.DESCENDING)
            .order_by(DOC_ID, direction=firestore.Query.DESCENDING)
            .select(["done_at"])
            .limit(1)
        )
        for snapshot in self._read(query, "item event"):
            key = parse_event_id(
                event_id((snapshot.to_dict() or {})["done_at"], snapshot.id, LAST_POSITION)
            )
            return key
        return None

    # -- cancel --------------------------------------------------------------------------------

    def request_cancel(self, batch: StoredBatch) -> StoredBatch:
        """Record the cancel (no chunk of the batch starts from now on; an open batch takes no
        more parts) and start the sweep of its queued chunks; ``AlreadyFinished`` when the batch
        has ended. The write is conditioned on the batch document as read, so of any number of
        cancels racing, in this process or others, exactly one records it and starts a sweep;
        the rest, and any later one, are answered from the batch and start nothing."""
        # Names this request's write: one that landed but whose answer was lost fails its
        # retry's precondition, and the batch read again shows whose cancel it recorded.
        token = secrets.token_hex(8)
        for _ in range(CANCEL_ATTEMPTS):
            cancelled = bool(batch.doc.get("cancel_requested"))
            status = batch_status(
                counts_of(batch.doc, batch.shards), cancelled, bool(batch.doc.get("open"))
            )
            if cancelled and batch.doc.get("cancel_token") == token:
                break  # ours landed
            if status not in (BatchStatus.RUNNING, BatchStatus.OPEN):
                raise AlreadyFinished({"status": status.value})
            if cancelled:
                return batch
            now = datetime.now(UTC)
            changes: dict[str, Any] = {
                "cancel_requested": True,
                "cancel_token": token,
                "cancelled_at": now,
                "updated_at": now,
            }
            if batch.doc.get("open"):
                changes.update(open=False, closed_at=now)
            ref = self._batches.document(batch.id)
            try:
                with translated(StoreUnavailable, "batch cancel"):
                    ref.update(
                        changes,
                        option=self._client.write_option(last_update_time=batch.update_time),
                        retry=self._retry,
                        timeout=self._timeout_s,
                    )
            except PreconditionFailed:
                batch = self._reread(batch)  # it changed since read: decide again on what it is
                continue
            batch.doc.update(changes)
            break
        else:
            raise StoreUnavailable("Firestore batch cancel failed: the batch kept changing")
        self._sweeper.start(batch.id, str(batch.doc.get("tenant")))
        return batch

    def _reread(self, batch: StoredBatch) -> StoredBatch:
        """The batch document read again, with the counts read before (a cancel decides on the
        document's fields; the counts only say whether the batch had ended)."""
        with translated(StoreUnavailable, "batch read"):
            snapshot = self._batches.document(batch.id).get(
                retry=self._retry, timeout=self._timeout_s
            )
        if not snapshot.exists:  # expired meanwhile
            raise AlreadyFinished({"status": "expired"})
        return StoredBatch(batch.id, snapshot.to_dict() or {}, batch.shards, snapshot.update_time)

    # -- retry ---------------------------------------------------------------------------------

    def retry_failed(self, batch: StoredBatch) -> int:
        """Move every failed item to new queued retry chunks and publish them; how many moved.
        ``BatchCancelled`` for a cancelled batch. A batch with nothing failed is left as it is."""
        if batch.doc.get("cancel_requested"):
            raise BatchCancelled(batch.id)
        with translated(StoreUnavailable, "batch retry"):
            made = self._retrier.retry(batch, self._chunks(batch.id))
        moved = sum(n for _, n in made)
        if not moved:
            return 0
        self._retrier.publish([message for message, _ in made], batch.id)
        now = datetime.now(UTC)
        changes: dict[str, Any] = {
            "updated_at": now,
            "expire_at": now + timedelta(seconds=self._result_ttl_s),
        }
        if batch.doc.get("webhook"):
            # The batch will end again: its webhook is sent again then, as a new event.
            changes["webhook_pending"] = True
        with translated(StoreUnavailable, "batch retry"):
            self._batches.document(batch.id).update(
                changes, retry=self._retry, timeout=self._timeout_s
            )
        return moved


def _letter(doc: dict[str, Any], position: int) -> str:
    return str(doc.get("items") or "")[position : position + 1]
