"""worker/processor.py: the whole pipeline, message in to message settled, with a fake store
and model (tests/support/pipeline_fakes.py); each role has its own tests (test_claimer,
test_runner, test_settler, test_hold, test_lanes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

import pytest
from pydantic import BaseModel

from schemas.jobs import JobStatus
from schemas.messages import JobMessage
from tests.support import wait_for
from tests.support.fakes import FakeMessage, handle_all
from tests.support.pipeline_fakes import (
    JOB_ID,
    FakeModel,
    FakeStore,
    TextModel,
    claim,
    job_message,
    processor,
    run,
)
from worker.attempts import StopToken
from worker.errors import PermanentError, StoreUnavailable, TransientError
from worker.faults import with_faults
from worker.processor import Processor
from worker.store import Busy, Claim, Skip


def test_success_writes_the_stored_result_then_acks() -> None:
    store, model = FakeStore([claim()]), FakeModel()
    assert run(store, model).settled == ["ack"]
    ((status, result),) = store.writes
    assert status == "succeeded" and isinstance(result["embeddings_f32"][0], bytes)


def test_a_skipped_delivery_is_acked_without_running() -> None:
    store, model = FakeStore([Skip(JOB_ID, "already succeeded")]), FakeModel()
    assert run(store, model).settled == ["ack"]
    assert model.calls == 0 and store.writes == []


def test_a_permanent_error_writes_failed_then_acks() -> None:
    store = FakeStore([claim()])
    assert run(store, FakeModel(PermanentError("bad_text", "no"))).settled == ["ack"]
    assert store.writes == [("failed", "bad_text")]


def test_an_unexpected_error_in_a_task_fails_the_job_instead_of_looping() -> None:
    store = FakeStore([claim()])
    assert run(store, FakeModel(ZeroDivisionError())).settled == ["ack"]
    assert store.writes == [("failed", "internal")]


def test_a_transient_error_releases_the_job_and_redelivers_after_a_backoff() -> None:
    store = FakeStore([claim()])
    assert run(store, FakeModel(TransientError("busy"))).settled == ["drop", "retry in 10s"]
    assert store.writes == [("released", "transient")]


@pytest.mark.parametrize(("delivery", "wait"), [(1, 10), (2, 20), (4, 80), (7, 600), (30, 600)])
def test_the_retry_backoff_doubles_up_to_ten_minutes(delivery: int, wait: int) -> None:
    store, message = FakeStore([claim()]), job_message()
    message.delivery_attempt = delivery
    run(store, FakeModel(TransientError("busy")), message)
    assert message.settled == ["drop", f"retry in {wait}s"]


def test_without_a_delivery_count_the_worker_enforces_the_maximum_attempts() -> None:
    # No dead-letter policy on the subscription: messages carry no delivery_attempt.
    store, message = FakeStore([claim(attempt=5)]), job_message()
    message.delivery_attempt = None
    assert run(store, FakeModel(TransientError("busy")), message).settled == ["ack"]
    assert store.writes == [("failed", "attempts_exhausted")]


def test_with_a_delivery_count_the_dead_letter_policy_decides() -> None:
    store, message = FakeStore([claim(attempt=5)]), job_message()
    message.delivery_attempt = 5
    assert run(store, FakeModel(TransientError("busy")), message).settled[0] == "drop"


def test_firestore_unavailable_is_held_and_retried_not_nacked() -> None:
    outage = StoreUnavailable("Firestore claim failed")
    store, model = FakeStore([outage, outage, claim()]), FakeModel()
    with patch("worker.pipeline.hold.STORE_BACKOFF_S", (0.01,)):
        assert run(store, model).settled == ["ack"]
    assert store.calls == 3 and model.calls == 1


def test_a_job_held_by_a_live_attempt_is_waited_for_then_skipped() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.05)
    store = FakeStore([Busy(JOB_ID, soon), Skip(JOB_ID, "already succeeded")])
    model = FakeModel()
    assert run(store, model).settled == ["ack"]
    assert store.calls == 2 and model.calls == 0


def test_an_attempt_that_lost_the_job_still_acks() -> None:
    # Its outcome was dropped by the fence; redelivering would only run it again.
    store = FakeStore([claim()], owns=False)
    assert run(store, FakeModel()).settled == ["ack"]


def test_a_task_past_its_time_limit_fails_with_timeout() -> None:
    store = FakeStore([claim()])
    message = run(store, FakeModel(sleep_s=5), task_timeout_s=lambda _task: 0.1)
    assert message.settled == ["ack"]
    assert store.writes == [("failed", "timeout")]


@pytest.mark.parametrize("reason", ["cancelled", "lost"])
def test_an_attempt_stopped_by_its_watcher_acks_and_writes_nothing(reason: str) -> None:
    store = FakeStore([claim()])
    store.check = lambda claims: {c.token: reason for c in claims}  # type: ignore[method-assign]
    message = run(store, FakeModel(sleep_s=5), watch_interval_s=0.05)
    assert message.settled == ["ack"]
    assert store.writes == []


def test_shutdown_past_the_grace_releases_the_job_and_nacks() -> None:
    store, message = FakeStore([claim()]), job_message()
    worker = processor(store, FakeModel(sleep_s=5))
    worker.start()
    threading.Timer(0.1, worker.abandon).start()
    worker.handle([message])
    worker.close()
    assert message.settled == ["nack"]
    assert store.writes == [("released", None)]


def test_a_draining_worker_starts_no_new_job() -> None:
    store, model, message = FakeStore([claim()]), FakeModel(), job_message()
    worker = processor(store, model)
    worker.drain()
    worker.handle([message])
    assert message.settled == ["nack"] and store.calls == 0


def test_stored_input_that_no_longer_validates_fails_the_job() -> None:
    store, model = FakeStore([claim(input={"texts": []})]), FakeModel()
    assert run(store, model).settled == ["ack"]
    assert store.writes == [("failed", "invalid_input")] and model.calls == 0


def test_a_task_this_worker_does_not_serve_is_nacked_untouched() -> None:
    # Only a misrouted message gets here; whoever serves the task takes it.
    store, model = FakeStore([claim(task="paint")]), FakeModel()
    assert run(store, model, job_message(task="paint")).settled == ["nack"]
    assert store.writes == [] and store.calls == 0


@pytest.mark.parametrize(
    ("fault", "settled", "writes"),
    [
        ("transient", ["drop", "retry in 10s"], [("released", "transient")]),
        ("nonsense", ["ack"], [("failed", "bad_fault")]),
    ],
)
def test_injected_faults_only_with_the_adapters_wrapped(
    fault: str, settled: list[str], writes: Any
) -> None:
    store = FakeStore([claim(**{"omni-fault": fault})])
    worker = Processor(store, with_faults({"embed": FakeModel()}), task_timeout_s=lambda _: 60.0)
    handle_all(worker, [message := job_message()])
    assert message.settled == settled and store.writes == writes
    off = FakeStore([claim(**{"omni-fault": fault})])
    assert run(off, FakeModel()).settled == ["ack"]
    assert off.writes[0][0] == "succeeded"


@pytest.mark.parametrize("data", [b"not json", b"[]", b"null", b'{"v": 1}'])
def test_an_unreadable_message_is_acked_as_poison(data: bytes) -> None:
    store, model = FakeStore([claim()]), FakeModel()
    message = FakeMessage(data, {"job_id": JOB_ID, "task": "embed", "tenant": "t"})
    assert run(store, model, message).settled == ["ack"]
    assert model.calls == 0 and store.writes == []


# -- micro-batching ------------------------------------------------------------------------------


class BatchStore(FakeStore):
    """Claims every job it is asked for, each with its own token; records the claim batches."""

    def __init__(self) -> None:
        super().__init__([])
        self.claim_batches: list[int] = []
        self.released: list[tuple[str, bool]] = []

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]:
        self.claim_batches.append(len(jobs))
        return [
            Claim(job_id, 1, f"tok-{job_id}", "embed", tenant, {"texts": [job_id]}, {})
            for job_id, tenant in jobs
        ]

    def release(
        self, claim: Claim, last_error: dict[str, str] | None, started: bool = True
    ) -> bool:
        self.released.append((claim.job_id, started))
        return True


def messages(*job_ids: str) -> list[FakeMessage]:
    out = []
    for job_id in job_ids:
        data, attributes = JobMessage(job_id=job_id, task="embed", tenant="t").to_pubsub()
        out.append(FakeMessage(data, attributes, message_id=job_id))
    return out


def handled(worker: Processor, *job_ids: str) -> list[FakeMessage]:
    """Start the processor, hand it one message per job id at once, close it once all settle."""
    received = messages(*job_ids)
    handle_all(worker, received)
    return received


def batched(store: FakeStore, model: FakeModel, wait_s: float = 0.05) -> Processor:
    return processor(store, model, batch_policy=lambda _task: (8, wait_s))


def test_messages_that_arrive_together_share_one_claim_one_call_and_one_write() -> None:
    store, model = BatchStore(), TextModel()
    worker = batched(store, model)
    received = handled(worker, *[f"job-{i}" for i in range(6)])
    assert all(m.settled == ["ack"] for m in received)
    assert store.claim_batches == [6] and model.sizes == [6]
    assert store.batch_sizes == [6] * 6
    assert (worker.stats["embed"].batches, worker.stats["embed"].jobs) == (1, 6)


def test_a_batch_is_cut_at_its_maximum_size() -> None:
    store, model = BatchStore(), TextModel()
    handled(batched(store, model), *[f"job-{i}" for i in range(20)])
    assert sum(model.sizes) == 20 and max(model.sizes) == 8


def test_one_bad_job_does_not_fail_its_batch() -> None:
    store, model = BatchStore(), TextModel()
    worker = batched(store, model)
    received = handled(worker, "ok-1", "bad", "ok-2")
    assert all(m.settled == ["ack"] for m in received)
    assert model.sizes == [3, 1, 1, 1]  # the batch failed as a whole, then each ran alone
    assert sorted(status for status, _ in store.writes) == ["failed", "succeeded", "succeeded"]


def test_a_cancelled_job_does_not_stop_its_batch() -> None:
    store, model = BatchStore(), TextModel(sleep_s=0.5)
    store.check = lambda claims: {  # type: ignore[method-assign]
        c.token: ("cancelled" if c.job_id == "job-1" else "ok") for c in claims
    }
    worker = processor(store, model, batch_policy=lambda _task: (8, 0.05), watch_interval_s=0.05)
    received = handled(worker, "job-0", "job-1", "job-2")
    assert all(m.settled == ["ack"] for m in received)
    assert model.sizes == [3] and len(store.writes) == 2  # no result for the cancelled job


def test_a_draining_worker_gives_back_a_claimed_batch_it_has_not_started() -> None:
    # job-0 runs for 1 s; job-1 is claimed as the next batch meanwhile, waiting for the model.
    store, model = BatchStore(), TextModel(sleep_s=1.0)
    worker = processor(store, model, batch_policy=lambda _task: (1, 0.0))
    worker.start()
    first, second = messages("job-0", "job-1")
    try:
        threading.Thread(target=worker.handle, args=([first],)).start()
        wait_for(lambda: store.claim_batches == [1], 5, "job-0 claimed")
        waiting = threading.Thread(target=worker.handle, args=([second],))
        waiting.start()
        wait_for(lambda: store.claim_batches == [1, 1], 5, "job-1 claimed")
        worker.drain()
        waiting.join(5)
    finally:
        worker.close()
    assert first.settled == ["ack"] and second.settled == ["nack"]
    assert store.released == [("job-1", False)]  # its attempt given back


def test_a_drain_nacks_deliveries_waiting_for_a_live_lease_at_once() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    store, message = FakeStore([Busy(JOB_ID, later)], lease_s=30), job_message()
    worker = processor(store, FakeModel())
    worker.start()
    try:
        handling = threading.Thread(target=worker.handle, args=([message],))
        handling.start()
        time.sleep(0.2)
        worker.drain()
        handling.join(2)
        assert not handling.is_alive() and message.settled == ["nack"]
    finally:
        worker.close()


class BrokenEndStore(BatchStore):
    """Terminal writes raise ``error``; with ``refuse_results``, only writes holding a result do
    (Firestore refusing a document over 1 MiB), and failures are written."""

    def __init__(self, error: Exception, refuse_results: bool = False) -> None:
        super().__init__()
        self.error = error
        self.refuse_results = refuse_results

    def end_many(self, ends: Sequence[tuple[Claim, JobStatus, dict[str, Any]]]) -> list[bool]:
        holds_result = any(status is JobStatus.SUCCEEDED for _, status, _ in ends)
        if holds_result or not self.refuse_results:
            raise self.error
        return super().end_many(ends)


def test_an_unexpected_error_while_writing_nacks_the_batch_instead_of_hanging() -> None:
    store = BrokenEndStore(RuntimeError("bug"))
    worker = batched(store, TextModel())
    worker.start()
    try:
        received = messages("job-0", "job-1")
        worker.handle(received)  # returns: every message is settled
    finally:
        worker.close()
    assert all(m.settled == ["nack"] for m in received)


def test_a_result_firestore_refuses_fails_its_job_as_too_large() -> None:
    from common.googleapi import Invalid

    store = BrokenEndStore(Invalid("document too large"), refuse_results=True)
    worker = batched(store, TextModel())
    received = handled(worker, "job-0", "job-1")
    assert all(m.settled == ["ack"] for m in received)
    assert store.writes == [("failed", "result_too_large")] * 2


def test_a_message_routed_to_another_task_than_its_job_is_not_run() -> None:
    store, model = FakeStore([claim(task="forecast")]), FakeModel()
    assert run(store, model).settled == ["ack"]
    assert store.writes == [("failed", "unsupported_task")] and model.calls == 0


def test_an_adapter_returning_too_few_results_fails_nothing_else() -> None:
    class Short(TextModel):
        def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
            return super().run(inputs, stop)[:1]

    store, model = BatchStore(), Short()
    worker = batched(store, model)
    received = handled(worker, "job-0", "job-1")
    # The batch broke as a whole, so each job ran alone and succeeded.
    assert all(m.settled == ["ack"] for m in received) and model.sizes == [2, 1, 1]
