"""worker/pipeline/claimer.py: what claiming a micro-batch does with each delivery."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

from schemas.messages import JobMessage
from tests.support.fakes import FakeMessage
from tests.support.pipeline_fakes import FakeStore, claim, job_message
from worker.attempts import StopReason, Watcher
from worker.errors import StoreUnavailable
from worker.pipeline.claimer import Claimer
from worker.pipeline.delivery import Delivery
from worker.pipeline.hold import Hold
from worker.store import Busy, Claim, Skip


class FakeLane:
    """Records the deliveries put back."""

    def __init__(self) -> None:
        self.put_back: list[Delivery[Any]] = []

    def put(self, delivery: Delivery[Any]) -> None:
        self.put_back.append(delivery)


def claimer(store: FakeStore, hold: Hold | None = None) -> tuple[Claimer, Watcher]:
    watcher = Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0)
    timeout = {"embed": 7.0}.__getitem__
    return Claimer(store, hold=hold or Hold(), watcher=watcher, timeout_for=timeout), watcher


def delivery(job_id: str = "a" * 32) -> Delivery[JobMessage]:
    message = job_message(job_id=job_id)
    return Delivery(message, JobMessage(job_id=job_id, task="embed", tenant="t"))


def settled(*deliveries: Delivery[Any]) -> list[list[str]]:
    messages: list[FakeMessage] = [d.message for d in deliveries]  # type: ignore[misc]
    return [m.settled for m in messages]


def test_a_claimed_job_is_watched_and_handed_on_with_its_time_limit() -> None:
    job = claim()
    worker, watcher = claimer(FakeStore([job]))
    (item,) = worker.claim_batch(FakeLane(), [received := delivery()])  # type: ignore[arg-type]
    assert item.claim is job and item.delivery is received and not received.settled
    assert 6.0 < item.stop.deadline - time.monotonic() <= 7.0
    assert watcher.stop_all(StopReason.SHUTDOWN) == 1  # its lease is renewed from now


def test_one_claim_answers_each_delivery_of_a_batch_its_own_way() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    store = FakeStore([claim(), Skip("b", "already succeeded"), Busy("c", later)])
    worker, _ = claimer(store)
    lane = FakeLane()
    first, second, third = delivery("a"), delivery("b"), delivery("c")
    with patch("threading.Timer.start"):  # the busy one waits for its timer
        claimed = worker.claim_batch(lane, [first, second, third])  # type: ignore[arg-type]
    assert [i.delivery for i in claimed] == [first]
    assert settled(first, second, third) == [[], ["ack"], []]


def test_a_job_held_by_a_live_attempt_goes_back_into_its_lane_later() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.05)
    worker, _ = claimer(FakeStore([Busy("a", soon)], lease_s=0.2))
    lane = FakeLane()
    worker.claim_batch(lane, [received := delivery()])  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while not lane.put_back and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lane.put_back == [received] and not received.settled


def test_a_drain_nacks_the_deliveries_waiting_for_a_lease() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    hold = Hold()
    worker, _ = claimer(FakeStore([Busy("a", later)], lease_s=30), hold)
    lane = FakeLane()
    worker.claim_batch(lane, [received := delivery()])  # type: ignore[arg-type]
    hold.drain()
    worker.drain()
    assert settled(received) == [["nack"]] and lane.put_back == []


def test_a_draining_worker_claims_nothing() -> None:
    hold, store = Hold(), FakeStore([claim()])
    hold.drain()
    worker, _ = claimer(store, hold)
    assert worker.claim_batch(FakeLane(), [received := delivery()]) == []  # type: ignore[arg-type]
    assert settled(received) == [["nack"]] and store.calls == 0


def test_firestore_gone_at_shutdown_nacks_the_batch() -> None:
    hold = Hold()
    hold.abandon()
    worker, _ = claimer(FakeStore([StoreUnavailable("down")]), hold)
    hold.draining.clear()  # abandoned while this batch was already being claimed
    batch = [delivery("a"), delivery("b")]
    assert worker.claim_batch(FakeLane(), batch) == []  # type: ignore[arg-type]
    assert settled(*batch) == [["nack"], ["nack"]]


class ShortStore(FakeStore):
    """Answers one claim for a batch of any size (a bug)."""

    def claim_many(
        self, jobs: Sequence[tuple[str, str]], worker: str = ""
    ) -> list[Claim | Skip | Busy]:
        return [claim()]


def test_a_bug_while_claiming_nacks_every_delivery_and_unwatches_its_claims() -> None:
    worker, watcher = claimer(ShortStore([]))
    batch = [delivery("a"), delivery("b")]
    assert worker.claim_batch(FakeLane(), batch) == []  # type: ignore[arg-type]
    assert settled(*batch) == [["nack"], ["nack"]]
    assert watcher.stop_all(StopReason.SHUTDOWN) == 0
