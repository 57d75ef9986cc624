"""Acceptance 1: 1,000 jobs, two workers, one SIGKILLed three times (restarted each time).

Every job must end ``succeeded`` and be written exactly once: ``terminal_writes`` (incremented in
the commit of every terminal write) is 1 and ``finished_by`` is the token of the job's last attempt.
Jobs that ran more than once (a kill between claim and write, or a redelivery) are counted.

Emulator limit worked around: after a subscriber dies, the emulator keeps sending a share of the
messages to its dead stream until their stream deadlines lapse, and counts every send as a
delivery, so some messages reach the dead-letter topic without one attempt; the dead-letter
function sees that in the job (``attempts`` below the maximum) and publishes the job again. The
worker's 10 s lease extension keeps the trickle to seconds (ENV.md).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.chaos.conftest import FIGURES, HEADERS, ChaosStack, Proc, drained, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

JOBS = 1000
KILLS_AT = (0.2, 0.45, 0.7)
"""Kill when this share of the jobs has succeeded."""


def submit_all(stack: ChaosStack, ids: list[str], errors: list[str]) -> None:
    assert stack.ingress is not None
    url = f"{stack.ingress.url}/v1/jobs"
    local = threading.local()

    def one(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.post(url, json=embed(f"chaos text {i}", "another"), headers=HEADERS)
        if response.status_code == 202:
            ids.append(response.json()["id"])
        else:
            errors.append(f"{response.status_code} {response.text[:200]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(JOBS)))


def has_succeeded(worker: Proc) -> bool:
    return any(message == "job succeeded" for message in worker.messages())


def test_sigkill_three_times_loses_nothing_and_writes_each_result_once(clean: ChaosStack) -> None:
    stack = clean
    steady = stack.start_worker()
    victim = stack.start_worker()
    ids: list[str] = []
    errors: list[str] = []
    started = time.monotonic()
    submitter = threading.Thread(target=submit_all, args=(stack, ids, errors))
    submitter.start()

    kills = 0
    for share in KILLS_AT:
        # Kill only a worker that is working: ready, and with jobs of its own done.
        stack.wait_ready(victim)
        while stack.count("succeeded") < share * JOBS or not has_succeeded(victim):
            time.sleep(0.2)
        stack.kill(victim)
        kills += 1
        victim = stack.start_worker(wait=False)
    submitter.join()
    assert errors == [] and len(ids) == JOBS
    stack.wait_ready(victim)
    drain_s = drained(stack, JOBS, started, timeout_s=600)

    jobs = stack.jobs()
    assert set(jobs) == set(ids), "a job was lost or invented"
    statuses = {doc["status"] for doc in jobs.values()}
    assert statuses == {"succeeded"}, statuses
    written_twice = [i for i, doc in jobs.items() if doc.get("terminal_writes") != 1]
    assert written_twice == []
    by_other = [i for i, doc in jobs.items() if doc["finished_by"] != doc["attempt_token"]]
    assert by_other == [], "a result was written by an attempt that was not the job's last"
    rerun = [doc["attempts"] for doc in jobs.values() if doc["attempts"] > 1]
    requeued = [doc["dead_letters"] for doc in jobs.values() if doc.get("dead_letters")]
    logged = [m for worker in stack.workers for m in worker.messages()]
    FIGURES["worker kills"] = {
        "jobs": JOBS,
        "kills": kills,
        "jobs_run_again": len(rerun),
        "extra_attempts": sum(a - 1 for a in rerun),
        "max_attempts": max([1, *rerun]),
        "dead_lettered_and_requeued": len(requeued),
        "max_dead_letters": max([0, *requeued]),
        "redeliveries_of_finished_jobs": sum(m.startswith("delivery skipped") for m in logged),
        "waits_for_a_live_attempt": sum(m.startswith("job held by a live") for m in logged),
        "drain_s": drain_s,
        "steady_worker_alive": steady.process.poll() is None,
    }
    assert steady.process.poll() is None
