"""Publishing job and chunk messages to Pub/Sub, each to its task's topic of its kind
(``schemas.messages.Topics``: the paths are built once)."""

from __future__ import annotations

from typing import Any

from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from opentelemetry import context as otel_context

from common import tracing
from common.googleapi import bounded_retry, failing_as
from ingress import metrics
from schemas.chunks import ChunkMessage
from schemas.messages import CHUNK_KIND, JobMessage, Topics, chunk_to_pubsub

MAX_PER_CALL = 1000
"""Messages per publish call (Pub/Sub takes at most 1,000 and 10 MB)."""


class PublishFailed(RuntimeError):
    """The message was not confirmed by Pub/Sub in time (it may still arrive later)."""


class JobPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, topics: Topics, timeout_s: float):
        self._client = client
        self._topics = topics
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    @metrics.timed_publish
    def publish(self, message: JobMessage) -> str:
        """Publish and wait for Pub/Sub's confirmation; returns the message id."""
        data, attributes = message.to_pubsub()
        topic = self._topics.path(message.task)
        # A future's timeout is the builtin TimeoutError (concurrent.futures' is an alias).
        with failing_as(PublishFailed, "publish"):
            future = self._client.publish(
                topic, data, retry=self._retry, timeout=self._timeout_s, **attributes
            )
            return str(future.result(timeout=self._timeout_s))

    @metrics.timed_publish
    def publish_chunks(
        self, messages: list[ChunkMessage], context: otel_context.Context | None = None
    ) -> None:
        """Publish a part's chunk messages, ``MAX_PER_CALL`` to a call, and wait for each call's
        answer; ``PublishFailed`` on the first that fails. Each message carries the trace
        context ``context`` (else the current one).

        The messages are built as protobufs and sent with the underlying generated client's
        ``publish`` (the same RPC): the batching publisher spends ~100 µs of Python a message on
        its wrappers and futures, and a million items in parts are thousands of chunks."""
        from google.pubsub_v1.types import PubsubMessage

        message_pb = PubsubMessage.pb()
        by_topic: dict[str, list[Any]] = {}
        for message in messages:  # a part's chunks are one batch's: one task, one topic
            data, attributes = chunk_to_pubsub(message)
            tracing.inject(attributes, context)
            topic = self._topics.path(message.task, CHUNK_KIND)
            by_topic.setdefault(topic, []).append(message_pb(data=data, attributes=attributes))
        for topic, pbs in by_topic.items():
            self._publish_pbs(topic, pbs)

    def _publish_pbs(self, topic: str, pbs: list[Any]) -> None:
        from google.pubsub_v1 import PublisherClient as GeneratedPublisher

        for start in range(0, len(pbs), MAX_PER_CALL):
            with failing_as(PublishFailed, "publish"):
                GeneratedPublisher.publish(
                    self._client,
                    topic=topic,
                    messages=pbs[start : start + MAX_PER_CALL],
                    retry=self._retry,
                    timeout=self._timeout_s,
                )

    def ping(self) -> bool:
        """Whether Pub/Sub answers now (for one topic: that every topic exists is provisioning's
        job, and a probe should cost one call)."""
        try:
            self._client.get_topic(topic=self._topics.paths()[0], timeout=3.0, retry=None)
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False
        return True
