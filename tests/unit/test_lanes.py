"""worker/pipeline/lanes.py: the adaptive gather. A lone job is claimed at once when the model is
idle; while it is busy, batches fill to their maximum; order, close and drain are as before.

Lanes here run their real threads; their claim and run are recorders, the run gated by an event
(a model that stays busy until the test lets it go) and the clock a fake one where time matters
only to the policy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from schemas.messages import JobMessage
from tests.support.pipeline_fakes import job_message
from worker.pipeline.delivery import Delivery
from worker.pipeline.lanes import Ewma, GatherPolicy, Lane

WAIT_S = 5.0
"""The longest any test waits for a lane's thread to get somewhere."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def delivery(job_id: str) -> Delivery[JobMessage]:
    return Delivery(job_message(job_id=job_id), JobMessage(job_id=job_id, task="embed", tenant="t"))


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Recorder:
    """A lane's claim and run: each claim's job ids (with its time), each run's; runs block
    while ``busy`` is clear."""

    def __init__(self, busy: bool = False) -> None:
        self.claims: list[list[str]] = []
        self.claimed_at: list[float] = []
        self.runs: list[list[str]] = []
        self.running = threading.Event()
        self.free = threading.Event()
        if not busy:
            self.free.set()

    def claim(self, _lane: Any, batch: list[Delivery[JobMessage]]) -> list[str]:
        self.claims.append([d.job.job_id for d in batch])
        self.claimed_at.append(time.monotonic())
        return [d.job.job_id for d in batch]

    def run(self, _task: str, batch: list[str]) -> None:
        self.running.set()
        assert self.free.wait(WAIT_S)
        self.runs.append(batch)


def lane(
    recorder: Recorder, max_size: int = 4, max_wait_s: float = 0.0, clock: Any = time.monotonic
) -> Lane[JobMessage, str]:
    started: Lane[JobMessage, str] = Lane(
        "embed", max_size, max_wait_s, claim=recorder.claim, run=recorder.run, clock=clock
    )
    started.start()
    return started


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


# -- the policy, alone --------------------------------------------------------------------------


def test_an_idle_model_claims_at_the_first_delivery_plus_the_wait_cap() -> None:
    policy = GatherPolicy(max_size=32, max_wait_s=0.005)
    assert policy.claim_at(first_at=10.0, running_since=None, waiting=False) == 10.005


def test_a_busy_model_claims_one_claim_before_its_batch_is_expected_to_end() -> None:
    policy = GatherPolicy(32, 0.005, run_s=Ewma(0.200), claim_s=Ewma(0.010))
    assert policy.claim_at(first_at=10.05, running_since=10.0, waiting=False) == pytest.approx(
        10.19
    )


def test_a_running_batch_is_expected_to_take_its_size_times_the_time_per_item() -> None:
    # 5 ms an item: a full batch after short ones ends later than they did, and the next batch
    # gathers until then (claimed at the short ones' pace, it would be short too).
    policy = GatherPolicy(32, 0.0, run_s=Ewma(0.005), claim_s=Ewma(0.010))
    assert policy.claim_at(10.0, running_since=10.0, waiting=False, running_size=32) == (
        pytest.approx(10.15)
    )
    assert policy.claim_at(10.0, running_since=10.0, waiting=False, running_size=4) == (
        pytest.approx(10.01)
    )


def test_a_claim_slower_than_the_model_waits_for_half_the_running_batch() -> None:
    # Claiming ahead cannot hide such a claim; claiming at once would only shrink the batch.
    policy = GatherPolicy(32, 0.0, run_s=Ewma(0.010), claim_s=Ewma(0.030))
    assert policy.claim_at(10.0, running_since=10.0, waiting=False) == pytest.approx(10.005)


def test_nothing_is_claimed_while_a_claimed_batch_waits() -> None:
    assert GatherPolicy(32, 0.0).claim_at(10.0, running_since=9.0, waiting=True) is None


def test_before_any_measurement_a_busy_model_claims_at_once() -> None:
    assert GatherPolicy(32, 0.0).claim_at(10.0, running_since=9.5, waiting=False) == 9.5


def test_the_averages_follow_recent_samples() -> None:
    average = Ewma()
    average.add(1.0)
    assert average.value == 1.0
    for _ in range(30):
        average.add(2.0)
    assert average.value == pytest.approx(2.0, abs=0.01)


# -- lanes ---------------------------------------------------------------------------------------


def test_a_lone_delivery_is_claimed_at_once_when_the_model_is_idle() -> None:
    recorder, clock = Recorder(), FakeClock()  # frozen: any wait on the clock would never end
    worker = lane(recorder, clock=clock)
    try:
        worker.put(delivery("lone"))
        eventually(lambda: recorder.runs == [["lone"]])
    finally:
        worker.close()
    assert recorder.claims == [["lone"]]


