"""Stopping an attempt at a safe point, and the watcher that decides when to.

A forward pass cannot be interrupted from outside (a thread cannot be killed), so tasks stop
cooperatively: an adapter calls ``StopToken.check()`` between chunks of work, which raises
``Stopped`` once the attempt must end. The watcher, one thread per worker, reads the jobs in hand
every ``interval_s``: a cancelled job, or one that another attempt took over, stops at its next safe
point (a batch's chunk the same, and it counts as cancelled once its batch asked to be); every job
or chunk still owned gets its lease renewed, so it is not handed to another worker while
this one is healthy and working on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from worker.chunkstore import ChunkClaim
from worker.errors import Stopped, WorkerError
from worker.store import Claim

Held = Claim | ChunkClaim
"""An attempt in hand: a job's or a chunk's."""

logger = logging.getLogger(__name__)


class StopReason(StrEnum):
    """Why an attempt stops at its safe point (``Stopped.reason``; logged as ``stop``, and a
    metric label, so the values never change)."""

    CANCELLED = "cancelled"
    """The job (or the chunk's batch) was cancelled: the cancel wrote its end."""
    LOST = "lost"
    """Another attempt or writer owns it now (its lease lapsed, or a newer claim took it)."""
    TIMEOUT = "timeout"
    """It ran past its task's time limit."""
    SHUTDOWN = "shutdown"
    """The worker's shutdown grace period is over: released and nacked."""
    DEADLINE = "deadline"
    """Its job's ``deadline`` passed (``deadline_exceeded``)."""


CALL_METADATA: ContextVar[Sequence[Mapping[str, str]]] = ContextVar(
    "omni_call_metadata", default=()
)
"""The ``metadata`` of each job whose input the current model call runs, in input order (empty
for a chunk's items, which have none), for what wraps an adapter and acts per job
(``worker.faults``)."""


@contextmanager
def calling(metadata: Sequence[Mapping[str, str]]) -> Iterator[None]:
    """Within it, ``CALL_METADATA`` is ``metadata`` (in this thread)."""
    token = CALL_METADATA.set(metadata)
    try:
        yield
    finally:
        CALL_METADATA.reset(token)


def _monotonic_at(when: datetime | None) -> float | None:
    """The monotonic clock's reading at the wall-clock time ``when`` (None for None)."""
    if when is None:
        return None
    return time.monotonic() + (when - datetime.now(UTC)).total_seconds()


class StopToken:
    """Tells a running task whether it must stop, and why."""

    def __init__(self, timeout_s: float, job_deadline: datetime | None = None):
        self.deadline = time.monotonic() + timeout_s
        """The task's time limit, on the monotonic clock (set again when the task starts)."""
        self.job_deadline = _monotonic_at(job_deadline)
        """The job's own ``deadline``, on the monotonic clock; None without one."""
        self._reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def reason(self) -> StopReason | None:
        if self._reason is None:
            now = time.monotonic()
            if self.job_deadline is not None and now > self.job_deadline:
                return StopReason.DEADLINE
            if now > self.deadline:
                return StopReason.TIMEOUT
        return self._reason

    def check(self) -> None:
        """Raise ``Stopped`` if the attempt must end; call it between chunks of work."""
        reason = self.reason
        if reason is not None:
            raise Stopped(reason)

    def sleep(self, seconds: float, slice_s: float = 0.05) -> None:
        """Sleep ``seconds``, checking at every slice."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            time.sleep(min(slice_s, left))
        self.check()


class BatchStop(StopToken):
    """The stop token of a micro-batch's model call: it stops once every job in the batch must
    (a shutdown, their shared time limit, or each cancelled); one cancelled job alone does not stop
    its neighbours, it just has no result written."""

    def __init__(self, members: list[StopToken]):
        super().__init__(0.0)
        self.members = members
        self.deadline = min(m.deadline for m in members)

    def stop(self, reason: StopReason) -> None:
        for member in self.members:
            member.stop(reason)

    @property
    def reason(self) -> StopReason | None:
        reasons = [m.reason for m in self.members]
        if all(r is not None for r in reasons):
            return reasons[0]
        return None


@dataclass(frozen=True)
class InHand:
    claim: Held
    stop: StopToken
    since: float


class Watcher:
    """Checks the jobs in hand every ``interval_s``; see the module's docstring."""

    def __init__(
        self,
        check: Callable[[Sequence[Held]], dict[str, str]],
        interval_s: float,
        lease_s: float,
    ):
        self._check = check
        self._interval_s = interval_s
        self._lease_s = lease_s
        self._lock = threading.Lock()
        self._in_hand: dict[str, InHand] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="omni-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + 5)

    def add(self, claim: Held, stop: StopToken) -> None:
        with self._lock:
            self._in_hand[claim.token] = InHand(claim, stop, time.monotonic())

    def remove(self, claim: Held) -> None:
        with self._lock:
            self._in_hand.pop(claim.token, None)

    def stop_all(self, reason: StopReason) -> int:
        with self._lock:
            held = list(self._in_hand.values())
        for item in held:
            item.stop.stop(reason)
        return len(held)

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self.check_once()
            except WorkerError as exc:
                logger.warning("could not check jobs in hand: %s", exc)
            except Exception:
                logger.exception("watcher check failed")

    def check_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            # Jobs younger than one interval are left alone: most finish long before it ends.
            # A job past its deadline (plus a lease) is stuck outside any safe point; its lease
            # is no longer renewed, so another worker may take it over.
            due = [
                item
                for item in self._in_hand.values()
                if now - item.since >= self._interval_s and now < item.stop.deadline + self._lease_s
            ]
        if not due:
            return
        verdicts = self._check([item.claim for item in due])
        for item in due:
            verdict = verdicts.get(item.claim.token, "ok")  # "ok", or a StopReason's value
            if verdict != "ok":
                reason = StopReason(verdict)
                logger.info(
                    "attempt %s must stop: %s",
                    item.claim.attempt,
                    reason,
                    extra={**item.claim.label, "stop": reason.value},
                )
                item.stop.stop(reason)
