"""Open event streams and held requests, counted per tenant in this process, and their cap.

Each job or batch event stream, long poll (``?wait=N``) and ``Prefer: wait`` request holds one of
gunicorn's threads for as long as it lasts (gthread: ``GUNICORN_THREADS`` per process). The cap,
``streams`` in ``TENANT_LIMITS`` (``ingress/limits/ratelimit.py``, ``DEFAULT_STREAMS`` unless set),
is per tenant **per process**: it protects that process's threads, which is all a process can
protect, and a shared count would cost a Firestore write per stream opened and closed.

    Holds.acquire(tenant) ──▶ Hold ──release(), exactly once──▶ the tenant's count − 1
                               │
                               └─ hold.stream(body): a streamed response that releases its hold
                                  when it ends, fails, or is closed (iterated or not)

Over the cap, ``acquire`` raises ``TooManyRequests`` (429, problem+json, ``Retry-After``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

from ingress.errors import TooManyRequests
from ingress.limits.ratelimit import LimitPolicy

logger = logging.getLogger(__name__)


class Hold:
    """One open stream or held request of one tenant; ``release`` frees its slot, once however
    often it is called, from whichever thread."""

    __slots__ = ("tenant", "_free", "_lock", "_released")

    def __init__(self, tenant: str, free: Callable[[str], None]):
        self.tenant = tenant
        self._free = free
        # Guards _released: a response may be closed by the server while a collector finalises it.
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._free(self.tenant)

    @property
    def released(self) -> bool:
        return self._released

    def stream(self, body: Iterator[str]) -> HeldStream:
        """``body`` as a response that holds this slot until it ends or is closed."""
        return HeldStream(body, self)

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.release()


class Holds:
    """Every tenant's count of open streams and held requests in this process.

    ``cap(tenant)`` is the tenant's ``streams`` limit (None: unlimited), read at each acquire."""

    def __init__(self, cap: Callable[[str], int | None], retry_after_s: int):
        self._cap = cap
        self._retry_after_s = retry_after_s
        # Guards _open: an acquire's check and increment are one step, so concurrent requests of
        # one tenant cannot both take its last slot. Held for a dict update only.
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    @classmethod
    def for_policy(cls, policy: LimitPolicy, retry_after_s: int) -> Holds:
        """Counts capped by each tenant's ``streams`` in ``policy``."""
        return cls(lambda tenant: policy.for_tenant(tenant).streams, retry_after_s)

    def acquire(self, tenant: str) -> Hold:
        """A slot for one of ``tenant``'s streams or held requests, to release when it ends;
        ``TooManyRequests`` when the tenant already holds its cap in this process."""
        limit = self._cap(tenant)
        with self._lock:
            count = self._open.get(tenant, 0)
            refused = limit is not None and count >= limit
            if not refused:
                self._open[tenant] = count + 1
        if refused:
            logger.info("stream cap reached", extra={"open_streams": count, "cap": limit})
            raise TooManyRequests(
                f"this tenant has {count} event streams and held requests open on this ingress "
                f"process, its cap of {limit}; close one, or retry after {self._retry_after_s} s",
                self._retry_after_s,
            )
        return Hold(tenant, self._free)

    def open(self, tenant: str) -> int:
        """How many streams and held requests ``tenant`` has open in this process now."""
        with self._lock:
            return self._open.get(tenant, 0)

    def total(self) -> int:
        """Every tenant's open streams and held requests in this process."""
        with self._lock:
            return sum(self._open.values())

    def _free(self, tenant: str) -> None:
        with self._lock:
            count = self._open.get(tenant, 0) - 1
            if count > 0:
                self._open[tenant] = count
            else:
                self._open.pop(tenant, None)


class HeldStream:
    """A streamed response body that holds ``hold`` while it lasts.

    The hold is released when the body is exhausted, raises, or is closed: the WSGI server closes
    the body when the response ends or the client went away, even one never iterated, whose
    generator would run no ``finally``. Closing also closes ``body``, so its own ``finally``
    (releasing listeners) runs first. Collection is the last resort (a response dropped before
    it was served)."""

    def __init__(self, body: Iterator[str], hold: Hold):
        self._body = body
        self._hold = hold

    def __iter__(self) -> HeldStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._hold.release()

    def __del__(self) -> None:
        self._hold.release()
