"""Acceptance 5 and the lifecycle around it, on the chaos stack with a real worker and model.

Cancel of a queued and of a running job, Idempotency-Key replay and mismatch, a duplicate delivery
of a finished job, a long job keeping its lease past the ack deadline, and a task time limit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from schemas.messages import JobMessage, Topics
from tests.support import wait_for
from tests.support.chaos import HEADERS, TENANT, ChaosStack, Proc, embed

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def worker(stack: ChaosStack) -> Iterator[Proc]:
    """One worker for the module: the one the first test started, if it runs. Replacing it
    would leave its stream behind, which the emulator keeps feeding (up to its flow-control
    limit) for 10-30 s: an emulator limit (conftest.py), not production's behaviour."""
    running = [w for w in stack.workers if w.process.poll() is None]
    yield running[-1] if running else stack.start_worker()


def url(stack: ChaosStack, path: str) -> str:
    assert stack.ingress is not None
    return f"{stack.ingress.url}{path}"


def cancel(stack: ChaosStack, job_id: str) -> requests.Response:
    return requests.post(url(stack, f"/v1/jobs/{job_id}/cancel"), headers=HEADERS, timeout=30)


def test_a_queued_job_is_cancelled_at_once_and_never_runs(clean: ChaosStack) -> None:
    # No worker pulls: the job stays queued. ``clean`` also ends the streams an earlier
    # module's stopped workers left in the emulator, which would take a share of the messages.
    stack = clean
    job_id = stack.submit(embed("never")).json()["id"]
    response = cancel(stack, job_id)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and "finished_at" in response.json()
    worker = stack.start_worker()
    # The message is still delivered; the worker acks it without work.
    wait_for(
        lambda: "delivery skipped: already cancelled" in worker.messages(),
        30,
        "the worker to skip the cancelled job",
    )
    doc = stack.job(job_id)
    assert doc["status"] == "cancelled" and doc["attempts"] == 0 and "started_at" not in doc
    assert doc["terminal_writes"] == 1 and doc["finished_by"] == "cancel"
    assert cancel(stack, job_id).status_code == 409


def test_a_running_job_stops_at_its_next_safe_point_and_never_succeeds(
    stack: ChaosStack, worker: Proc
) -> None:
    job_id = stack.submit(embed("long", fault="sleep=30")).json()["id"]
    stack.wait_status(job_id, {"running"}, timeout_s=30)
    cancelled_at = time.monotonic()
    response = cancel(stack, job_id)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(
        lambda: any(m == "stopped at a safe point: cancelled" for m in worker.messages()),
        10,
        "the worker to stop the cancelled job",
    )
    stopped_s = time.monotonic() - cancelled_at
    assert stopped_s < 5, "the watcher checks every second; the sleep has a safe point every 50 ms"
    doc = stack.job(job_id)
    assert doc["status"] == "cancelled" and doc["terminal_writes"] == 1
    assert "result" not in doc
    # The worker is free again: the next job runs at once.
    after = stack.submit(embed("after the cancel")).json()["id"]
    assert stack.wait_status(after, {"succeeded"}, timeout_s=30)["attempts"] == 1


