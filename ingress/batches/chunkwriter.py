"""Writing one request's chunks (a batch's creating request, or a part) while its lines arrive.

Items go in one at a time (``add``); ``ChunkCutter`` decides where a chunk ends, and each full
chunk is written at once, as a ``pending`` document (``schemas/chunks.py``), by one of a few
writer threads. The reading thread waits for a free writer when ``WRITERS + QUEUED`` chunks are in
hand, so a request holds a few chunks in memory whatever its size, and a store that does not
answer stops the reading at the next chunk.

Every chunk is *created* (never overwritten blindly) and remembered with the update time of its
write: the accept commit and ``discard`` act on a chunk only under that precondition, so a chunk
another request wrote at the same id (a part whose lease expired while it was still running, see
``ingress/batches/store.py``) is never accepted, flipped or deleted by this one. A ``pending`` chunk
left at our id by a request that died is taken over (a transaction that overwrites it only while
it is still ``pending``); one that is not ``pending`` any more means this request lost its lease:
``ChunkTaken``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore
from opentelemetry import context as otel_context

from common.googleapi import (
    AlreadyExists,
    BackendError,
    Missing,
    PreconditionFailed,
    run_transaction,
    translated,
)
from ingress.errors import StoreUnavailable
from schemas.chunks import CHUNKS, PENDING, ChunkCutter, chunk_id, pack_inputs

logger = logging.getLogger(__name__)

WRITERS = 4
"""Chunk writes in flight at once: the store answers each in milliseconds to tens of them, so a
few in flight keep it busy while the request's thread validates the next lines."""
QUEUED = 2
"""Full chunks waiting for a writer at most; with the chunk being filled and ``WRITERS`` being
written, a request holds at most ``WRITERS + QUEUED + 1`` chunks (each under
``DOC_BUDGET_BYTES``)."""
PENDING_TTL_S = 2 * 3600.0
"""A pending chunk's ``expire_at``: a request that dies leaves its chunks to the TTL policy (the
accept commit moves it to the batch's)."""
DELETE_PAGE = 200
"""Chunks deleted per commit when a request's chunks are discarded."""
ACCEPT_TOKEN = "accept_token"  # noqa: S105 - a field name, not a secret
"""The chunk field naming the request that wrote it."""


class ChunkTaken(Exception):
    """A chunk id this request must write holds a chunk another request accepted: this request's
    part lost its lease (it ran past ``APPEND_LEASE_S`` and another part was accepted)."""


@dataclass(frozen=True)
class Written:
    """A chunk this request wrote: its id, its items, and its write's update time (the
    precondition of every later change this request makes to it)."""

    chunk_id: str
    start: int
    n: int
    update_time: datetime


