"""Admission of large uploads: at most ``MAX_LARGE_UPLOADS`` large batch bodies are read and
accepted at once in one ingress process; the next gets 503 with ``Retry-After`` at once. And the
pace a batch body must keep (``UploadPace``): a slot, and the thread, are held only while the
client sends.

A batch body of up to 32 MiB (100,000 items) is read by lines and written a chunk at a time: one
holds a few chunks (``ingress/batches/chunkwriter.py``: up to ``WRITERS + QUEUED + 1``, each under
``DOC_BUDGET_BYTES``), its writer threads, and most of a core while it validates, for as long as
its upload takes. The number of them in progress, not the request size alone, decides whether an
instance stays inside its memory and CPU (docs/limits.md has the measured peak). Refusing at once,
before a byte of the body is read, costs the client one round trip; queueing would hold a
thread and the client's upload for as long as the others take.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ingress.errors import RequestTimeout, ServiceUnavailable

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


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class UploadPace:
    """A request body's reads, held to a pace: past a grace of ``grace_s`` seconds of waiting,
    at least ``min_bytes_per_s`` bytes for each second spent waiting in ``read``; a body that
    falls behind gets 408.

    Only time spent waiting in ``read`` counts: a body the ingress is slow to take (its chunk
    writers wait for Firestore) is not the client's fault. A read blocks until it has ``size``
    bytes (gunicorn's body reader loops on ``recv``), so a socket timeout alone would not bound
    it: a client sending a byte a second would keep one read going for days. Each read on
    gunicorn's socket is watched instead: when its share of the budget runs out, a timer
    shuts the socket's read side, the blocked read returns, and the request ends 408 (the
    response still goes out; gunicorn's body is marked failed, so the connection is closed, not
    reused). ``size`` is kept under half what the minimum pace brings in ``grace_s``, so a client
    on pace never meets the timer."""

    def __init__(
        self,
        environ: dict[str, Any],
        min_bytes_per_s: int,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self._min_bytes_per_s = min_bytes_per_s
        self._grace_s = grace_s
        self._waited_s = 0.0
        self._read = 0
        self._cut = threading.Event()
        # Guards _reading: the timer shuts the socket only while a read is under way, never
        # after it returned (the body may be complete, the connection reused).
        self._lock = threading.Lock()
        self._reading = False
        sock = environ.get("gunicorn.socket")
        # HTTP/1 only: an HTTP/2 connection's socket carries other requests' streams too.
        http1 = str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1")
        self._sock = sock if http1 and hasattr(sock, "shutdown") else None
        self._body: Any = environ.get("wsgi.input")

    def size(self, wanted: int) -> int:
        """The most to ask of one read: ``wanted``, or less if the pace needs it."""
        return max(1, min(wanted, int(self._min_bytes_per_s * self._grace_s / 2)))

    def read(self, stream: Readable, size: int) -> bytes:
        started = self._clock()
        budget_s = self._grace_s + self._read / self._min_bytes_per_s - self._waited_s
        sock = self._sock
        timer = threading.Timer(max(budget_s, 0.0), self._shut, (sock,)) if sock else None
        if timer is not None:
            timer.daemon = True
            with self._lock:
                self._reading = True
            timer.start()
        try:
            chunk = stream.read(size)
        except Exception:
            # Cut by the timer, the read ends in whatever the stack makes of an early EOF
            # (werkzeug's ClientDisconnected, gunicorn's NoMoreData or a chunk parse error).
            if self._cut.is_set():
                raise self._late() from None
            raise
        finally:
            if timer is not None:
                with self._lock:
                    self._reading = False
                timer.cancel()
        self._waited_s += self._clock() - started
        self._read += len(chunk)
        if self._cut.is_set() or (
            chunk and self._waited_s > self._grace_s + self._read / self._min_bytes_per_s
        ):
            raise self._late()
        return chunk

    def _shut(self, sock: Any) -> None:
        with self._lock:
            if not self._reading:
                return  # the read returned meanwhile: its bytes are judged by the pace check
            self._cut.set()
            # gunicorn's reader of a Content-Length body takes the early EOF as a short read,
            # not an error: without this mark its keep-alive check would find the body drained
            # and parse what the client sends next, mid-body, as a new request.
            if hasattr(self._body, "failed"):
                self._body.failed = True
            with contextlib.suppress(OSError):  # the connection went meanwhile
                sock.shutdown(socket.SHUT_RD)

    def _late(self) -> RequestTimeout:
        rate = self._read / self._waited_s if self._waited_s else 0.0
        return RequestTimeout(
            f"the body did not keep the minimum pace of {self._min_bytes_per_s} bytes/s after "
            f"{self._grace_s:g} s (it came at {rate:.0f} bytes/s: {self._read} bytes so far); "
            "send smaller parts over a slow link; nothing was kept"
        )
