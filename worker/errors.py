"""The worker's exception tree: how a failure is classified decides what happens to the message.

    WorkerError
    ├── TransientError        the task may succeed on another delivery: the job is released
    │   │                     (``queued``, with ``last_error``) and the message nacked; after the
    │   │                     maximum deliveries it goes to the dead-letter topic
    │   └── StoreUnavailable  Firestore unreachable or contended: the worker holds the message and
    │                         retries with backoff instead (a nack loop would dead-letter healthy
    │                         jobs during an outage)
    ├── PermanentError        write the job ``failed`` with ``code`` and ``message``, then ack
    └── Stopped               the attempt stopped at a safe point (cancel, lost lease, timeout,
                              shutdown); the processor decides per reason

Vendor errors are translated into these at the boundary (``store``, the task adapters); anything
else escaping a task is a bug in it and is treated as permanent (``internal``), so a poison job
cannot loop forever.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class TransientError(WorkerError):
    """Worth retrying later: the message is nacked."""


class StoreUnavailable(TransientError):
    """Firestore did not answer, or a transaction kept conflicting."""


class PermanentError(WorkerError):
    """Retrying cannot help: the job is written ``failed`` and the message acked."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Stopped(WorkerError):
    """Raised at a task's safe point when its attempt must stop.

    ``reason`` is one of ``cancelled`` (the job was cancelled), ``lost`` (another attempt or
    writer owns the job now), ``timeout`` (the task ran past its time limit) or ``shutdown``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
