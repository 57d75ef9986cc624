"""Admission of large uploads: at most ``MAX_LARGE_UPLOADS`` large batch bodies are read and
accepted at once in one ingress process; the next gets 503 with ``Retry-After`` at once.

A batch body of up to 32 MiB (100,000 items) is read by lines and written a chunk at a time: one
holds a few chunks (``ingress/chunkwriter.py``: up to ``WRITERS + QUEUED + 1``, each under
``DOC_BUDGET_BYTES``), its writer threads, and most of a core while it validates, for as long as
its upload takes. The number of them in progress, not the request size alone, decides whether an
instance stays inside its memory and CPU (docs/limits.md has the measured peak). Refusing at once,
before a byte of the body is read, costs the client one round trip; queueing would hold a
thread and the client's upload for as long as the others take.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ingress.errors import ServiceUnavailable

UPLOAD_RETRY_AFTER_S = 10
"""``Retry-After`` on a 503 for a large upload, seconds: about the time one takes to accept."""


class UploadSlots:
    """A counting semaphore that never waits."""

    def __init__(self, slots: int):
        self._slots = slots
        # Guards _busy: taken and freed by request threads at once.
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        return self._busy

    @contextmanager
    def slot(self, size: int | None) -> Iterator[None]:
        """Hold one slot for the ``with`` block, or raise the 503 when none is free. ``size``
        is the body's declared length (None when chunked), for the message only."""
        with self._lock:
            if self._busy >= self._slots:
                declared = "of unknown length" if size is None else f"of {size} bytes"
                raise ServiceUnavailable(
                    f"this instance is accepting {self._busy} other large upload"
                    f"{'s' if self._busy > 1 else ''} and holds at most {self._slots} at once; "
                    f"send this body ({declared}) again shortly",
                    UPLOAD_RETRY_AFTER_S,
                )
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
