"""Micro-batching: one lane per served task, two threads each.

    callbacks ──put──▶ [incoming] ──gather + claim──▶ [next batch (1)] ──run──▶ settle threads

- The *gather* thread takes the first waiting delivery, then more until the batch holds
  ``max_size`` or ``max_wait_s`` has passed since the first, and claims them in one transaction.
- The *run* thread runs the claimed batch as one model call, then hands its outcomes to the
  settle threads, and takes the next.

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
from typing import Any, Generic, TypeVar

from worker.pipeline.delivery import Delivery, M

I = TypeVar("I")  # noqa: E741 - what a lane's claim makes of a delivery: a claimed job or chunk


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
        # ``claim`` and ``run`` settle their own messages whatever fails (the pipeline's claimer
        # and runner): nothing raised here could strand a callback.
        while (batch := self.gather()) is not None:
            claimed = self._claim(self, batch)
            if claimed:
                self._next.put(claimed)  # blocks while a claimed batch waits: back-pressure
        self._next.put(_CLOSE)

    def _run_loop(self) -> None:
        while (batch := self._next.get()) is not _CLOSE:
            self._run(self.task, batch)
