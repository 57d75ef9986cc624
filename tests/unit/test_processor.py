"""worker/processor.py: how each outcome settles its message, with a fake store and model.

The fakes stand in for Firestore and the model only here; the integration tests run the same
processor against the real emulators and the real model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from schemas.messages import JobMessage
from worker.errors import PermanentError, TransientError
from worker.processor import Processor
from worker.store import Claim, Skip

JOB_ID = "a" * 32


@dataclass
class FakeMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str = "m-1"
    delivery_attempt: int | None = 1
    settled: list[str] = field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def nack(self) -> None:
        self.settled.append("nack")


def job_message(task: str = "embed") -> FakeMessage:
    data, attributes = JobMessage(job_id=JOB_ID, task=task, tenant="t").to_pubsub()
    return FakeMessage(data, attributes)


@dataclass
class FakeStore:
    claimed: Claim | Skip | Exception
    owns: bool = True
    writes: list[tuple[str, Any]] = field(default_factory=list)

    def claim(self, job_id: str, tenant: str) -> Claim | Skip:
        if isinstance(self.claimed, Exception):
            raise self.claimed
        return self.claimed

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        self.writes.append(("succeeded", result))
        return self.owns

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        self.writes.append(("failed", code))
        return self.owns


class FakeModel:
    name = "embed"

    def __init__(self, outcome: Exception | None = None):
        self.outcome = outcome
        self.calls = 0

    def load(self) -> None:
        return None

    def run(self, inputs: list[BaseModel]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.outcome is not None:
            raise self.outcome
        return [{"model": "fake", "dimensions": 384, "embeddings": [[0.0] * 384]} for _ in inputs]


def claim(task: str = "embed", input: dict[str, Any] | None = None) -> Claim:
    return Claim(JOB_ID, 1, task, "t", input if input is not None else {"texts": ["hi"]})


def run(store: FakeStore, model: FakeModel, message: FakeMessage | None = None) -> FakeMessage:
    message = message or job_message()
    Processor(store, {"embed": model}).handle([message])
    return message


def test_success_writes_the_stored_result_then_acks() -> None:
    store, model = FakeStore(claim()), FakeModel()
    assert run(store, model).settled == ["ack"]
    ((status, result),) = store.writes
    assert status == "succeeded" and isinstance(result["embeddings_f32"][0], bytes)


def test_a_skipped_delivery_is_acked_without_running() -> None:
    store, model = FakeStore(Skip(JOB_ID, "already succeeded")), FakeModel()
    assert run(store, model).settled == ["ack"]
    assert model.calls == 0 and store.writes == []


def test_a_permanent_error_writes_failed_then_acks() -> None:
    store = FakeStore(claim())
    assert run(store, FakeModel(PermanentError("bad_text", "no"))).settled == ["ack"]
    assert store.writes == [("failed", "bad_text")]


def test_an_unexpected_error_in_a_task_fails_the_job_instead_of_looping() -> None:
    store = FakeStore(claim())
    assert run(store, FakeModel(ZeroDivisionError())).settled == ["ack"]
    assert store.writes == [("failed", "internal")]


def test_a_transient_error_nacks_and_writes_nothing() -> None:
    store = FakeStore(claim())
    assert run(store, FakeModel(TransientError("busy"))).settled == ["nack"]
    assert store.writes == []


def test_firestore_unavailable_at_claim_nacks() -> None:
    store, model = FakeStore(TransientError("Firestore claim failed")), FakeModel()
    assert run(store, model).settled == ["nack"]
    assert model.calls == 0


def test_an_attempt_that_lost_the_job_still_acks() -> None:
    # Its outcome was dropped by the fence; redelivering would only run it again.
    store = FakeStore(claim(), owns=False)
    assert run(store, FakeModel()).settled == ["ack"]


def test_stored_input_that_no_longer_validates_fails_the_job() -> None:
    store, model = FakeStore(claim(input={"texts": []})), FakeModel()
    assert run(store, model).settled == ["ack"]
    assert store.writes == [("failed", "invalid_input")] and model.calls == 0


def test_a_task_no_worker_serves_fails_instead_of_looping() -> None:
    store, model = FakeStore(claim(task="paint")), FakeModel()
    assert run(store, model, job_message(task="paint")).settled == ["ack"]
    assert store.writes == [("failed", "unsupported_task")]


@pytest.mark.parametrize("data", [b"not json", b"[]", b"null", b'{"v": 1}'])
def test_an_unreadable_message_is_acked_as_poison(data: bytes) -> None:
    store, model = FakeStore(claim()), FakeModel()
    message = FakeMessage(data, {"job_id": JOB_ID, "task": "embed", "tenant": "t"})
    assert run(store, model, message).settled == ["ack"]
    assert model.calls == 0 and store.writes == []
