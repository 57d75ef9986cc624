"""Micro-batching: one lane per served task, two threads each.

    callbacks ──put──▶ [incoming] ──gather, claim──▶ [one claimed batch] ──run──▶ settle threads

- The *gather* thread collects deliveries into a batch of at most ``max_size`` and claims it in one
  transaction when the gather policy says so (below).
- The *run* thread runs the claimed batch as one model call, then hands its outcomes to the settle
  threads, and takes the next.

The gather policy (``GatherPolicy``) keeps the model's batches full under load without holding a
lone job back:

- **the model idle** (the run thread waits, no claimed batch waits): claim at once, or at most
  ``max_wait_s`` after the batch's first delivery (0 claims a lone job at once);
- **the model busy**: keep gathering, and claim when the batch is full, or when the running batch
  is expected to end within one claim's latency (both estimated per lane as moving averages of
  recent run durations and claim latencies), so the claimed batch is ready as the model frees up;
  never before the running batch is half-way through (a claim slower than the model cannot be
  hidden, and claiming early would only make small batches);
- **a claimed batch already waiting**: claim nothing; gather up to ``max_size`` meanwhile.

So at most one claimed batch waits to run: few jobs read ``running`` while they wait, and a worker
that dies strands little. What bounds a batch under a backlog is then what Pub/Sub lets in: the
flow control's ``max_messages`` counts every message in hand, running, waiting, gathering and
being settled alike (``worker.settings.leased_messages``).

A batch's chunks have a lane of their own per task, of batches of one (``worker.chunkrun``): a chunk
is a batch already, and the next chunk is claimed while one runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from worker.pipeline.delivery import Delivery, M

I = TypeVar("I")  # noqa: E741 - what a lane's claim makes of a delivery: a claimed job or chunk

EWMA_WEIGHT = 0.2
"""Weight of the newest sample in a lane's moving averages of run durations and claim latencies:
about the last ten batches count."""


@dataclass
class Ewma:
    """An exponentially weighted moving average, in seconds; ``None`` until the first sample."""

    value: float | None = None
    weight: float = EWMA_WEIGHT

    def add(self, sample: float) -> None:
        self.value = (
            sample if self.value is None else self.value + self.weight * (sample - self.value)
        )


@dataclass
class GatherPolicy:
    """When a lane claims the batch it gathers (see the module's docstring). Pure: the lane feeds
    it the times; its averages are updated by the lane's threads under the lane's lock."""

    max_size: int
    max_wait_s: float
    run_s: Ewma = field(default_factory=Ewma)
    """How long a batch holds the run thread per item in it (waiting for the model included):
    per item, so a full batch after a few short ones is not expected to end as soon as they did
    (claimed too early, the next batch would be short too, and so on)."""
    claim_s: Ewma = field(default_factory=Ewma)
    """How long a claim takes (one Firestore transaction)."""

    def claim_at(
        self, first_at: float, running_since: float | None, waiting: bool, running_size: int = 1
    ) -> float | None:
        """The time (``time.monotonic``'s) to claim a batch whose first delivery came at
        ``first_at`` if it does not fill first; ``None``: not while a claimed batch is
        ``waiting`` to run. ``running_since``: when the running batch (of ``running_size`` items)
        started; ``None`` when the run thread is idle."""
        if waiting:
            return None
        if running_since is None:
            return first_at + self.max_wait_s
        run_s, claim_s = (self.run_s.value or 0.0) * running_size, self.claim_s.value or 0.0
        # Ahead of the running batch's end by one claim, so the next is ready as the model frees
        # up; but never before half-way through it. Where a claim takes longer than the model
        # (a GPU, a slow Firestore), claiming ahead cannot hide it, and claiming at once only
        # makes small batches whose per-batch claims and commits then bound the throughput.
        return running_since + run_s - min(claim_s, run_s / 2)


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
        clock: Callable[[], float] = time.monotonic,
    ):
        self.task = task
        self.policy = GatherPolicy(max(1, max_size), max(0.0, max_wait_s))
        self._claim: Callable[[Lane[M, I], list[Delivery[M]]], list[I]] = claim
        self._run: Callable[[str, list[I]], None] = run
        self._clock = clock
        # Guards the fields below and the policy's averages; notified whenever one of them changes
        # (a delivery in, a batch claimed, taken or done, the close), so the gather thread
        # decides again.
        self._changed = threading.Condition()
        self._incoming: deque[Delivery[M]] = deque()
        self._ready: list[I] | None = None  # the claimed batch waiting for the run thread
        self._running_since: float | None = None  # when the running batch started; None: idle
        self._running_size = 1  # how many items the running batch has
        self._closed = False
        self._gathering = True  # until the gather thread ends: the run thread waits for it
        # Named per lane (``kind``: "" for jobs, "chunk-" for chunks), so a profile or
        # bench/worker_cpu.py tells each thread's CPU apart.
        self._threads = [
            threading.Thread(
                target=self._gather_loop, name=f"omni-{kind}gather-{task}", daemon=True
            ),
            threading.Thread(target=self._run_loop, name=f"omni-{kind}run-{task}", daemon=True),
        ]

    @property
    def max_size(self) -> int:
        return self.policy.max_size

    @property
    def max_wait_s(self) -> float:
        return self.policy.max_wait_s

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def put(self, delivery: Delivery[M]) -> None:
        with self._changed:
            if not self._closed:
                self._incoming.append(delivery)
                self._changed.notify_all()
                return
        delivery.nack()  # a late re-check of a busy job after shutdown

    def close(self, timeout_s: float = 10.0) -> None:
        """Claim nothing more; a claimed batch still runs (the processor gives it back when
        draining). Whatever was not claimed is nacked: another worker takes it."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=timeout_s)
        with self._changed:
            left, self._incoming = self._incoming, deque()
        for delivery in left:
            delivery.nack()

    def gather(self) -> list[Delivery[M]] | None:
        """The next micro-batch to claim, in arrival order, once the gather policy says to claim
        it; ``None`` once the lane is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._incoming or self._closed)
            first_at = self._clock()
            batch: list[Delivery[M]] = []
            while True:
                while self._incoming and len(batch) < self.policy.max_size:
                    batch.append(self._incoming.popleft())
                if self._closed:
                    self._incoming.extendleft(reversed(batch))  # close() nacks them
                    return None
                full = len(batch) >= self.policy.max_size
                claim_at = self.policy.claim_at(
                    first_at, self._running_since, self._ready is not None, self._running_size
                )
                if claim_at is None:
                    self._changed.wait()  # for the run thread to take the waiting batch
                    continue
                left_s = claim_at - self._clock()
                if full or left_s <= 0:
                    return batch
                self._changed.wait(left_s)

    def _gather_loop(self) -> None:
        # ``claim`` and ``run`` settle their own messages whatever fails (the pipeline's claimer
        # and runner): nothing raised here could strand a callback.
        try:
            while (batch := self.gather()) is not None:
                started = self._clock()
                claimed = self._claim(self, batch)
                with self._changed:
                    self.policy.claim_s.add(self._clock() - started)
                    if claimed:
                        # gather() returns only while no claimed batch waits, and only this
                        # thread sets one.
                        assert self._ready is None
                        self._ready = claimed
                        self._changed.notify_all()
        finally:
            with self._changed:
                self._gathering = False
                self._changed.notify_all()

    def _run_loop(self) -> None:
        started: float | None = None
        while True:
            with self._changed:
                if started is not None:
                    self.policy.run_s.add((self._clock() - started) / self._running_size)
                self._running_since = None
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._ready is not None or not self._gathering)
                if self._ready is None:
                    return
                batch, self._ready = self._ready, None
                self._running_size = max(1, len(batch))
                started = self._running_since = self._clock()
                self._changed.notify_all()
            self._run(self.task, batch)
