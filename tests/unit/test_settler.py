"""worker/pipeline/settler.py: each outcome's write, and how its message is settled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from common.googleapi import Invalid
from schemas.jobs import JobStatus
from tests.support.pipeline_fakes import FakeStore, in_flight, text_claim
from worker.attempts import StopReason, Watcher
from worker.errors import PermanentError, Stopped, StoreUnavailable, TransientError
from worker.pipeline.delivery import InFlight, Outcome
from worker.pipeline.hold import Hold
from worker.pipeline.settler import Settler
from worker.store import Claim

RESULT = {"model": "fake", "dimensions": 1, "embeddings_f32": [b"\0\0\0\0"]}


def settle(
    store: FakeStore,
    outcomes: Sequence[Outcome],
    hold: Hold | None = None,
    delivery_attempt: int | None = 1,
    attempt: int = 1,
) -> list[list[str]]:
    """``outcomes`` settled, one job each; what each message got."""
    settler = Settler(
        store,
        hold=hold or Hold(),
        watcher=Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0),
        timeout_for=lambda _: 9.0,
        max_attempts=5,
    )
    batch: list[InFlight] = []
    for i in range(len(outcomes)):
        job = text_claim(f"job-{i}")
        item = in_flight(Claim(job.job_id, attempt, job.token, "embed", "t", job.input, {}))
        item.delivery.message.delivery_attempt = delivery_attempt
        batch.append(item)
    settler.settle(batch, list(outcomes), inference_ms=12.0)
    settler.close()
    return [item.delivery.message.settled for item in batch]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("outcome", "settled", "writes"),
    [
        (RESULT, ["ack"], [("succeeded", RESULT)]),
        (PermanentError("bad_text", "no"), ["ack"], [("failed", "bad_text")]),
        (Stopped(StopReason.TIMEOUT), ["ack"], [("failed", "timeout")]),
        (Stopped(StopReason.CANCELLED), ["ack"], []),
        (Stopped(StopReason.LOST), ["ack"], []),
        (Stopped(StopReason.SHUTDOWN), ["nack"], [("released", None)]),
        (TransientError("busy"), ["drop", "retry in 10s"], [("released", "transient")]),
    ],
)
def test_each_outcome_is_written_then_its_message_settled(
    outcome: Outcome, settled: list[str], writes: list[Any]
) -> None:
    store = FakeStore([])
    assert settle(store, [outcome]) == [settled]
    assert store.writes == writes


def test_a_batch_s_terminal_writes_share_one_commit_with_its_timings() -> None:
    commits: list[list[dict[str, Any]]] = []

    class Commits(FakeStore):
        def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
            commits.append([fields for _, _, fields in ends])
            return super().end_many(ends)

    settle(Commits([]), [RESULT, PermanentError("bad_text", "no"), Stopped(StopReason.CANCELLED)])
    (commit,) = commits
    assert [(f["batch_size"], f["inference_ms"]) for f in commit] == [(3, 12.0)] * 2


def test_the_timeout_message_names_the_task_s_limit() -> None:
    class Errors(FakeStore):
        def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
            self.writes.extend(("error", f["error"]["message"]) for _, _, f in ends)
            return [True] * len(ends)

    store = Errors([])
    settle(store, [Stopped(StopReason.TIMEOUT)])
    assert store.writes == [("error", "the task ran longer than its 9s limit")]


def test_without_a_delivery_count_the_maximum_attempts_end_the_job() -> None:
    store = FakeStore([])
    assert settle(store, [TransientError("busy")], delivery_attempt=None, attempt=5) == [["ack"]]
    assert store.writes == [("failed", "attempts_exhausted")]


def test_an_outcome_another_writer_settled_still_acks() -> None:
    store = FakeStore([], owns=False)
    assert settle(store, [RESULT]) == [["ack"]]


def test_a_result_firestore_refuses_fails_its_job_alone_as_too_large() -> None:
    class Refusing(FakeStore):
        def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
            if any(status is JobStatus.SUCCEEDED for _, status, _ in ends):
                raise Invalid("document too large")  # the store's translation of InvalidArgument
            return super().end_many(ends)

    store = Refusing([])
    assert settle(store, [RESULT, PermanentError("bad_text", "no")]) == [["ack"], ["ack"]]
    assert sorted(store.writes) == [("failed", "bad_text"), ("failed", "result_too_large")]


def test_firestore_gone_at_shutdown_nacks_instead_of_writing() -> None:
    class Down(FakeStore):
        def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
            raise StoreUnavailable("down")

    hold = Hold()
    hold.abandon()
    assert settle(Down([]), [RESULT, RESULT], hold) == [["nack"], ["nack"]]


def test_a_bug_while_settling_nacks_the_batch() -> None:
    class Broken(FakeStore):
        def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
            raise RuntimeError("bug")

    assert settle(Broken([]), [RESULT]) == [["nack"]]


@pytest.mark.parametrize(("delivery", "wait"), [(1, 10), (2, 20), (4, 80), (7, 600), (30, 600)])
def test_the_retry_backoff_doubles_up_to_ten_minutes(delivery: int, wait: int) -> None:
    watcher = Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0)
    settler = Settler(FakeStore([]), hold=Hold(), watcher=watcher, timeout_for=lambda _: 9.0)
    assert settler.backoff_s(delivery) == wait
    settler.close()


def test_after_close_a_batch_handed_over_is_nacked() -> None:
    watcher = Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0)
    settler = Settler(FakeStore([]), hold=Hold(), watcher=watcher, timeout_for=lambda _: 9.0)
    settler.close()
    item = in_flight(text_claim("a"))
    settler.settle([item], [RESULT], inference_ms=1.0)
    assert item.delivery.message.settled == ["nack"]  # type: ignore[attr-defined]
