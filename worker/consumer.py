"""Streaming pull, as the Google client does it, with our flow control and thread pool.

We do not rewrite streaming pull: ``SubscriberClient.subscribe`` keeps the stream, leases and
their extension. This wraps it with an idempotent start/stop and a view of whether it still runs.

Two consumers per served task, each on its own subscription of its own topic: the task's jobs
(``<prefix>-<task>``) and its batches' chunks (``<prefix>-<task>-chunks``), each with its own flow
control, so a batch's chunks never take the leases single jobs need, and a chunk (hundreds of items)
is not leased by the dozen. Routing is by topic, with no subscription filter, so every message a
subscription delivers is its task's, on the emulator as in production. Every message goes to the
processor, which reads its kind itself: a job on the chunk subscription (or the reverse, from a
publisher of an older release) is still handled, never dropped.

A callback returns only once its message is settled (the processor's lanes batch them meanwhile),
so the client's shutdown (``await_callbacks_on_shutdown``) still means "every message in hand is
settled": the pool has one thread per message the flow control lets in.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from common import tracing
from worker import metrics
from worker.processor import Processor

logger = logging.getLogger(__name__)


class Consumer:
    def __init__(
        self,
        task: str,
        subscription_path: str,
        processor: Processor,
        *,
        max_messages: int,
        lease_extension_s: int,
        max_lease_s: float,
    ):
        self.task = task
        self.name = subscription_path.rpartition("/")[2]
        """The subscription's name: what /readyz and the logs call this consumer."""
        self.max_messages = max_messages
        self._subscription_path = subscription_path
        self._processor = processor
        self._flow_control = pubsub_v1.types.FlowControl(
            max_messages=max_messages,
            max_duration_per_lease_extension=lease_extension_s,
            # Held longer than the longest task allows, a message is let go and redelivered:
            # its worker is hung, not working.
            max_lease_duration=int(max_lease_s),
        )
        self._callback_threads = max_messages
        # Guards _client and _future: start/stop may race between the main thread and signals.
        self._lock = threading.Lock()
        self._client: pubsub_v1.SubscriberClient | None = None
        self._future: Any = None

    def start(self) -> None:
        with self._lock:
            if self._future is not None:
                return
            # A fresh client per start: the emulator keeps feeding a cancelled stream.
            # The client's own tracing continues each message's trace in a "subscribe" span,
            # under which the worker records the job's spans (worker/jobtrace.py). Only when
            # spans are recorded: it makes several per message, a tenth of a millisecond of
            # this worker's CPU per job for nothing when no exporter takes them.
            self._client = pubsub_v1.SubscriberClient(
                subscriber_options=pubsub_v1.types.SubscriberOptions(
                    enable_open_telemetry_tracing=tracing.recording()
                )
            )
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

    def cancel(self) -> None:
        """Stop pulling. ``cancel()`` returns at once and the client nacks what it holds but has
        not dispatched; the future completes once the callbacks have returned, and leases are
        extended until then."""
        with self._lock:
            if self._future is not None:
                self._future.cancel()

    def settled(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the cancelled stream's callbacks; whether they are done."""
        future = self._future
        if future is None:
            return True
        # A cancelled stream may end with an error here; either way it has ended.
        with contextlib.suppress(Exception):
            future.result(timeout=max(timeout_s, 0.001))
        return bool(future.done())

    def close(self) -> None:
        """Close the client, only once the callbacks are done: closing it earlier would drop the
        acks of callbacks still running."""
        with self._lock:
            future, client = self._future, self._client
            self._future = self._client = None
            if future is None or client is None:
                return
            if future.done():
                client.close()
                logger.info("stopped pulling from %s", self._subscription_path)
            else:
                logger.warning(
                    "%s: callbacks still running after the grace period; leaving them", self.name
                )

    def _on_message(self, message: Any) -> None:
        metrics.received(self.task, message)
        try:
            self._processor.handle([message])
        except Exception:
            # An escaping exception would be swallowed by the client and the message would sit
            # leased until its lease lapsed; nack it now instead.
            logger.exception("%s: callback failed; message nacked", self.name)
            message.nack()


def stop_all(
    consumers: list[Consumer], grace_s: float, on_grace_over: Callable[[], None], after_s: float
) -> None:
    """Stop pulling on every consumer; give callbacks in hand ``grace_s`` (in all) to settle
    their messages, then call ``on_grace_over`` and wait ``after_s`` more; close the clients."""
    for consumer in consumers:
        consumer.cancel()
    deadline = time.monotonic() + grace_s
    if not all(c.settled(deadline - time.monotonic()) for c in consumers):
        on_grace_over()
        deadline = time.monotonic() + after_s
        for consumer in consumers:
            consumer.settled(deadline - time.monotonic())
    for consumer in consumers:
        consumer.close()
