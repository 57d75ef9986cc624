"""Acceptance 2: a poison job ends ``failed`` through the dead-letter path; the worker serves on.

The poison job's handler fails transiently on every attempt (fault injection). Each attempt
releases the job with its error and nacks; after the subscription's maximum deliveries (5) Pub/Sub
moves the message to ``jobs-dead``, whose push subscription calls the dead-letter function, which
writes the job ``failed`` / ``attempts_exhausted`` with the last error. The emulator honours
dead-letter policies; the chaos stack's retry backoff is 1..2 s instead of 10..600 s.
"""

from __future__ import annotations

import time

import pytest

from tests.support.chaos import FIGURES, ChaosStack, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


def test_a_poison_job_is_dead_lettered_while_other_jobs_succeed(clean: ChaosStack) -> None:
    stack = clean
    worker = stack.start_worker()
    started = time.monotonic()
    poison = stack.submit(embed("poison", fault="transient"))
    assert poison.status_code == 202
    poison_id = poison.json()["id"]

    healthy: list[str] = []
    while time.monotonic() - started < 120:
        response = stack.submit(embed("healthy job", str(len(healthy))))
        assert response.status_code == 202
        healthy.append(response.json()["id"])
        if stack.job(poison_id).get("status") == "failed":
            break
        time.sleep(0.25)
    doc = stack.wait_status(poison_id, {"failed"}, timeout_s=60)
    dead_lettered_s = round(time.monotonic() - started, 1)

    assert doc["error"]["code"] == "attempts_exhausted"
    assert "injected transient fault" in doc["error"]["message"]
    assert doc["finished_by"] == "dead-letter" and doc["terminal_writes"] == 1
    assert doc["attempts"] == 5, "each of the five deliveries ran one attempt"
    for job_id in healthy:
        assert stack.wait_status(job_id, {"succeeded"}, timeout_s=30)["terminal_writes"] == 1
    assert worker.process.poll() is None
    assert stack.deadletter is not None
    assert "dead letter: failed" in stack.deadletter.messages()
    FIGURES["poison job"] = {
        "deliveries": doc["attempts"],
        "dead_lettered_after_s": dead_lettered_s,
        "healthy_jobs_meanwhile": len(healthy),
    }


def test_a_redelivered_dead_letter_changes_nothing(clean: ChaosStack) -> None:
    """The function is idempotent: a second copy of a dead letter finds the job terminal."""
    stack = clean
    stack.start_worker()
    response = stack.submit(embed("fine"))
    job_id = response.json()["id"]
    before = stack.wait_status(job_id, {"succeeded"}, timeout_s=60)
    publisher = stack.publisher()
    topic = publisher.topic_path(stack.project, "jobs-dead")
    from schemas.messages import JobMessage

    data, attributes = JobMessage(job_id=job_id, task="embed", tenant="chaos").to_pubsub()
    publisher.publish(topic, data, **attributes).result(timeout=10)
    assert stack.deadletter is not None
    deadletter = stack.deadletter
    deadline = time.monotonic() + 30
    while "dead letter: already succeeded" not in deadletter.messages():
        assert time.monotonic() < deadline, "the dead letter never reached the function"
        time.sleep(0.2)
    after = stack.job(job_id)
    assert after["status"] == "succeeded" and after["updated_at"] == before["updated_at"]
