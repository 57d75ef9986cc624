"""worker/pipeline/hold.py: a Firestore call held through an outage, until the grace ends."""

from __future__ import annotations

import threading
import time
from unittest.mock import patch

import pytest

from worker.errors import StoreUnavailable
from worker.pipeline.hold import Hold


class Flaky:
    """Unavailable ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("Firestore claim failed")
        return "answer"


def test_a_call_is_retried_while_firestore_is_unavailable() -> None:
    hold, call = Hold(), Flaky(3)
    with patch("worker.pipeline.hold.STORE_BACKOFF_S", (0.01,)):
        assert hold(call) == "answer"
    assert call.calls == 4


def test_after_the_grace_period_an_outage_gives_up_at_once() -> None:
    hold, call = Hold(), Flaky(1)
    hold.abandon()
    with pytest.raises(StoreUnavailable):
        hold(call)
    assert call.calls == 1


def test_abandoning_wakes_a_call_waiting_out_an_outage() -> None:
    hold, call = Hold(), Flaky(10)
    threading.Timer(0.05, hold.abandon).start()
    started = time.monotonic()
    with patch("worker.pipeline.hold.STORE_BACKOFF_S", (30.0,)), pytest.raises(StoreUnavailable):
        hold(call)
    assert time.monotonic() - started < 5


def test_draining_starts_no_job_but_keeps_holding() -> None:
    hold = Hold()
    hold.drain()
    assert hold.draining.is_set() and not hold.abandoned.is_set()
    hold.abandon()
    assert hold.draining.is_set() and hold.abandoned.is_set()


def test_other_errors_are_not_held() -> None:
    def broken() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        Hold()(broken)
