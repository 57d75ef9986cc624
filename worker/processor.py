"""What happens to one delivery: parse, claim, run, write, then ack (or nack).

``handle`` takes a list of messages so that micro-batching can hand it many at once; each message
is settled exactly once, after its outcome is durable in Firestore:

    parse ── bad ──────────────────────────────────────────────▶ ack (poison; logged)
    claim ── missing / terminal ───────────────────────────────▶ ack (nothing to do)
          ── Firestore unavailable ────────────────────────────▶ nack (redelivered)
    run   ── PermanentError / unexpected ─▶ write failed ──────▶ ack
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
from worker.store import Claim, JobStore, Skip
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


class Processor:
    def __init__(self, store: JobStore, adapters: dict[str, Adapter]):
        self._store = store
        self._adapters = adapters
        # Serialises forward passes: torch already uses every core for one, and two at once
        # only thrash. Claims and result writes happen outside it, overlapping the model.
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
        adapter = self._adapters.get(job.task)
        if adapter is None:
            # The routing issue gives each pool its own subscription; until then a worker serves
            # every task, so this is a deployment error worth redelivering elsewhere.
            raise TransientError(f"this worker does not serve task {job.task!r}")
        with self._model_lock:
            claimed = self._store.claim(job.job_id, job.tenant)
            if isinstance(claimed, Skip):
                logger.info("delivery skipped: %s", claimed.reason, extra={"skip": claimed.reason})
                message.ack()
                return
            started = time.perf_counter()
            outcome = self._run(adapter, claimed)
            inference_ms = (time.perf_counter() - started) * 1000
        if isinstance(outcome, PermanentError):
            self._store.fail(claimed, outcome.code, outcome.message)
            logger.info("job failed: %s", outcome.code, extra={"attempt": claimed.attempt})
        else:
            self._store.finish(claimed, outcome)
            logger.info(
                "job succeeded",
                extra={"attempt": claimed.attempt, "inference_ms": round(inference_ms, 1)},
            )
        message.ack()

    def _run(self, adapter: Adapter, claim: Claim) -> dict[str, Any] | PermanentError:
        """The stored result, or the permanent error to record. Transient errors propagate."""
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
