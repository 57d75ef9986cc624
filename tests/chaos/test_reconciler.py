"""The reconciler: no job stays ``queued`` without a message, even when Pub/Sub loses them all.

Runs the real ``python -m reconciler`` against the chaos stack, with short staleness settings so a
sweep acts within seconds (production: 10 minutes; see reconciler/settings.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from subprocess import run

import pytest

from emulators.process import start_pubsub
from emulators.provision import Resources, provision
from schemas.jobs import new_job_document, new_job_id
from tests.support.chaos import FIGURES, TENANT, ChaosStack, drained, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


def write_queued(stack: ChaosStack, age: timedelta, **fields: object) -> str:
    """A queued job whose message never reached Pub/Sub (the ingress could neither publish nor
    mark it failed), last changed ``age`` ago; ``fields`` override the document's."""
    job_id = new_job_id()
    then = datetime.now(UTC) - age
    doc = new_job_document(
        tenant=TENANT, task="embed", input={"texts": ["orphan"]}, metadata=None, now=then
    )
    stack.firestore().collection("jobs").document(job_id).create({**doc, **fields})
    return job_id


def sweep_once(stack: ChaosStack) -> None:
    env = stack.env(RECONCILE_STALE_AFTER_S="60", RECONCILE_GIVE_UP_AFTER_S="1d")
    result = run([sys.executable, "-m", "reconciler", "--once"], env=env, timeout=60, check=False)
    assert result.returncode == 0


def test_orphaned_and_abandoned_jobs_are_published_again_and_an_ancient_one_is_given_up(
    clean: ChaosStack,
) -> None:
    stack = clean
    stack.start_worker()
    orphan = write_queued(stack, timedelta(minutes=5))
    fresh = write_queued(stack, timedelta(seconds=0))
    ancient = write_queued(stack, timedelta(days=2))
    # Claimed by a worker that died, and its message lost: the lease lapsed five minutes ago.
    lapsed = datetime.now(UTC) - timedelta(minutes=5)
    abandoned = write_queued(
        stack, timedelta(minutes=6), status="running", attempts=1, lease_expires_at=lapsed
    )
    sweep_once(stack)
    done = stack.wait_status(orphan, {"succeeded"}, timeout_s=30)
    assert done["dispatch_count"] == 1 and done["terminal_writes"] == 1
    rerun = stack.wait_status(abandoned, {"succeeded"}, timeout_s=30)
    assert rerun["dispatch_count"] == 1 and rerun["attempts"] == 2
    gone = stack.job(ancient)
    assert gone["status"] == "failed" and gone["error"]["code"] == "not_dispatched"
    assert stack.job(fresh)["status"] == "queued", "a job queued for seconds is left alone"
    # A second sweep right away does nothing more (the orphan finished; backoff for the rest).
    sweep_once(stack)
    assert stack.job(fresh).get("dispatch_count") is None


def test_a_pubsub_restart_loses_every_message_and_no_job(clean: ChaosStack) -> None:
    """The harshest outage: the emulator restarts empty (no topics, no messages). Firestore still
    knows every job; after re-provisioning, the reconciler re-publishes them all.

    Must stay the last test of this module: the stack's Pub/Sub emulator does not survive it."""
    stack = clean
    jobs = 50
    ids = [stack.submit(embed(f"before the restart {i}")).json()["id"] for i in range(jobs)]
    old = stack.pubsub
    os.killpg(old.process.pid, signal.SIGKILL)
    old.process.wait(timeout=10)
    started = time.monotonic()
    new = start_pubsub(old.port, stack.project)
    try:
        new.wait_ready()
        assert stack.deadletter is not None
        provision(
            Resources(project=stack.project, dead_letter_endpoint=stack.deadletter.url + "/"),
            emulator_host=new.address,
        )
        stack.start_worker()
        reconciler = stack.spawn(
            "reconciler",
            [sys.executable, "-m", "reconciler"],
            stack.env(RECONCILE_STALE_AFTER_S="1", RECONCILE_INTERVAL_S="1"),
            0,
        )
        try:
            drain_s = drained(stack, jobs, started, timeout_s=180)
        finally:
            reconciler.process.send_signal(signal.SIGTERM)
            assert reconciler.process.wait(timeout=30) == 0
        docs = stack.jobs()
        assert all(docs[job_id]["status"] == "succeeded" for job_id in ids)
        assert all(docs[job_id]["terminal_writes"] == 1 for job_id in ids)
        FIGURES["pubsub restart"] = {"jobs": jobs, "lost": 0, "time_to_drain_s": drain_s}
    finally:
        stack.stop_workers()
        new.stop()
        old.stop()  # its group is gone; this removes its data directory
