"""Acceptance 4: SIGTERM to a worker under load loses nothing.

The first SIGTERM stops pulling (what the client holds but has not started is nacked at once, so
the other worker takes it), lets jobs in hand finish within ``WORKER_GRACE_S``, and releases and
nacks what still runs after it. The worker exits 0; every job ends ``succeeded``, written once.
(A worker runs one job at a time per model, so "in hand" is one job plus the leased backlog.)
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.chaos import FIGURES, ChaosStack, drained, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

JOBS = 300


def test_sigterm_under_load_finishes_or_hands_back_every_job(clean: ChaosStack) -> None:
    stack = clean
    # The long job below outlives embed's 60 s limit: both workers allow it 180 s.
    leaving = stack.start_worker(WORKER_GRACE_S="4", WORKER_TASK_TIMEOUT_S="180")
    started = time.monotonic()
    # A job longer than the grace period, in the leaving worker's hands: it must be released at
    # the end of the grace and run again by the other worker. Long enough to still be running
    # once the second worker has loaded its model, which took over 30 s on a loaded CI machine.
    long_id = stack.submit(embed("long", fault="sleep=90")).json()["id"]
    stack.wait_status(long_id, {"running"}, timeout_s=60)
    stack.start_worker(WORKER_TASK_TIMEOUT_S="180")
    assert stack.job(long_id)["status"] == "running", "the long job ended before the SIGTERM"
    ids = [stack.submit(embed(f"load {i}")).json()["id"] for i in range(JOBS)]
    term_sent = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    exit_code = leaving.process.wait(timeout=60)
    exit_s = round(time.monotonic() - term_sent, 1)
    assert exit_code == 0

    drain_s = drained(stack, JOBS + 1, started, timeout_s=360)
    jobs = stack.jobs()
    assert {doc["status"] for doc in jobs.values()} == {"succeeded"}
    assert all(doc["terminal_writes"] == 1 for doc in jobs.values())
    assert "stopped for shutdown; job released and message nacked" in leaving.messages()
    assert jobs[long_id]["attempts"] == 2
    FIGURES["sigterm under load"] = {
        "jobs": JOBS + 1,
        "grace_s": 4,
        "exit_after_s": exit_s,
        "ran_twice": sum(1 for job_id in [long_id, *ids] if jobs[job_id]["attempts"] > 1),
        "time_to_drain_s": drain_s,
    }


def test_a_job_in_hand_finishes_within_the_grace_and_is_not_run_again(clean: ChaosStack) -> None:
    stack = clean
    worker = stack.start_worker()  # default grace: 20 s
    job_id = stack.submit(embed("short", fault="sleep=3")).json()["id"]
    stack.wait_status(job_id, {"running"}, timeout_s=60)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0
    doc = stack.job(job_id)
    assert doc["status"] == "succeeded" and doc["attempts"] == 1
