"""One model call at a time, single jobs first, batch work never starved.

torch, TensorFlow and spaCy each use every core for one call, and two calls at once only thrash,
so every model call of a worker holds this lock. A batch's chunk takes it once per sub-batch and
gives way to job micro-batches waiting for it: a million-item batch never holds up a single job
for more than one sub-batch. (A plain ``Lock`` would not: the chunk's thread takes it again the
moment it lets go, before a waiting thread is even scheduled.) Jobs do not starve chunks either:
a waiting chunk gets at least ``BATCH_SHARE`` of the calls (``jobs_per_chunk``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BATCH_SHARE = 0.1
"""``WORKER_BATCH_SHARE``: the least share of model calls a waiting chunk gets while jobs keep
coming (batch work is never starved): after ``(1 - share) / share`` job calls in a row with a chunk
waiting, the chunk goes next. A job's micro-batch and a chunk's sub-batch are both the task's batch
size, so calls are a fair proxy for model time."""


def jobs_per_chunk(share: float) -> int:
    """Job calls in a row a waiting chunk lets pass, for a batch ``share`` in (0, 1]."""
    return max(0, math.ceil((1 - share) / share - 1e-9))


class ModelLock:
    def __init__(self, batch_share: float = BATCH_SHARE) -> None:
        self._changed = threading.Condition()  # guards the fields below
        self._busy = False
        self._jobs_waiting = 0
        self._chunks_waiting = 0
        self._jobs_in_a_row = 0  # job calls since a chunk last had the model, while one waited
        self._jobs_per_chunk = jobs_per_chunk(batch_share)

    def _chunk_due(self) -> bool:
        return self._chunks_waiting > 0 and self._jobs_in_a_row >= self._jobs_per_chunk

    @contextmanager
    def job(self) -> Iterator[None]:
        """Hold the model for a job micro-batch: next in line, before any chunk."""
        with self._changed:
            self._jobs_waiting += 1
            try:
                self._changed.wait_for(lambda: not self._busy and not self._chunk_due())
            finally:
                self._jobs_waiting -= 1
            self._busy = True
            if self._chunks_waiting:
                self._jobs_in_a_row += 1
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def chunk(self) -> Iterator[None]:
        """Hold the model for one sub-batch of a chunk, once no job waits for it."""
        with self._changed:
            self._chunks_waiting += 1
            try:
                self._changed.wait_for(
                    lambda: not self._busy and (not self._jobs_waiting or self._chunk_due())
                )
            finally:
                self._chunks_waiting -= 1
            self._busy = True
            self._jobs_in_a_row = 0
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()
