"""Streaming pull, as the Google client does it, with our flow control and thread pool.

We do not rewrite streaming pull: ``SubscriberClient.subscribe`` keeps the stream, leases and
their extension. This wraps it with an idempotent start/stop and a view of whether it still runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from worker.processor import Processor

logger = logging.getLogger(__name__)


class Consumer:
    def __init__(
        self,
        subscription_path: str,
        processor: Processor,
        *,
        max_messages: int,
        lease_extension_s: int,
        max_lease_s: float,
        callback_threads: int,
    ):
        self._subscription_path = subscription_path
        self._processor = processor
        self._flow_control = pubsub_v1.types.FlowControl(
            max_messages=max_messages,
            max_duration_per_lease_extension=lease_extension_s,
            # Held longer than the longest task allows, a message is let go and redelivered:
            # its worker is hung, not working.
            max_lease_duration=int(max_lease_s),
        )
        self._callback_threads = callback_threads
        # Guards _client and _future: start/stop may race between the main thread and signals.
        self._lock = threading.Lock()
        self._client: pubsub_v1.SubscriberClient | None = None
        self._future: Any = None

    def start(self) -> None:
        with self._lock:
            if self._future is not None:
                return
            # A fresh client per start: the emulator keeps feeding a cancelled stream.
            self._client = pubsub_v1.SubscriberClient()
            executor = ThreadPoolExecutor(
                max_workers=self._callback_threads, thread_name_prefix="omni-callback"
            )
            self._future = self._client.subscribe(
                self._subscription_path,
                callback=self._on_message,
                flow_control=self._flow_control,
                scheduler=ThreadScheduler(executor),
                # Without this, cancel() returns while callbacks still run and their acks are lost.
                await_callbacks_on_shutdown=True,
            )
            logger.info("pulling from %s", self._subscription_path)

    @property
    def running(self) -> bool:
        future = self._future
        return future is not None and not future.done()

    def wait(self, timeout_s: float) -> BaseException | None:
        """Block up to ``timeout_s``; the stream's error if it ended by itself, else None."""
        future = self._future
        if future is None:
            return None
        try:
            future.result(timeout=timeout_s)
        except TimeoutError:
            return None
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which decides
            return exc
        return None

    def stop(self, grace_s: float, on_grace_over: Callable[[], None], after_s: float) -> None:
        """Stop pulling; give callbacks in hand ``grace_s`` to settle their messages, then call
        ``on_grace_over`` and wait ``after_s`` more.

        ``cancel()`` returns at once and the client nacks what it holds but has not dispatched;
        the future completes only once the callbacks have returned (``await_callbacks_on_shutdown``)
        and leases are extended until then. The client is closed only after that: closing it
        earlier would drop the acks of callbacks still running.
        """
        with self._lock:
            future, client = self._future, self._client
            self._future = self._client = None
            if future is None or client is None:
                return
            future.cancel()
            if not self._settled(future, grace_s):
                on_grace_over()
                self._settled(future, after_s)
            if future.done():
                client.close()
                logger.info("stopped pulling")
            else:
                logger.warning("callbacks still running after the grace period; leaving them")

    @staticmethod
    def _settled(future: Any, timeout_s: float) -> bool:
        # A cancelled stream may end with an error here; either way it has ended.
        with contextlib.suppress(Exception):
            future.result(timeout=timeout_s)
        return bool(future.done())

    def _on_message(self, message: Any) -> None:
        try:
            self._processor.handle([message])
        except Exception:
            # An escaping exception would be swallowed by the client and the message would sit
            # leased until its lease lapsed; nack it now instead.
            logger.exception("callback failed; message nacked")
            message.nack()
