"""Micro-batching: one lane per served task, two threads each.

    callbacks ──put──▶ [incoming] ──gather + claim──▶ [next batch (1)] ──run──▶ settle threads

- The *gather* thread takes the first waiting delivery, then more until the batch holds
  ``max_size`` or ``max_wait_s`` has passed since the first, and claims them in one transaction.
- The *run* thread runs the claimed batch as one model call, then hands its outcomes to the
  processor's settle threads, and takes the next.

While one batch runs, the next is gathered and claimed, so claims and writes overlap the model and
the model rarely waits for Firestore. Batches grow with the load by themselves: deliveries that
arrive while the model is busy make up the next batch, so a short ``max_wait_s`` suffices and a lone
job is not held back. At most one claimed batch waits to run: few jobs read ``running`` while they
wait, and a worker that dies strands little.

A batch's chunks have a lane of their own per task, of batches of one (``worker.chunkrun``): a chunk
is a batch already, and the next chunk is claimed while one runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from schemas.chunks import ChunkMessage
from schemas.messages import JobMessage

if TYPE_CHECKING:
    from worker.processor import Message

M = TypeVar("M", JobMessage, ChunkMessage)
"""What a delivery carries: a job's message or a chunk's."""
I = TypeVar("I")  # noqa: E741 - what a lane's claim makes of a delivery: a claimed job or chunk


@dataclass(eq=False)  # identity: each delivery is its own, and kept in sets
class Delivery(Generic[M]):
    """One received message on its way through a lane; ``wait()`` returns once it is settled.

    A delivery is settled once: the first of ack, nack or retry_in wins and the rest are no-ops,
    so an error path may nack whatever it holds without undoing an outcome already given."""

    message: Message
    job: M
    """The parsed message: a job's, or a chunk's (then the lane runs one chunk at a time)."""
    on_settled: Callable[[Delivery[Any]], None] | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settled(self) -> bool:
        return self._done.is_set()

    def _settle(self, action: Callable[[], None]) -> None:
        with self._lock:
            if self._done.is_set():
                return
            try:
                action()
            finally:
                self._done.set()
        if self.on_settled is not None:
            self.on_settled(self)

    def ack(self) -> None:
        self._settle(self.message.ack)

    def nack(self) -> None:
        self._settle(self.message.nack)

    def retry_in(self, seconds: int) -> None:
        """Leave the message unacked and let Pub/Sub redeliver it after ``seconds``."""

        def later() -> None:
            # Out of lease management first, so no lease extension lands after the new deadline.
            self.message.drop()
            self.message.modify_ack_deadline(seconds)

        self._settle(later)

    def wait(self) -> None:
        self._done.wait()


_CLOSE: Any = object()


class Lane(Generic[M, I]):
    def __init__(
        self,
        task: str,
        max_size: int,
        max_wait_s: float,
        *,
        claim: Callable[[Lane[M, I], list[Delivery[M]]], list[I]],
        run: Callable[[str, list[I]], None],
        kind: str = "",
    ):
        self.task = task
        self.max_size = max(1, max_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self._claim: Callable[[Lane[M, I], list[Delivery[M]]], list[I]] = claim
        self._run: Callable[[str, list[I]], None] = run
        self._incoming: queue.Queue[Delivery[M]] = queue.Queue()
        self._next: queue.Queue[list[I]] = queue.Queue(maxsize=1)
        self._closed = False
        # Named per lane (``kind``: "" for jobs, "chunk-" for chunks), so a profile or
        # bench/worker_cpu.py tells each thread's CPU apart.
        self._threads = [
            threading.Thread(
                target=self._gather_loop, name=f"omni-{kind}gather-{task}", daemon=True
            ),
            threading.Thread(target=self._run_loop, name=f"omni-{kind}run-{task}", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def put(self, delivery: Delivery[M]) -> None:
        if self._closed:
            delivery.nack()  # a late re-check of a busy job after shutdown
            return
        self._incoming.put(delivery)

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._incoming.put(_CLOSE)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=timeout_s)
        while True:  # whatever arrived after the close: another worker takes it
            try:
                left = self._incoming.get_nowait()
            except queue.Empty:
                return
            if left is not _CLOSE:
                left.nack()

    def gather(self) -> list[Delivery[M]] | None:
        """The next micro-batch (None once closed): what waits, then more until full or late."""
        first = self._incoming.get()
        if first is _CLOSE:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                delivery = self._incoming.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    delivery = self._incoming.get(timeout=left)
                except queue.Empty:
                    break
            if delivery is _CLOSE:
                self._incoming.put(_CLOSE)  # seen again by the next gather, which ends the loop
                break
            batch.append(delivery)
        return batch

    def _gather_loop(self) -> None:
        # ``claim`` and ``run`` settle their own messages whatever fails (the processor's
        # _claim_batch and _run_batch): nothing raised here could strand a callback.
        while (batch := self.gather()) is not None:
            claimed = self._claim(self, batch)
            if claimed:
                self._next.put(claimed)  # blocks while a claimed batch waits: back-pressure
        self._next.put(_CLOSE)

    def _run_loop(self) -> None:
        while (batch := self._next.get()) is not _CLOSE:
            self._run(self.task, batch)
