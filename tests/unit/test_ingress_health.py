"""ingress/meta/health.py's cache: at most one check per interval, one at a time, whatever the
load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ingress.meta.health import CachedHealth


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """A check that counts its calls; ``gate``, when set, holds each call until it is set."""

    def __init__(self, ok: bool = True, gate: threading.Event | None = None):
        self.ok, self.gate, self.calls = ok, gate, 0
        self.entered = threading.Event()

    def __call__(self) -> bool:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return self.ok


def test_a_fresh_result_is_reused_and_a_stale_one_checked_again() -> None:
    clock, pubsub, firestore = Clock(), Backend(), Backend(ok=False)
    cached = CachedHealth({"pubsub": pubsub, "firestore": firestore}, ttl_s=5.0, clock=clock)

    answers = [cached.status() for _ in range(100)]
    clock.now = 4.9
    answers.append(cached.status())

    assert answers == [{"pubsub": True, "firestore": False}] * 101
    assert (pubsub.calls, firestore.calls) == (1, 1)
    clock.now = 5.0
    cached.status()
    assert (pubsub.calls, firestore.calls) == (2, 2)


def test_callers_during_a_check_get_the_last_result_and_start_no_other_check() -> None:
    clock, gate = Clock(), threading.Event()
    slow = Backend(gate=gate)
    cached = CachedHealth({"firestore": slow}, ttl_s=1.0, clock=clock)
    gate.set()
    cached.status()  # a first result
    gate.clear()
    slow.ok, slow.entered = False, threading.Event()
    clock.now = 2.0  # stale

    with ThreadPoolExecutor(21) as pool:
        checking = pool.submit(cached.status)
        assert slow.entered.wait(10)  # one caller is inside the (slow) check
        others = [f.result(10) for f in [pool.submit(cached.status) for _ in range(20)]]
        gate.set()
        assert checking.result(10) == {"firestore": False}

    assert others == [{"firestore": True}] * 20  # the last result, not a wait, not a new check
    assert slow.calls == 2


def test_callers_before_the_first_result_wait_for_that_one_check() -> None:
    gate = threading.Event()
    backend = Backend(gate=gate)
    cached = CachedHealth({"pubsub": backend}, ttl_s=60.0)

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(cached.status) for _ in range(10)]
        assert backend.entered.wait(10)
        gate.set()
        answers = [f.result(10) for f in futures]

    assert answers == [{"pubsub": True}] * 10
    assert backend.calls == 1
