"""The worker's part in self-clocking batches (``common/pacing.py``): a chunk that ended releases
the next held chunk of its batch and publishes it, so the batch keeps its window of chunks in
Pub/Sub, behind whatever other batches released meanwhile.

Best effort, by design: a release or a publish that fails is logged, and the reconciler's sweep
tops the batch up (or publishes the released chunk, which is ``queued``) later; nothing is lost
and nothing runs twice (a chunk runs once whatever delivers it: its claim is fenced).
"""

from __future__ import annotations

import logging
from typing import Any

from common.pacing import release_held
from common.publishing import publish_one
from schemas.chunks import ChunkMessage
from schemas.messages import Topics
from worker.errors import StoreUnavailable

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0


class PublishFailed(RuntimeError):
    """A released chunk's message did not reach Pub/Sub (the reconciler publishes it)."""


class ChunkPacer:
    def __init__(self, client: Any, publisher: Any, topics: Topics, timeout_s: float):
        self._client = client
        self._publisher = publisher  # a google.cloud.pubsub_v1.PublisherClient
        self._topics = topics
        self._timeout_s = timeout_s

    def chunk_ended(self, batch_path: str, task: str, tenant: str) -> None:
        """One chunk of the batch at ``batch_path`` ended: release and publish its successor."""
        try:
            released = release_held(
                self._client,
                self._client.document(batch_path),
                1,
                StoreUnavailable,
                self._timeout_s,
            )
        except StoreUnavailable as exc:
            logger.warning("no chunk released (the reconciler tops the batch up): %s", exc)
            return
        for chunk_id in released:
            message = ChunkMessage(
                batch_id=batch_path.rsplit("/", 1)[-1], chunk_id=chunk_id, task=task, tenant=tenant
            )
            try:
                publish_one(
                    self._publisher, self._topics, message, PUBLISH_TIMEOUT_S, PublishFailed
                )
            except PublishFailed as exc:
                logger.warning("%s; the reconciler publishes it", exc, extra={"chunk_id": chunk_id})
