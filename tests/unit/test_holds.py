"""ingress/limits/holds.py: the per-tenant count of open streams and held requests, its cap, and the
release of each slot exactly once however a stream ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ingress.errors import TooManyRequests
from ingress.limits.holds import Hold, Holds
from ingress.limits.ratelimit import DEFAULT_STREAMS, LimitPolicy

RETRY_AFTER_S = 5


def holds(caps: dict[str, int | None]) -> Holds:
    return Holds(lambda tenant: caps.get(tenant), RETRY_AFTER_S)


def test_a_tenant_at_its_cap_is_refused_with_retry_after_until_one_is_released() -> None:
    counter = holds({"acme": 2})
    first, _second = counter.acquire("acme"), counter.acquire("acme")

    with pytest.raises(TooManyRequests) as refused:
        counter.acquire("acme")

    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert "cap of 2" in str(refused.value.detail)
    first.release()
    assert counter.acquire("acme").tenant == "acme"
    assert counter.open("acme") == 2


def test_tenants_are_counted_apart_and_none_is_unlimited() -> None:
    counter = holds({"acme": 1, "bulk": None})
    counter.acquire("acme")

    taken = [counter.acquire("bulk") for _ in range(500)]

    assert counter.open("acme") == 1 and counter.open("bulk") == 500
    assert counter.total() == 501
    for hold in taken:
        hold.release()
    assert counter.open("bulk") == 0 and counter.total() == 1


def test_a_hold_released_many_times_frees_one_slot() -> None:
    counter = holds({"acme": 3})
    hold = counter.acquire("acme")
    counter.acquire("acme")

    for _ in range(5):
        hold.release()
    with hold:  # as a context manager it releases on exit: once more, still nothing
        pass

    assert hold.released
    assert counter.open("acme") == 1


def test_concurrent_acquires_never_pass_the_cap_and_releases_from_many_threads_count_once() -> None:
    counter = holds({"acme": 10})
    got: list[Hold] = []
    refused = 0
    lock = threading.Lock()
    start = threading.Barrier(20)

    def take() -> None:
        nonlocal refused
        start.wait(timeout=10)
        for _ in range(50):
            try:
                hold = counter.acquire("acme")
            except TooManyRequests:
                with lock:
                    refused += 1
                continue
            with lock:
                got.append(hold)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(got) == 10 and refused == 20 * 50 - 10
    # Every thread releases every hold: each slot is freed once.
    together = threading.Barrier(8)

    def free_all() -> None:
        together.wait(timeout=10)
        for hold in got:
            hold.release()

    releasers = [threading.Thread(target=free_all) for _ in range(8)]
    for thread in releasers:
        thread.start()
    for thread in releasers:
        thread.join(timeout=10)
    assert counter.open("acme") == 0
    assert counter.acquire("acme").released is False


class Body:
    """A response body that records whether it was closed (as a generator's ``finally`` would)."""

    def __init__(self, items: list[str], error: Exception | None = None):
        self._items = iter(items)
        self.error = error
        self.closed = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = next(self._items, None)
        if item is None:
            if self.error is not None:
                raise self.error
            raise StopIteration
        return item

    def close(self) -> None:
        self.closed += 1


def test_a_held_stream_releases_its_slot_when_it_ends() -> None:
    counter = holds({"acme": 1})
    body = Body(["a", "b"])
    stream = counter.acquire("acme").stream(body)

    assert counter.open("acme") == 1
    assert list(stream) == ["a", "b"]
    assert counter.open("acme") == 0
    stream.close()  # the server closes it too, after the end: nothing more is freed
    assert counter.open("acme") == 0


def test_a_held_stream_releases_its_slot_when_it_fails() -> None:
    counter = holds({"acme": 1})
    stream = counter.acquire("acme").stream(Body(["a"], RuntimeError("listener died")))

    with pytest.raises(RuntimeError):
        list(stream)

    assert counter.open("acme") == 0


def test_a_held_stream_closed_midway_closes_its_body_then_frees_the_slot() -> None:
    counter = holds({"acme": 2})
    counter.acquire("acme")
    body = Body(["a", "b", "c"])
    stream = counter.acquire("acme").stream(body)

    assert next(stream) == "a"
    stream.close()  # the client went away: the WSGI server closes the body

    assert body.closed == 1
    assert counter.open("acme") == 1


def test_a_generator_closed_without_being_iterated_still_frees_its_slot() -> None:
    counter = holds({"acme": 1})
    ran_finally: list[bool] = []

    def events() -> Iterator[str]:
        try:
            yield "never sent"
        finally:
            ran_finally.append(True)

    stream = counter.acquire("acme").stream(events())
    stream.close()  # a generator never started runs no finally: the wrapper releases

    assert counter.open("acme") == 0
    assert ran_finally == []


def test_a_held_stream_dropped_without_close_frees_its_slot_when_collected() -> None:
    counter = holds({"acme": 1})
    stream = counter.acquire("acme").stream(Body(["a"]))

    del stream
    gc.collect()

    assert counter.open("acme") == 0


def test_the_cap_comes_from_the_policy_with_its_default() -> None:
    policy = LimitPolicy.parse('{"small": {"streams": 1}, "bulk": {"streams": null}}')
    counter = Holds.for_policy(policy, RETRY_AFTER_S)

    counter.acquire("small")
    with pytest.raises(TooManyRequests):
        counter.acquire("small")
    for _ in range(DEFAULT_STREAMS + 1):
        counter.acquire("bulk")
    for _ in range(DEFAULT_STREAMS):
        counter.acquire("anyone")
    with pytest.raises(TooManyRequests):
        counter.acquire("anyone")
