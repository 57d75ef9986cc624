"""Batch documents as the ingress writes them: a request's acceptance, an open batch's parts, its
close. Chunks are written by ``ingress/batches/chunkwriter.py``; what happens to them after
acceptance (results, cancel, retry) is ``ingress/batches/chunkstore.py``'s.

A request that brings items (a batch's creating request, or a part of an open batch) is accepted
in four steps:

1. ``begin_create`` writes the batch document ``state: creating``; ``begin_part`` takes the open
   batch's append lease (``appending_token``, ``appending_until``: one part at a time, so two
   parts never claim the same indexes; a second concurrent part gets ``PartRefused``, a 409).
   Either returns a ``Part``: its first index, and the batch document's update time.
2. ``chunk_writer`` writes the request's chunks ``pending`` as its lines arrive.
3. ``accept``: **one commit** flips the part's chunks to ``queued`` (each under its write's update
   time), counts its items (``CountDeltas.added``: the batch's ``total`` and ``queued``, the
   tenant's in flight) and updates the batch document (``state: accepted``, ``items_accepted``,
   ``parts``, the lease released) under the update time of step 1. So a part whose batch was
   cancelled or closed meanwhile, or whose lease expired and went to another part, accepts
   nothing (``PartLost``), and a retried commit that had landed is recognised
   (``last_part_token``) instead of counting twice.
4. The caller publishes one message per chunk; a publish that fails leaves the chunks queued, for
   the reconciler.

A request that fails before step 3 deletes its chunks and its creating batch document (or frees
its lease): nothing of it is kept.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from common import tracing
from common.googleapi import (
    BackendError,
    Missing,
    PreconditionFailed,
    translated,
)
from common.pacing import active_chunks
from ingress.batches.chunkwriter import (
    ACCEPT_TOKEN,
    ChunkWriter,
    Written,
    chunk_updates,
    delete_chunks,
)
from ingress.batches.documents import Batch, BatchDocuments
from ingress.errors import StoreUnavailable
from ingress.publisher import JobPublisher
from schemas import get_task
from schemas.batches import COUNTED, CountDeltas
from schemas.chunks import CHUNKS, HELD, ChunkMessage, result_bound
from schemas.jobs import JobStatus

logger = logging.getLogger(__name__)

APPEND_LEASE_S = 300.0
"""Seconds one part holds its batch's append lease: longer than any part takes to upload and
accept (32 MiB), so a live part never loses it; a part whose request died blocks the batch's
next part this long at most."""


class PartRefused(Exception):
    """The batch takes no part now (closed, cancelled, expired, or another part is being
    appended); the message says which, for the 409."""


class PartLost(Exception):
    """The accept commit found the batch changed since the part began (a cancel, or its lease
    went to another part): nothing of the part was accepted."""


@dataclass(frozen=True)
class Part:
    """A request being accepted into a batch: ``index`` (0 for the creating request), ``base``
    (the batch index of its first item), ``token`` (names its chunks and its lease) and the batch
    document's ``update_time`` when it began (the accept commit's precondition)."""

    batch_id: str
    batch_path: str
    tenant: str
    task: str
    index: int
    base: int
    token: str
    update_time: datetime
    creating: bool
    webhook: bool = False
    window: int | None = None
    """Chunks of the batch published at once (``common/pacing.py``); None: every chunk (a batch
    from before windows)."""


class BatchStore(BatchDocuments):
    def __init__(
        self,
        client: firestore.Client,
        batches_collection: str,
        publisher: JobPublisher,
        timeout_s: float,
        result_ttl_s: float,
    ):
        super().__init__(client, batches_collection, timeout_s)
        self._publisher = publisher
        self._result_ttl_s = result_ttl_s

    # -- begin ---------------------------------------------------------------------------------

    def begin_create(
        self,
        batch_id: str,
        tenant: str,
        task: str,
        metadata: dict[str, str] | None,
        webhook: str | None,
        open_ttl_s: float | None,
        deadline: datetime | None = None,
        window: int | None = None,
    ) -> Part:
        """Write the new batch's document, ``creating`` (an open batch when ``open_ttl_s``)."""
        now = datetime.now(UTC)
        ref = self._batches.document(batch_id)
        doc: dict[str, Any] = {
            "tenant": tenant,
            "task": task,
            "state": "creating",
            "created_at": now,
            "updated_at": now,
            "metadata": metadata or {},
            # Every item is counted in the shards as its part is accepted (``added``).
            "counts": {"total": 0, **{s: 0 for s in COUNTED}},
            "cancel_requested": False,
            "open": open_ttl_s is not None,
            "items_accepted": 0,
            "parts": 0,
            "expire_at": now + timedelta(seconds=self._result_ttl_s),
            "trace_id": tracing.trace_id(),
        }
        if open_ttl_s is not None:
            doc["open_expires_at"] = now + timedelta(seconds=open_ttl_s)
        if webhook is not None:
            doc["webhook"] = webhook
        if deadline is not None:
            doc["deadline"] = deadline  # read by every chunk's claim (worker/chunkstore.py)
        if window is not None:
            doc["window"] = window  # read by every part and the reconciler's top-up
        with translated(StoreUnavailable, "batch create"):
            result = ref.create(doc, retry=self._retry, timeout=self._timeout_s)
        return Part(
            batch_id=batch_id,
            batch_path=ref.path,
            tenant=tenant,
            task=task,
            index=0,
            base=0,
            token=secrets.token_hex(8),
            update_time=result.update_time,
            creating=True,
            webhook=webhook is not None,
            window=window,
        )

    def begin_part(self, batch: Batch) -> Part:
        """Take the open batch's append lease for one part; ``PartRefused`` when it takes none
        now. ``batch`` is the tenant's, as the caller read it (``get``): the lease is taken only
        while the document is still as read."""
        ref = self._batches.document(batch.id)
        token = secrets.token_hex(8)
        now = datetime.now(UTC)
        doc = batch.doc
        try:
            with translated(StoreUnavailable, "part lease"):
                _check_appendable(doc, now)
                result = ref.update(
                    {
                        "appending_token": token,
                        "appending_until": now + timedelta(seconds=APPEND_LEASE_S),
                        "updated_at": now,
                    },
                    option=self._client.write_option(last_update_time=batch.update_time),
                    timeout=self._timeout_s,
                )
        except PreconditionFailed:
            raise PartRefused(_BUSY) from None
        return Part(
            batch_id=batch.id,
            batch_path=ref.path,
            tenant=str(doc["tenant"]),
            task=str(doc["task"]),
            index=int(doc.get("parts") or 0),
            base=int(doc.get("items_accepted") or 0),
            token=token,
            update_time=result.update_time,
            creating=False,
            window=int(doc["window"]) if doc.get("window") else None,
        )

    def chunk_writer(self, part: Part, max_items: int) -> ChunkWriter:
        """The writer of ``part``'s chunks."""
        spec = get_task(part.task)
        now = datetime.now(UTC)
        fields = {
            "tenant": part.tenant,
            "task": part.task,
            "batch_id": part.batch_id,
            "batch_path": part.batch_path,
            "part": part.index,
            ACCEPT_TOKEN: part.token,
            # Its items count against the tenant's in-flight cap from the accept commit on.
            "in_flight_counted": True,
            "attempts": 0,
            "terminal_writes": 0,
            "created_at": now,
        }
        return ChunkWriter(
            self._client,
            self._batches.document(part.batch_id),
            fields,
            part.base,
            max_items,
            lambda task_input, size: result_bound(spec.name, task_input, size),
            self._timeout_s,
            self._retry,
        )

    # -- accept --------------------------------------------------------------------------------

    def accept(
        self,
        part: Part,
        written: list[Written],
        items: int,
        also: Callable[[Any], None] | None = None,
    ) -> list[Written]:
        """The part's one accept commit (module docstring); ``also`` adds writes of the caller's
        to it (an ``Idempotency-Key``'s record). ``PartLost`` when the batch changed since the
        part began; ``StoreUnavailable`` when the store did not answer (the outcome unknown).

        The chunks the batch's window has room for are ``queued`` (the ones to publish, which it
        returns), the rest ``held`` (``common/pacing.py``)."""
        room = len(written)
        if part.window is not None:
            active = (
                0
                if part.creating
                else active_chunks(
                    self._batches.document(part.batch_id), part.window, StoreUnavailable
                )
            )
            room = max(0, part.window - active)
        now = datetime.now(UTC)
        expire_at = now + timedelta(seconds=self._result_ttl_s)
        writes = self._client.batch()
        chunks = self._batches.document(part.batch_id).collection(CHUNKS)
        queued = {"status": JobStatus.QUEUED.value, "updated_at": now, "expire_at": expire_at}
        writes._add_write_pbs(chunk_updates(chunks, written[:room], queued))
        held = {**queued, "status": HELD}
        writes._add_write_pbs(chunk_updates(chunks, written[room:], held))
        deltas = CountDeltas()
        if items:
            deltas.added(part.batch_path, part.tenant, items)
        deltas.write(writes, self._client, now)
        changes: dict[str, Any] = {
            "items_accepted": part.base + items,
            "parts": part.index + (1 if items else 0),
            "last_part_token": part.token,
            "updated_at": now,
            "expire_at": expire_at,
        }
        if part.creating:
            changes["state"] = "accepted"
            if part.webhook:
                # Only now: an abandoned batch (its client got an error) never calls.
                changes["webhook_pending"] = True
        else:
            changes.update(appending_token=None, appending_until=None)
        ref = self._batches.document(part.batch_id)
        writes.update(
            ref, changes, option=self._client.write_option(last_update_time=part.update_time)
        )
        if also is not None:
            also(writes)
        try:
            with translated(StoreUnavailable, "accept"):
                writes.commit(retry=self._retry, timeout=self._timeout_s)
        except (PreconditionFailed, Missing) as exc:
            if self._landed(ref, part.token):
                # An earlier try of this very commit landed; its retry found it changed.
                return written[:room]
            raise PartLost(part.batch_id) from exc
        return written[:room]

    def _landed(self, ref: Any, token: str) -> bool:
        with translated(StoreUnavailable, "batch read"):
            snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
        return bool(snapshot.exists and (snapshot.to_dict() or {}).get("last_part_token") == token)

    def discard(self, part: Part, written: list[Written]) -> None:
        """Delete a part's chunks (only as it wrote them): the part will not be accepted."""
        chunks = self._batches.document(part.batch_id).collection(CHUNKS)
        delete_chunks(self._client, chunks, written, self._timeout_s, self._retry)

    def give_up(self, part: Part) -> None:
        """A part that will not be accepted (its chunks already discarded): a new batch's
        document goes, a part frees its lease. Best effort: a creating batch left behind is
        never shown (``get`` reads accepted ones only), a lease left behind expires."""
        ref = self._batches.document(part.batch_id)
        option = self._client.write_option(last_update_time=part.update_time)
        try:
            with translated(StoreUnavailable, "part release"):
                if part.creating:
                    ref.delete(option=option, timeout=self._timeout_s)
                else:
                    ref.update(
                        {"appending_token": None, "appending_until": None},
                        option=option,
                        timeout=self._timeout_s,
                    )
        except (BackendError, StoreUnavailable) as exc:
            logger.warning("could not let go of a failed part: %s", type(exc).__name__)

    def abandon(self, batch_id: str) -> None:
        """A batch whose creation cannot finish (its request died, or its accept commit's
        outcome is unknown): no item of it may run. Its chunks, if any were accepted, end
        ``cancelled`` when claimed (the reconciler publishes queued chunks)."""
        try:
            with translated(StoreUnavailable, "batch abandon"):
                self._batches.document(batch_id).update(
                    {"state": "abandoned", "cancel_requested": True}, timeout=self._timeout_s
                )
        except (BackendError, StoreUnavailable):
            logger.exception("could not mark an abandoned batch", extra={"batch_id": batch_id})

    def publish(self, part: Part, written: list[Written]) -> None:
        """One message per accepted chunk; ``PublishFailed`` leaves them to the reconciler."""
        self._publisher.publish_chunks(
            [
                ChunkMessage(
                    batch_id=part.batch_id,
                    chunk_id=chunk.chunk_id,
                    task=part.task,
                    tenant=part.tenant,
                )
                for chunk in written
            ]
        )

    # -- close ---------------------------------------------------------------------------------

    def close(self, batch: Batch) -> None:
        """No more parts: ``open`` false and ``closed_at``. A batch not open is left as it is
        (closing twice is fine); ``PartRefused`` while a part is being appended. ``batch`` as
        the caller read it (``get``): it is closed only while the document is still as read."""
        now = datetime.now(UTC)
        if not batch.doc.get("open"):
            return
        if _lease_live(batch.doc, now):
            raise PartRefused(
                "a part of this batch is being appended; close it once that part is answered"
            )
        try:
            with translated(StoreUnavailable, "batch close"):
                self._batches.document(batch.id).update(
                    {"open": False, "closed_at": now, "updated_at": now},
                    option=self._client.write_option(last_update_time=batch.update_time),
                    timeout=self._timeout_s,
                )
        except PreconditionFailed:
            raise PartRefused(_BUSY) from None


_BUSY = "another part of this batch is being appended; send this part again once it is answered"


def _lease_live(doc: dict[str, Any], now: datetime) -> bool:
    until = doc.get("appending_until")
    return bool(doc.get("appending_token")) and until is not None and until > now


def _check_appendable(doc: dict[str, Any], now: datetime) -> None:
    """``PartRefused`` unless the open batch ``doc`` takes a part now."""
    if doc.get("cancel_requested"):
        raise PartRefused("the batch was cancelled; it takes no more parts")
    if not doc.get("open"):
        if doc.get("closed_at") is not None:
            raise PartRefused("the batch was closed; it takes no more parts")
        raise PartRefused("the batch was not created open (?open=1); it takes no parts")
    expires = doc.get("open_expires_at")
    if expires is not None and expires <= now:
        raise PartRefused("the open batch expired without a close; it takes no more parts")
    if _lease_live(doc, now):
        raise PartRefused(_BUSY)