def test_cancel_of_a_finished_or_unknown_job(stack: ChaosStack, worker: Proc) -> None:
    job_id = stack.submit(embed("quick")).json()["id"]
    stack.wait_status(job_id, {"succeeded"}, timeout_s=30)
    response = cancel(stack, job_id)
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "already succeeded" in response.json()["detail"]
    assert cancel(stack, uuid.uuid4().hex).status_code == 404
    assert cancel(stack, "not-an-id").status_code == 404


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(
    stack: ChaosStack, worker: Proc
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = stack.submit(embed("once"), **{"Idempotency-Key": key})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    job_id = first.json()["id"]
    stack.wait_status(job_id, {"succeeded"}, timeout_s=30)
    again = stack.submit(embed("once"), **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == job_id and again.json()["status"] == "succeeded"
    other = stack.submit(embed("twice"), **{"Idempotency-Key": key})
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["detail"]
    # Only one job exists for the key, and it ran once.
    docs = [doc for doc in stack.jobs().values() if doc["input"] == {"texts": ["once"]}]
    assert len(docs) == 1 and docs[0]["attempts"] == 1


def test_a_bad_idempotency_key_is_a_400_and_reserves_nothing(stack: ChaosStack) -> None:
    response = stack.submit(embed("x"), **{"Idempotency-Key": "has spaces in it"})
    assert response.status_code == 400
    invalid = stack.submit({"task": "embed", "input": {"texts": []}}, **{"Idempotency-Key": "k1"})
    assert invalid.status_code == 422
    # The 422 reserved nothing: the same key with a valid body makes a job.
    assert stack.submit(embed("x"), **{"Idempotency-Key": "k1"}).status_code == 202


def test_a_duplicate_delivery_of_a_finished_job_does_no_work(
    stack: ChaosStack, worker: Proc
) -> None:
    job_id = stack.submit(embed("dup")).json()["id"]
    before = stack.wait_status(job_id, {"succeeded"}, timeout_s=30)

    def skips() -> int:
        return sum(
            line.get("message") == "delivery skipped: already succeeded"
            and line.get("job_id") == job_id
            for line in worker.log_lines()
        )

    assert skips() == 0
    publisher = stack.publisher()
    data, attributes = JobMessage(job_id=job_id, task="embed", tenant=TENANT).to_pubsub()
    topic = Topics(stack.project).path("embed")
    publisher.publish(topic, data, **attributes).result()
    # At least once: an extra redelivery of the duplicate is skipped too, and changes nothing.
    wait_for(lambda: skips() >= 1, 30, "the duplicate of this job to be skipped")
    after = stack.job(job_id)
    assert after["updated_at"] == before["updated_at"] and after["attempts"] == 1
    assert after["terminal_writes"] == 1


def test_a_long_job_keeps_its_lease_past_the_ack_deadline(stack: ChaosStack, worker: Proc) -> None:
    """25 s of work: past the subscription's 20 s ack deadline and the stream's 10 s lease
    extension. A healthy worker keeps the message and the job: one attempt, no redelivery."""
    job_id = stack.submit(embed("long", fault="sleep=25")).json()["id"]
    doc = stack.wait_status(job_id, {"succeeded", "failed"}, timeout_s=90)
    assert doc["status"] == "succeeded" and doc["attempts"] == 1


def test_a_task_past_its_time_limit_fails_with_timeout(clean: ChaosStack) -> None:
    # ``clean``, not a bare stop: the stopped worker's stream would live on in the emulator and
    # take the job (CI once saw it dead-lettered after five rounds there, never reaching the
    # worker started here; conftest.clean has the emulator limit).
    stack = clean
    stack.start_worker(WORKER_TASK_TIMEOUT_S="2")
    job_id = stack.submit(embed("slow", fault="sleep=20")).json()["id"]
    doc = stack.wait_status(job_id, {"succeeded", "failed"}, timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "timeout"
    assert doc["attempts"] == 1 and doc["terminal_writes"] == 1
    stack.stop_workers()


def test_a_deadline_ends_a_job_deadline_exceeded_whether_queued_or_running(
    clean: ChaosStack,
) -> None:
    stack = clean
    stack.start_worker()
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    late = stack.submit({**embed("late"), "deadline": past}).json()["id"]
    at_once = stack.submit(embed("no time"), **{"Cancel-After": "0"}).json()["id"]
    running = stack.submit(embed("slow", fault="sleep=20"), **{"Cancel-After": "3"}).json()["id"]
    for never_ran in (late, at_once):
        doc = stack.wait_status(never_ran, {"succeeded", "failed"}, timeout_s=60)
        assert doc["status"] == "failed" and doc["error"]["code"] == "deadline_exceeded"
        assert doc["attempts"] == 0 and doc["terminal_writes"] == 1 and "started_at" not in doc
    doc = stack.wait_status(running, {"succeeded", "failed"}, timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "deadline_exceeded"
    assert doc["attempts"] == 1 and doc["terminal_writes"] == 1
    # Stopped at a safe point soon after its deadline, not after its 20 s of work.
    assert (doc["finished_at"] - doc["created_at"]).total_seconds() < 15
    stack.stop_workers()
