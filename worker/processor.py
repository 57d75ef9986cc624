"""What happens to one delivery: parse, claim, run, write, then ack (or nack).

``handle`` takes a list of messages so that micro-batching can hand it many at once; each message
is settled exactly once, after its outcome is durable in Firestore:

    parse ── bad ──────────────────────────────────────────────▶ ack (poison; logged)
    claim ── missing / terminal / corrupt ─────────────────────▶ ack (nothing to do)
          ── Firestore unavailable ────────────────────────────▶ nack (redelivered)
    run   ── PermanentError / unexpected /
             task no worker serves ─────────▶ write failed ──────▶ ack
          ── TransientError ──────────────────────────────────▶ nack
          ── ok ──▶ write succeeded ──────────────────────────▶ ack
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.jsonlog import log_context
from schemas.messages import JobMessage
from schemas.tasks import get_task
from worker.errors import PermanentError, TransientError
from worker.store import Claim, Skip
from worker.tasks import Adapter

logger = logging.getLogger(__name__)


class Message(Protocol):
    """The part of ``pubsub_v1.subscriber.message.Message`` the processor uses."""

    data: bytes
    attributes: Any
    message_id: str
    delivery_attempt: int | None

    def ack(self) -> None: ...
    def nack(self) -> None: ...


class Store(Protocol):
    """The state machine the processor drives (``worker.store.JobStore`` in production)."""

    def claim(self, job_id: str, tenant: str) -> Claim | Skip: ...
    def finish(self, claim: Claim, result: dict[str, Any]) -> bool: ...
    def fail(self, claim: Claim, code: str, message: str) -> bool: ...


class Processor:
    def __init__(self, store: Store, adapters: dict[str, Adapter]):
        self._store = store
        self._adapters = adapters
        # Serialises claim + forward pass: torch already uses every core for one pass, and two
        # at once only thrash. Claiming inside it means a job reads `running` only once the model
        # is free for it; the result write happens outside it, overlapping the next job's pass.
        self._model_lock = threading.Lock()

    def handle(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._handle_one(message)

    def _handle_one(self, message: Message) -> None:
        try:
            job = JobMessage.from_pubsub(message.data, dict(message.attributes))
        except ValueError as exc:
            logger.error("unreadable message %s acked: %s", message.message_id, exc)
            message.ack()
            return
        with log_context(job_id=job.job_id, task=job.task, tenant=job.tenant):
            try:
                self._process(job, message)
            except TransientError as exc:
                logger.warning("transient failure; message nacked: %s", exc)
                message.nack()

    def _process(self, job: JobMessage, message: Message) -> None:
        with self._model_lock:
            claimed = self._store.claim(job.job_id, job.tenant)
            if isinstance(claimed, Skip):
                logger.info("delivery skipped: %s", claimed.reason, extra={"skip": claimed.reason})
                message.ack()
                return
            started = time.perf_counter()
            outcome = self._run(claimed)
            inference_ms = (time.perf_counter() - started) * 1000
        # A write refused by the fence is logged by the store; the message is acked either way,
        # since a newer attempt owns the job and redelivery would only run it again.
        if isinstance(outcome, PermanentError):
            if self._store.fail(claimed, outcome.code, outcome.message):
                logger.info("job failed: %s", outcome.code, extra={"attempt": claimed.attempt})
        elif self._store.finish(claimed, outcome):
            logger.info(
                "job succeeded",
                extra={"attempt": claimed.attempt, "inference_ms": round(inference_ms, 1)},
            )
        message.ack()

    def _run(self, claim: Claim) -> dict[str, Any] | PermanentError:
        """The stored result, or the permanent error to record. Transient errors propagate."""
        adapter = self._adapters.get(claim.task)
        if adapter is None:
            # Every worker serves every task until the routing issue adds task pools; a task no
            # worker serves would only come back, so it fails instead of looping.
            return PermanentError("unsupported_task", f"no worker serves task {claim.task!r}")
        spec = get_task(claim.task)
        try:
            task_input = spec.input_model.model_validate(claim.input)
        except ValidationError as exc:
            return PermanentError("invalid_input", str(exc))
        try:
            (result,) = adapter.run([task_input])
            return spec.result_to_store(result)
        except TransientError:
            raise
        except PermanentError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a bug in a task must not loop forever
            logger.exception("task raised")
            return PermanentError("internal", f"{type(exc).__name__} in task {claim.task}")
