"""worker/modellock.py: single jobs go first, but a waiting chunk gets its share of the calls."""

from __future__ import annotations

import threading
import time

import pytest

from worker.modellock import ModelLock, jobs_per_chunk


@pytest.mark.parametrize(("share", "jobs"), [(0.1, 9), (0.25, 3), (0.5, 1), (1.0, 0), (0.3, 3)])
def test_jobs_a_chunk_lets_pass(share: float, jobs: int) -> None:
    assert jobs_per_chunk(share) == jobs


def test_a_chunk_waiting_behind_a_stream_of_jobs_gets_its_share() -> None:
    lock = ModelLock(batch_share=0.25)  # a chunk after every 3 job calls at most
    order: list[str] = []
    stop = threading.Event()

    def jobs() -> None:
        while not stop.is_set():
            with lock.job():
                order.append("j")
                time.sleep(0.002)

    def chunk() -> None:
        for _ in range(5):
            with lock.chunk():
                order.append("c")
                time.sleep(0.002)

    job_threads = [threading.Thread(target=jobs) for _ in range(3)]  # always a job waiting
    for thread in job_threads:
        thread.start()
    time.sleep(0.02)
    chunk_thread = threading.Thread(target=chunk)
    chunk_thread.start()
    chunk_thread.join(timeout=10)
    stop.set()
    for thread in job_threads:
        thread.join(timeout=10)

    assert order.count("c") == 5, "".join(order)
    first = order.index("c")
    runs = "".join(order[first:]).split("c")[1:-1]  # the job runs between the chunk's calls
    assert all(len(run) <= 3 for run in runs), "".join(order)
    assert any(len(run) == 3 for run in runs)  # and jobs still go first up to the share


def test_with_no_chunk_waiting_jobs_never_wait_for_a_share() -> None:
    lock = ModelLock(batch_share=0.5)
    for _ in range(5):
        with lock.job():
            pass
    done = threading.Event()

    def chunk() -> None:
        with lock.chunk():
            done.set()

    thread = threading.Thread(target=chunk)
    thread.start()
    thread.join(timeout=5)
    assert done.is_set()


def test_a_batch_priority_job_runner_waits_as_a_chunk_does() -> None:
    from worker.pipeline.runner import Runner

    lock = ModelLock()
    kw: dict[str, object] = {"watcher": None, "settler": None, "hold": None}
    interactive = Runner({}, model_lock=lock, timeout_for=lambda _t: 1.0, **kw)  # type: ignore[arg-type]
    batch = Runner({}, model_lock=lock, timeout_for=lambda _t: 1.0, batch_class=True, **kw)  # type: ignore[arg-type]
    assert interactive._hold_model == lock.job and batch._hold_model == lock.chunk