def test_an_idle_model_waits_at_most_max_wait_for_company() -> None:
    recorder = Recorder()
    worker = lane(recorder, max_wait_s=0.3)
    try:
        put_at = time.monotonic()
        worker.put(delivery("first"))
        time.sleep(0.05)
        worker.put(delivery("second"))
        eventually(lambda: len(recorder.claims) == 1)
    finally:
        worker.close()
    assert recorder.claims == [["first", "second"]]
    assert 0.25 < recorder.claimed_at[0] - put_at < 2.0


def test_under_a_busy_model_batches_fill_to_their_maximum() -> None:
    recorder, clock = Recorder(busy=True), FakeClock()
    worker = lane(recorder, max_size=4, clock=clock)
    worker.policy.run_s.add(3600.0)  # the running batch is far from its end
    try:
        worker.put(delivery("lone"))
        assert recorder.running.wait(WAIT_S)  # claimed at once: the model was idle
        for job_id in ids("job", 9):  # trickling in, as a stream delivers them
            worker.put(delivery(job_id))
            time.sleep(0.005)
        eventually(lambda: len(recorder.claims) == 2)
        time.sleep(0.05)  # the next four gather, but wait: one claimed batch already waits
        assert recorder.claims == [["lone"], ids("job", 4)]
        recorder.free.set()
        eventually(lambda: sum(map(len, recorder.runs)) == 10)
    finally:
        worker.close()
    assert [len(claim) for claim in recorder.claims] == [1, 4, 4, 1]
    assert [job for run in recorder.runs for job in run] == ["lone", *ids("job", 9)]


def test_a_busy_model_s_next_batch_is_claimed_just_before_the_running_one_ends() -> None:
    recorder = Recorder(busy=True)
    worker = lane(recorder, max_size=32)
    worker.policy.run_s.add(0.4)
    worker.policy.claim_s.add(0.1)
    try:
        worker.put(delivery("lone"))
        assert recorder.running.wait(WAIT_S)
        running_at = time.monotonic()
        worker.put(delivery("next"))
        eventually(lambda: len(recorder.claims) == 2)
        claimed_after_s = recorder.claimed_at[1] - running_at
        recorder.free.set()
        eventually(lambda: len(recorder.runs) == 2)
    finally:
        worker.close()
    assert recorder.claims == [["lone"], ["next"]]
    assert 0.2 < claimed_after_s < 0.4  # at ~0.3 s: 0.4 s expected, less one 0.1 s claim


def test_a_model_that_frees_up_early_gets_the_gathered_batch_at_once() -> None:
    recorder, clock = Recorder(busy=True), FakeClock()
    worker = lane(recorder, max_size=8, clock=clock)
    worker.policy.run_s.add(3600.0)
    try:
        worker.put(delivery("lone"))
        assert recorder.running.wait(WAIT_S)
        worker.put(delivery("a"))
        worker.put(delivery("b"))
        time.sleep(0.05)
        assert len(recorder.claims) == 1  # not full, and the model busy: still gathering
        recorder.free.set()
        eventually(lambda: len(recorder.runs) == 2)
    finally:
        worker.close()
    assert recorder.claims == [["lone"], ["a", "b"]]


def test_the_averages_are_measured_by_the_lane() -> None:
    recorder = Recorder()
    worker = lane(recorder)
    try:
        worker.put(delivery("one"))
        eventually(lambda: len(recorder.runs) == 1)
        worker.put(delivery("two"))
        eventually(lambda: len(recorder.runs) == 2)
    finally:
        worker.close()
    assert worker.policy.run_s.value is not None and worker.policy.claim_s.value is not None


def test_close_nacks_what_was_not_claimed_and_runs_the_claimed_batch() -> None:
    recorder, clock = Recorder(busy=True), FakeClock()
    worker = lane(recorder, max_size=2, clock=clock)
    worker.policy.run_s.add(3600.0)
    worker.put(delivery("lone"))
    assert recorder.running.wait(WAIT_S)
    waiting = [delivery(job_id) for job_id in ids("job", 5)]
    for item in waiting:
        worker.put(item)
    eventually(lambda: len(recorder.claims) == 2)  # job-0 and job-1 claimed, waiting to run
    threading.Timer(0.1, recorder.free.set).start()
    worker.close()
    assert recorder.runs == [["lone"], ["job-0", "job-1"]]
    assert [d.message.settled for d in waiting[2:]] == [["nack"]] * 3  # type: ignore[attr-defined]
    late = delivery("late")
    worker.put(late)
    assert late.message.settled == ["nack"]  # type: ignore[attr-defined]


def test_a_lane_closed_while_idle_ends_its_threads() -> None:
    recorder = Recorder()
    worker = Lane("idle", 4, 0.0, claim=recorder.claim, run=recorder.run, kind="test-")
    worker.start()
    started = time.monotonic()
    worker.close(timeout_s=WAIT_S)
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("omni-test-")]
