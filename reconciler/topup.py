"""The sweep's top-up of self-clocking batches (``common/pacing.py``): a batch with held chunks
but fewer than its ``window`` queued or running gets the difference released and published.

Workers release one chunk per chunk that ends; a worker that died between its commit and its
release, or a chunk ended by someone else (the dead-letter path, the sweep's give-up), leaves the
batch's window short, and one left with none would never run again. The sweep visits each batch
with held chunks once (one query per batch, ordered by ``batch_path``), up to ``BATCH_LIMIT``
batches a sweep; a batch being cancelled is left to the cancel, which ends held chunks too.
"""

from __future__ import annotations

import logging
from typing import Any

from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import translated
from common.pacing import active_chunks, release_held
from common.publishing import publish_one
from reconciler.settings import BATCH_LIMIT
from schemas.chunks import CHUNKS, HELD, ChunkMessage
from schemas.messages import Topics

logger = logging.getLogger(__name__)


class TopUp:
    def __init__(
        self,
        client: firestore.Client,
        publisher: pubsub_v1.PublisherClient,
        topics: Topics,
        unavailable: type[Exception],
        publish_failed: type[Exception],
        timeout_s: float,
    ):
        self._client = client
        self._publisher = publisher
        self._topics = topics
        self._unavailable = unavailable
        self._publish_failed = publish_failed
        self._timeout_s = timeout_s

    def batches_with_held_chunks(self) -> list[tuple[str, dict[str, Any]]]:
        """Each batch that has held chunks (its path, and one held chunk's fields), at most
        ``BATCH_LIMIT``: one query per batch, each starting after the last batch's path."""
        query = (
            self._client.collection_group(CHUNKS)
            .where(filter=FieldFilter("status", "==", HELD))
            .order_by("batch_path")
            .select(["batch_path", "task", "tenant"])
            .limit(1)
        )
        found: list[tuple[str, dict[str, Any]]] = []
        last: str | None = None
        while len(found) < BATCH_LIMIT:
            page = query if last is None else query.start_after({"batch_path": last})
            with translated(self._unavailable, "held chunks query"):
                snapshots = list(page.stream(timeout=self._timeout_s))
            if not snapshots:
                break
            doc = snapshots[0].to_dict() or {}
            last = str(doc["batch_path"])
            found.append((last, doc))
        return found

    def top_up(self, batch_path: str, chunk: dict[str, Any]) -> list[str]:
        """Release and publish what the batch's window lacks; the released chunks' names."""
        batch_ref = self._client.document(batch_path)
        with translated(self._unavailable, "batch read"):
            batch = batch_ref.get(timeout=self._timeout_s).to_dict() or {}
        window = int(batch.get("window") or 0)
        if not window or batch.get("cancel_requested"):
            return []
        missing = window - active_chunks(batch_ref, window, self._unavailable, self._timeout_s)
        released = release_held(
            self._client, batch_ref, missing, self._unavailable, self._timeout_s
        )
        for chunk_id in released:
            message = ChunkMessage(
                batch_id=batch_ref.id, chunk_id=chunk_id, task=chunk["task"], tenant=chunk["tenant"]
            )
            publish_one(
                self._publisher, self._topics, message, self._timeout_s, self._publish_failed
            )
        if released:
            logger.warning(
                "topped up a batch whose window was short",
                extra={"batch_id": batch_ref.id, "released": len(released)},
            )
        return [f"{batch_path}/{CHUNKS}/{chunk_id}" for chunk_id in released]
