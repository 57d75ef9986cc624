"""Publishing one message and waiting for Pub/Sub's answer, as the services that re-publish or
release work do it (the reconciler, redrive, the worker's released chunks): any failure, or no
answer in ``timeout_s``, raises the caller's own error."""

from __future__ import annotations

from typing import Any

from common.googleapi import ErrorFactory, failing_as
from schemas.chunks import ChunkMessage
from schemas.messages import JobMessage, Topics, encode


def publish_one(
    publisher: Any,
    topics: Topics,
    message: JobMessage | ChunkMessage,
    timeout_s: float,
    failed: ErrorFactory,
    what: str = "publish",
) -> None:
    """``message`` on its task's topic of its kind; ``failed`` if it did not land."""
    data, attributes = encode(message)
    with failing_as(failed, what):
        publisher.publish(topics.of(message), data, **attributes).result(timeout=timeout_s)