class ChunkWriter:
    """The chunks of one request: cut, written as they fill, then kept or discarded whole.

    ``fields`` are the fields every chunk of the request shares (tenant, task, batch, part,
    ``accept_token``...); ``base`` is the batch index of the request's first item. Not
    thread-safe: one request's thread calls ``add``, ``stop``, ``finish`` and ``discard``."""

    def __init__(
        self,
        client: firestore.Client,
        batch_ref: Any,
        fields: dict[str, Any],
        base: int,
        max_items: int,
        result_bound: Callable[[Any, int], int],
        timeout_s: float,
        retry: Any,
    ):
        self._client = client
        self._chunks = batch_ref.collection(CHUNKS)
        self._token = fields[ACCEPT_TOKEN]
        self._bound = result_bound
        self._timeout_s = timeout_s
        self._retry = retry
        self._encoder = _Encoder(self._chunks, fields)
        self._cutter = ChunkCutter(max_items)
        self._lines: list[bytes] = []
        self._start = base
        self.items = 0
        """Items added (written or not)."""
        self.stopped = False
        # Each writer thread continues the request's trace.
        self._context = otel_context.get_current()
        self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="chunk-writer")
        # Bounds the chunks in hand (being written or waiting): taken by the request's thread
        # before it hands a chunk over, given back by the writer once the chunk is written.
        self._slots = threading.BoundedSemaphore(WRITERS + QUEUED)
        self._futures: list[Future[Written]] = []
        self._failed: Future[Written] | None = None
        """A write that raised (set by a writer thread; read by the request's)."""

    def add(self, line: bytes, task_input: Any) -> None:
        """One valid item: its input line (validated JSON) and its validated model."""
        self.items += 1
        if self.stopped:
            return
        size = len(line)
        bound = self._bound(task_input, size)
        if not self._cutter.fits(size, bound):
            self._flush()
        self._cutter.add(size, bound)
        self._lines.append(line)

    def stop(self) -> None:
        """Write nothing more (a bad line came: the request will be refused); ``add`` only
        counts from now on."""
        self.stopped = True
        self._lines = []

    def finish(self) -> list[Written]:
        """Write the last chunk and wait for every write; the chunks in input order. Raises
        what a write raised (``StoreUnavailable``, ``ChunkTaken``)."""
        self._flush()
        try:
            return [future.result() for future in self._futures]
        finally:
            self._pool.shutdown(wait=True)

    def discard(self) -> None:
        """Stop, wait for the writes under way, and delete every chunk this request wrote (only
        as it wrote it). Best effort: what cannot be deleted now is left to ``PENDING_TTL_S``."""
        self.stop()
        wait(self._futures)
        self._pool.shutdown(wait=True)
        written = [f.result() for f in self._futures if f.exception() is None]
        delete_chunks(self._client, self._chunks, written, self._timeout_s, self._retry)

    # -- writing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._lines:
            return
        lines, start = self._lines, self._start
        self._lines = []
        self._start += len(lines)
        self._cutter.reset()
        if self._failed is not None:
            self._failed.result()  # a write failed: stop reading now, the request fails anyway
        self._slots.acquire()
        future = self._pool.submit(self._write_in_context, start, lines)
        future.add_done_callback(self._written)
        self._futures.append(future)

    def _written(self, future: Future[Written]) -> None:
        if future.exception() is not None:
            self._failed = future
        self._slots.release()

    def _write_in_context(self, start: int, lines: list[bytes]) -> Written:
        token = otel_context.attach(self._context)
        try:
            return self._write(start, lines)
        finally:
            otel_context.detach(token)

    def _write(self, start: int, lines: list[bytes]) -> Written:
        name = chunk_id(start)
        inputs = pack_inputs(lines)
        now = datetime.now(UTC)
        try:
            with translated(StoreUnavailable, "chunk write"):
                writes = self._client.batch()
                writes._add_write_pbs([self._encoder.create(name, start, len(lines), inputs, now)])
                results = writes.commit(retry=self._retry, timeout=self._timeout_s)
            return Written(name, start, len(lines), results[0].update_time)
        except AlreadyExists:
            doc = {**self._encoder.fields(start, len(lines), inputs, now)}
            ref = self._chunks.document(name)
            return Written(name, start, len(lines), self._take_over(ref, doc))

    def _take_over(self, ref: Any, doc: dict[str, Any]) -> datetime:
        """The update time of our chunk at ``ref``, which exists already: our own create that
        landed on an earlier try, or a pending chunk a dead request left (overwritten here)."""

        def _overwrite(transaction: firestore.Transaction) -> None:
            snapshot = ref.get(transaction=transaction)
            current = snapshot.to_dict() if snapshot.exists else {}
            if current.get(ACCEPT_TOKEN) == self._token:
                return
            if snapshot.exists and current.get("status") != PENDING:
                raise ChunkTaken(ref.id)
            transaction.set(ref, doc)

        run_transaction(self._client, _overwrite, unavailable=StoreUnavailable, what="chunk write")
        with translated(StoreUnavailable, "chunk read"):
            snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
        if not snapshot.exists or (snapshot.to_dict() or {}).get(ACCEPT_TOKEN) != self._token:
            raise ChunkTaken(ref.id)  # a stale request of the same part overwrote it since
        update_time: datetime = snapshot.update_time
        return update_time


