"""Acceptance 1: 1,000 jobs, two workers, one SIGKILLed three times (restarted each time).

The jobs come in four waves, each once the victim pulls, so every kill lands on a worker in the
middle of its work (see ``Waves``).

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
from functools import partial

import pytest
import requests

from tests.support import wait_for
from tests.support.chaos import FIGURES, HEADERS, ChaosStack, Proc, drained, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

WAVE = 250
KILLS = 3
KILL_SHARE = 0.4
"""Kill once the victim has run jobs of its own and this share of the current wave succeeded."""
MAX_EXTRA_WAVES = 4


def submit_all(stack: ChaosStack, numbers: range, ids: list[str], errors: list[str]) -> None:
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
        list(pool.map(one, numbers))


def has_succeeded(worker: Proc) -> bool:
    return any(message == "job succeeded" for message in worker.messages())


class Waves:
    """Jobs submitted a wave at a time, each on a thread of its own.

    A wave starts only once the victim pulls: the steady worker drains a backlog faster than a
    restarted worker loads its model (~10 s), so jobs submitted all at once were done before the
    second victim was ready, and a kill loop waiting for the victim to run a job waited forever."""

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.submitted = 0
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        numbers = range(self.submitted, self.submitted + WAVE)
        self.submitted += WAVE
        thread = threading.Thread(
            target=submit_all, args=(self.stack, numbers, self.ids, self.errors)
        )
        thread.start()
        self.threads.append(thread)

    def victim_at_work(self, victim: Proc) -> bool:
        """Whether ``victim`` ran jobs of its own while ``KILL_SHARE`` of the current wave
        succeeded. When the steady worker ran the whole wave alone, starts another (capped)."""
        succeeded = self.stack.count("succeeded")
        if has_succeeded(victim) and succeeded >= self.submitted - WAVE * (1 - KILL_SHARE):
            return True
        submitting = self.threads[-1].is_alive()
        if not submitting and succeeded >= self.submitted:
            assert len(self.threads) < KILLS + 1 + MAX_EXTRA_WAVES, f"{victim.name} ran no job"
            self.start()
        return False

    def join(self) -> None:
        for thread in self.threads:
            thread.join()


def test_sigkill_three_times_loses_nothing_and_writes_each_result_once(clean: ChaosStack) -> None:
    stack = clean
    steady = stack.start_worker()
    victim = stack.start_worker()
    waves = Waves(stack)
    started = time.monotonic()

    kills = 0
    while kills < KILLS:
        stack.wait_ready(victim)
        waves.start()
        # Kill only a worker that is working: with jobs of its own done and the wave under way.
        wait_for(partial(waves.victim_at_work, victim), 300, f"{victim.name} to run jobs", 0.2)
        stack.kill(victim)
        kills += 1
        victim = stack.start_worker(wait=False)
    stack.wait_ready(victim)
    waves.start()  # the last wave, for the steady worker and the last victim
    waves.join()
    ids = waves.ids
    assert waves.errors == [] and len(ids) == waves.submitted
    drain_s = drained(stack, len(ids), started, timeout_s=600)

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
        "jobs": len(ids),
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
