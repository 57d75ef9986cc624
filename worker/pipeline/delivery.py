"""A delivery on its way through the pipeline, and the two things it is settled against: the
Pub/Sub message it came in, and the job store that holds the job's state.

A delivery is settled once, after its outcome is durable in Firestore: the first of ack, nack or
retry_in wins and the rest are no-ops, so an error path may nack whatever it holds without undoing
an outcome already given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from schemas.chunks import ChunkMessage
from schemas.jobs import JobStatus
from schemas.messages import JobMessage
from worker.attempts import StopToken
from worker.errors import PermanentError, Stopped, TransientError
from worker.jobtrace import JobTrace
from worker.store import Busy, Claim, Skip

M = TypeVar("M", JobMessage, ChunkMessage)
"""What a delivery carries: a job's message or a chunk's."""


class Message(Protocol):
    """The part of ``pubsub_v1.subscriber.message.Message`` the pipeline uses."""

    data: bytes
    attributes: Any
    message_id: str
    delivery_attempt: int | None

    def ack(self) -> None: ...
    def nack(self) -> None: ...
    def drop(self) -> None: ...
    def modify_ack_deadline(self, seconds: int) -> None: ...


class Store(Protocol):
    """The state machine the pipeline drives for jobs (``worker.store.JobStore`` in production)."""

    lease_s: float

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]: ...
    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]: ...
    def release(
        self, claim: Claim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool: ...
    def check(self, claims: Sequence[Claim]) -> dict[str, str]: ...


@dataclass(eq=False)  # identity: each delivery is its own, and kept in sets
class Delivery(Generic[M]):
    """One received message on its way through a lane; ``wait()`` returns once it is settled."""

    message: Message
    job: M
    """The parsed message: a job's, or a chunk's (then the lane runs one chunk at a time)."""
    on_settled: Callable[[Delivery[Any]], None] | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # makes settling happen once

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


@dataclass(frozen=True)
class InFlight:
    """A claimed job on its way through its lane."""

    claim: Claim
    delivery: Delivery[JobMessage]
    stop: StopToken
    trace: JobTrace


Outcome = dict[str, Any] | PermanentError | TransientError | Stopped
"""What running a job came to: its stored result, or why not."""