class _Encoder:
    """A request's chunk documents as ready-made protobuf writes.

    The Firestore client encodes every value through proto-plus wrappers (~0.5 ms a chunk
    document here, in the writer threads but under the GIL the request's thread needs): the
    fields a request's chunks share are encoded once, and each chunk sets only its own."""

    def __init__(self, chunks: Any, shared: dict[str, Any]):
        from google.cloud.firestore_v1 import _helpers
        from google.cloud.firestore_v1.types import document, write

        self._shared = shared
        self._document_pb = document.Document.pb()
        self._write_pb = write.Write.pb()
        now = datetime.now(UTC)
        fields = _helpers.encode_dict(self.fields(0, 0, b"", now))
        self._template = document.Document(fields=fields)._pb
        self._prefix = chunks.document("-")._document_path[:-1]

    def fields(self, start: int, n: int, inputs: bytes, now: datetime) -> dict[str, Any]:
        """The chunk document (``schemas/chunks.py``), pending."""
        return {
            **self._shared,
            "status": PENDING,
            "start": start,
            "n": n,
            "inputs": inputs,
            "items": "q" * n,
            "updated_at": now,
            "expire_at": now + timedelta(seconds=PENDING_TTL_S),
        }

    def create(self, name: str, start: int, n: int, inputs: bytes, now: datetime) -> Any:
        """The write that creates the chunk (failing if it exists)."""
        doc = self._document_pb()
        doc.CopyFrom(self._template)
        doc.name = self._prefix + name
        fields = doc.fields
        fields["start"].integer_value = start
        fields["n"].integer_value = n
        fields["inputs"].bytes_value = inputs
        fields["items"].string_value = "q" * n
        fields["updated_at"].timestamp_value.FromDatetime(now)
        fields["expire_at"].timestamp_value.FromDatetime(now + timedelta(seconds=PENDING_TTL_S))
        pb = self._write_pb(update=doc)
        pb.current_document.exists = False
        return pb


def delete_chunks(
    client: firestore.Client, chunks: Any, written: list[Written], timeout_s: float, retry: Any
) -> None:
    """Delete the chunks a request wrote, each only as it wrote it (its update time). Best
    effort: what cannot be deleted now is left to ``PENDING_TTL_S``."""
    for start in range(0, len(written), DELETE_PAGE):
        page = written[start : start + DELETE_PAGE]
        writes = client.batch()
        for chunk in page:
            writes.delete(
                chunks.document(chunk.chunk_id),
                option=client.write_option(last_update_time=chunk.update_time),
            )
        try:
            with translated(StoreUnavailable, "chunk delete"):
                writes.commit(retry=retry, timeout=timeout_s)
                continue
        except (PreconditionFailed, Missing):
            pass  # one of them is not ours any more: delete the others one by one
        except (BackendError, StoreUnavailable) as exc:
            logger.warning("pending chunks left to their TTL: %s", type(exc).__name__)
            return
        for chunk in page:
            try:
                with translated(StoreUnavailable, "chunk delete"):
                    chunks.document(chunk.chunk_id).delete(
                        option=client.write_option(last_update_time=chunk.update_time),
                        timeout=timeout_s,
                    )
            except (BackendError, StoreUnavailable):
                continue


def chunk_updates(chunks: Any, written: list[Written], changes: dict[str, Any]) -> list[Any]:
    """The same ``changes`` to each written chunk, each under its write's update time, as
    ready-made protobuf writes (the client's wrappers take ~0.5 ms an update: 0.2 s for the
    391 chunks of 100,000 embed items)."""
    if not written:
        return []
    from google.cloud.firestore_v1 import _helpers
    from google.cloud.firestore_v1.types import write

    first = chunks.document(written[0].chunk_id)._document_path
    template = _helpers.pbs_for_update(first, changes, None)[0]._pb
    prefix = first[: -len(written[0].chunk_id)]
    write_pb = write.Write.pb()
    pbs = []
    for chunk in written:
        pb = write_pb()
        pb.CopyFrom(template)
        pb.update.name = prefix + chunk.chunk_id
        pb.current_document.update_time.CopyFrom(chunk.update_time.timestamp_pb())  # type: ignore[attr-defined]
        pbs.append(pb)
    return pbs
