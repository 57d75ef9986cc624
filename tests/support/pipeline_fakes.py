"""Fakes of the pipeline's tests (worker/processor.py and worker/pipeline/): a job store, a model,
claims and claimed jobs. They stand in for Firestore and the model only in unit tests; the
integration tests run the same pipeline against the real emulators and the real model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas.jobs import JobStatus
from schemas.messages import JobMessage
from tests.support.fakes import FakeMessage, handle_all
from worker.attempts import StopToken
from worker.errors import PermanentError
from worker.jobtrace import JobTrace
from worker.pipeline.delivery import Delivery, InFlight
from worker.processor import Processor
from worker.store import Busy, Claim, Skip

JOB_ID = "a" * 32


def job_message(task: str = "embed", job_id: str = JOB_ID) -> FakeMessage:
    data, attributes = JobMessage(job_id=job_id, task=task, tenant="t").to_pubsub()
    return FakeMessage(data, attributes, message_id=job_id)


@dataclass
class FakeStore:
    """Claims answer from ``claims`` in turn (the last one repeats); an exception is raised."""

    claims: list[Claim | Skip | Busy | Exception]
    owns: bool = True
    writes: list[tuple[str, Any]] = field(default_factory=list)
    lease_s: float = 0.2
    calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def claim(self, job_id: str, tenant: str) -> Claim | Skip | Busy:
        outcome = self.claims[min(self.calls, len(self.claims) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]:
        return [self.claim(job_id, tenant) for job_id, tenant in jobs]

    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
        for _claim, status, fields in ends:
            if status is JobStatus.SUCCEEDED:
                self.writes.append(("succeeded", fields["result"]))
                self.batch_sizes.append(fields["batch_size"])
            else:
                self.writes.append((status.value, fields["error"]["code"]))
        return [self.owns] * len(ends)

    def release(
        self, claim: Claim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool:
        self.writes.append(("released", last_error and last_error["code"]))
        return self.owns

    def check(self, claims: Sequence[Claim]) -> dict[str, str]:
        return {c.token: "ok" for c in claims}


class FakeModel:
    name = "embed"

    def __init__(self, outcome: Exception | None = None, sleep_s: float = 0.0):
        self.outcome = outcome
        self.sleep_s = sleep_s
        self.calls = 0

    def load(self) -> None:
        return None

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        self.calls += 1
        if self.sleep_s:
            stop.sleep(self.sleep_s)
        if self.outcome is not None:
            raise self.outcome
        return [{"model": "fake", "dimensions": 384, "embeddings": [[0.0] * 384]} for _ in inputs]


class TextModel(FakeModel):
    """Fails a whole call when any text in it is ``bad``; records each call's size."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__(sleep_s=sleep_s)
        self.sizes: list[int] = []

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        self.sizes.append(len(inputs))
        if any("bad" in item.texts for item in inputs):  # type: ignore[attr-defined]
            raise PermanentError("bad_text", "no")
        return super().run(inputs, stop)


def claim(
    task: str = "embed", input: dict[str, Any] | None = None, attempt: int = 1, **metadata: str
) -> Claim:
    body = input if input is not None else {"texts": ["hi"]}
    return Claim(JOB_ID, attempt, "tok", task, "t", body, metadata)


def text_claim(text: str, **metadata: str) -> Claim:
    """A claimed ``embed`` job of one text, its id and token the text's own."""
    return Claim(text, 1, f"tok-{text}", "embed", "t", {"texts": [text]}, metadata)


def in_flight(job: Claim, timeout_s: float = 60.0) -> InFlight:
    """``job`` claimed, as the claimer hands it on (its message a fresh ``FakeMessage``)."""
    message = job_message(job.task, job.job_id)
    parsed = JobMessage(job_id=job.job_id, task=job.task, tenant=job.tenant)
    return InFlight(job, Delivery(message, parsed), StopToken(timeout_s), JobTrace.of(message))


def processor(store: FakeStore, model: FakeModel, **options: Any) -> Processor:
    options.setdefault("task_timeout_s", lambda _task: 60.0)
    return Processor(store, {"embed": model}, **options)


def run(
    store: FakeStore, model: FakeModel, message: FakeMessage | None = None, **options: Any
) -> FakeMessage:
    """``message`` (by default ``job_message()``) through a ``processor`` of ``store`` and
    ``model``, until it settles; the message, its ``settled`` filled in."""
    message = message or job_message()
    worker = processor(store, model, **options)
    handle_all(worker, [message])
    return message
