"""One model call at a time, single jobs first.

torch, TensorFlow and spaCy each use every core for one call, and two calls at once only thrash,
so every model call of a worker holds this lock. A batch's chunk takes it once per sub-batch and
gives way to job micro-batches waiting for it: a million-item batch never holds up a single job
for more than one sub-batch. (A plain ``Lock`` would not: the chunk's thread takes it again the
moment it lets go, before a waiting thread is even scheduled.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModelLock:
    def __init__(self) -> None:
        self._changed = threading.Condition()  # guards _busy and _jobs_waiting
        self._busy = False
        self._jobs_waiting = 0

    @contextmanager
    def job(self) -> Iterator[None]:
        """Hold the model for a job micro-batch: next in line, before any chunk."""
        with self._changed:
            self._jobs_waiting += 1
            try:
                self._changed.wait_for(lambda: not self._busy)
            finally:
                self._jobs_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def chunk(self) -> Iterator[None]:
        """Hold the model for one sub-batch of a chunk, once no job waits for it."""
        with self._changed:
            self._changed.wait_for(lambda: not self._busy and not self._jobs_waiting)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()
