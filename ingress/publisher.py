"""Publishing job messages to Pub/Sub."""

from __future__ import annotations

from concurrent import futures

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from schemas.googleapi import bounded_retry
from schemas.messages import JobMessage


class PublishFailed(RuntimeError):
    """The message was not confirmed by Pub/Sub in time (it may still arrive later)."""


class JobPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, topic_path: str, timeout_s: float):
        self._client = client
        self._topic_path = topic_path
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def publish(self, message: JobMessage) -> str:
        """Publish and wait for Pub/Sub's confirmation; returns the message id."""
        data, attributes = message.to_pubsub()
        try:
            future = self._client.publish(
                self._topic_path, data, retry=self._retry, timeout=self._timeout_s, **attributes
            )
            return str(future.result(timeout=self._timeout_s))
        except (gexc.GoogleAPIError, futures.TimeoutError, TimeoutError) as exc:
            raise PublishFailed(f"publish failed: {type(exc).__name__}") from exc

    def publish_many(self, messages: list[JobMessage]) -> list[futures.Future[str]]:
        """Hand every message to the client's batching publisher at once; the caller waits on
        the futures (``confirmed``), so many batches of messages are in flight together."""
        out = []
        for message in messages:
            data, attributes = message.to_pubsub()
            out.append(
                self._client.publish(
                    self._topic_path, data, retry=self._retry, timeout=self._timeout_s, **attributes
                )
            )
        return out

    def confirmed(self, pending: list[futures.Future[str]]) -> None:
        """Wait until Pub/Sub confirmed every message; ``PublishFailed`` if any was not."""
        try:
            for future in pending:
                future.result(timeout=self._timeout_s)
        except (gexc.GoogleAPIError, futures.TimeoutError, TimeoutError) as exc:
            raise PublishFailed(f"publish failed: {type(exc).__name__}") from exc

    def ping(self) -> bool:
        """Whether the topic answers now."""
        try:
            self._client.get_topic(topic=self._topic_path, timeout=3.0, retry=None)
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False
        return True
