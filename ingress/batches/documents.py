"""Accepted batches as the ingress reads them (one, or a page of a tenant's, with their counter
shards) and deletes them. How batches are written is ``ingress/batches/store.py``'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import bounded_retry, run_transaction, translated
from ingress.errors import StoreUnavailable
from ingress.pages import Cursor, newest_first
from schemas.batches import COUNTERS, SHARDS, CountDeltas, counts_of


@dataclass(frozen=True)
class Batch:
    """A batch document and its counter shards, read together (no shards when read without
    its counts), and the document's update time as read."""

    id: str
    doc: dict[str, Any]
    shards: list[dict[str, Any]]
    update_time: datetime | None = None


class BatchDocuments:
    def __init__(self, client: firestore.Client, batches_collection: str, timeout_s: float):
        self._client = client
        self._batches = client.collection(batches_collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def document(self, batch_id: str) -> dict[str, Any] | None:
        """The batch document in any state (None if there is none)."""
        with translated(StoreUnavailable, "batch read"):
            snapshot = self._batches.document(batch_id).get(
                retry=self._retry, timeout=self._timeout_s
            )
        return snapshot.to_dict() if snapshot.exists else None

    def get(self, batch_id: str, counts: bool = True) -> Batch | None:
        """The accepted batch with its counts (without, ``shards`` empty: one document read, not
        ``1 + SHARDS``), or None."""
        ref = self._batches.document(batch_id)
        refs = [ref]
        if counts:
            refs += [ref.collection(COUNTERS).document(str(i)) for i in range(SHARDS)]
        with translated(StoreUnavailable, "batch read"):
            snapshots = list(self._client.get_all(refs, retry=self._retry, timeout=self._timeout_s))
        by_path = {s.reference.path: s for s in snapshots}
        main = by_path.get(ref.path)
        if main is None or not main.exists:
            return None
        doc = main.to_dict() or {}
        if doc.get("state") != "accepted":
            return None
        shards = [s.to_dict() or {} for s in snapshots if s.exists and s.reference.path != ref.path]
        return Batch(batch_id, doc, shards, main.update_time)

    def delete(self, batch_id: str, tenant: str, also: Sequence[Any] = ()) -> bool:
        """Delete the tenant's batch: its chunks first (nothing of it starts after that, and a
        worker running a chunk loses it at its next check, every write it could try being
        conditioned on the chunk), then, in one transaction, the batch document, its counter
        shards and the documents ``also`` names, with its items still in flight taken off its
        tenant's count. The counts are read in that transaction, after the chunks are gone, so
        an outcome that landed before is not taken off twice. False if there is no such batch."""
        ref = self._batches.document(batch_id)
        with translated(StoreUnavailable, "batch delete"):
            snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
            if not snapshot.exists or (snapshot.to_dict() or {}).get("tenant") != tenant:
                return False
            for collection in ref.collections(retry=self._retry, timeout=self._timeout_s):
                if collection.id != COUNTERS:
                    self._client.recursive_delete(collection)
        shard_refs = [ref.collection(COUNTERS).document(str(i)) for i in range(SHARDS)]

        def _delete(transaction: firestore.Transaction) -> bool:
            snapshots = list(self._client.get_all([ref, *shard_refs], transaction=transaction))
            docs = {s.reference.path: s.to_dict() for s in snapshots if s.exists}
            doc = docs.pop(ref.path, None)
            if doc is None or doc.get("tenant") != tenant:
                return False
            in_flight = counts_of(doc, [d or {} for d in docs.values()]).in_flight
            for deleted in (ref, *shard_refs, *also):
                transaction.delete(deleted)
            deltas = CountDeltas()
            deltas.removed(tenant, in_flight)
            deltas.write(transaction, self._client, datetime.now(UTC))
            return True

        deleted: bool = run_transaction(
            self._client, _delete, unavailable=StoreUnavailable, what="batch delete"
        )
        return deleted

    def page(
        self,
        tenant: str,
        *,
        limit: int,
        task: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: Cursor | None = None,
    ) -> tuple[list[Batch], Cursor | None]:
        """A page of the tenant's accepted batches with their counts, newest first, and the
        cursor of the next page: one query for the documents (``ingress.pages.newest_first``),
        one ``get_all`` for every shard of the page (``limit * SHARDS`` reads at most)."""
        docs, cursor = newest_first(
            self._batches,
            tenant,
            limit=limit,
            fields=None,
            equal={"task": task},
            created_after=created_after,
            created_before=created_before,
            after=after,
            retry=self._retry,
            timeout_s=self._timeout_s,
        )
        # A batch still being created, or whose creation failed, is not one yet.
        docs = [(i, doc) for i, doc in docs if doc.get("state") == "accepted"]
        refs = [
            self._batches.document(i).collection(COUNTERS).document(str(n))
            for i, _ in docs
            for n in range(SHARDS)
        ]
        shards: dict[str, list[dict[str, Any]]] = {i: [] for i, _ in docs}
        if refs:
            with translated(StoreUnavailable, "batch listing"):
                for snapshot in self._client.get_all(
                    refs, retry=self._retry, timeout=self._timeout_s
                ):
                    if snapshot.exists:
                        batch_id = snapshot.reference.parent.parent.id
                        shards[batch_id].append(snapshot.to_dict() or {})
        return [Batch(i, doc, shards[i]) for i, doc in docs], cursor
