"""The worker's exception tree: how a failure is classified decides what happens to the message.

    WorkerError
    ├── TransientError    nack: Pub/Sub redelivers (Firestore unreachable, model busy, ...)
    └── PermanentError    write the job ``failed`` with ``code`` and ``message``, then ack

Vendor errors are translated into these at the boundary (``store``, the task adapters); anything
else escaping a task is a bug in it and is treated as permanent (``internal``), so a poison job
cannot loop forever.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class TransientError(WorkerError):
    """Worth retrying later: the message is nacked."""


class PermanentError(WorkerError):
    """Retrying cannot help: the job is written ``failed`` and the message acked."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
