"""Results as they happen: ``GET /v1/jobs/ID/events``, long polls and ``Prefer: wait``.

Two kinds of job. *Real* jobs go through the whole pipeline (ingress → Pub/Sub → worker →
Firestore). *Driven* jobs are written straight into Firestore with the state machine's own
functions and no message, so the test decides when each change happens and can look at the stream
between changes; the ingress under test is the same real gunicorn process on the same emulators
either way.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore

from emulators.process import stop_group
from schemas import jobstate
from schemas.jobs import JobStatus, new_job_document, new_job_id
from schemas.tasks import get_task
from tests.support import sse_messages
from tests.support.stacks import KEYS, SSE_PING_S, Emulators, Service, start_ingress

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}
ENTITIES = get_task("entities")


class DrivenJob:
    """An ``entities`` job of tenant-a that no message carries: the test moves it itself."""

    def __init__(self) -> None:
        self.id = new_job_id()
        self.ref = firestore.Client().collection("jobs").document(self.id)
        self.token = ""
        doc = new_job_document(
            tenant="tenant-a",
            task="entities",
            input=ENTITIES.input_to_store({"text": "Angela Merkel met Emmanuel Macron."}),
            metadata=None,
            now=datetime.now(UTC),
        )
        self.ref.create(doc, timeout=TIMEOUT)

    def run(self) -> None:
        decision = jobstate.claim(
            self.ref.get(timeout=TIMEOUT).to_dict(), "tenant-a", datetime.now(UTC), 60, "test"
        )
        assert isinstance(decision, jobstate.Claimed), decision
        self.token = decision.token
        self.ref.update(decision.changes, timeout=TIMEOUT)

    def succeed(self) -> None:
        result = ENTITIES.result_to_store(
            {"entities": [{"text": "Angela Merkel", "label": "PERSON", "start": 0, "end": 13}]}
        )
        changes = jobstate.terminal(JobStatus.SUCCEEDED, datetime.now(UTC), self.token, 3600)
        self.ref.update({**changes, "result": result}, timeout=TIMEOUT)


class Stream:
    """One open event stream, read message by message."""

    def __init__(self, ingress: Service, job_id: str, headers: dict[str, str]):
        self.response = requests.get(
            f"{ingress.url}/v1/jobs/{job_id}/events",
            headers=headers,
            stream=True,
            timeout=(5, TIMEOUT),
        )
        lines = self.response.iter_lines(chunk_size=None, decode_unicode=True)
        self._messages: Iterator[dict[str, Any]] = sse_messages(lines)

    def next_event(self) -> dict[str, Any]:
        """The next event, skipping comments (pings)."""
        for message in self._messages:
            if "comment" not in message:
                return message
        raise AssertionError("the stream closed")

    def rest(self) -> list[dict[str, Any]]:
        """Every message until the server closes the stream."""
        return list(self._messages)

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def stream_factory() -> Iterator[Any]:
    opened: list[Stream] = []

    def open_stream(ingress: Service, job_id: str, **headers: str) -> Stream:
        stream = Stream(ingress, job_id, {**A, **headers})
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture(scope="module")
def second_ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """Another ingress instance on the same emulators: a client that reconnects lands here."""
    service = start_ingress(emulators, log_dir, "ingress-second")
    yield service
    stop_group(service.process, 30)


def brief(event: dict[str, Any]) -> tuple[int, str, str]:
    """An event as (id, event name, the status in its data): what the ordering tests compare."""
    return int(event["id"]), event["event"], event["data"]["status"]


# -- the stream ----------------------------------------------------------------------------------
def test_a_stream_shows_queued_running_succeeded_in_order_then_closes(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    stream = stream_factory(ingress, job.id)
    assert stream.response.status_code == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache"

    assert brief(stream.next_event()) == (1, "queued", "queued")
    job.run()
    running = stream.next_event()
    assert brief(running) == (2, "running", "running")
    assert running["data"]["attempts"] == 1 and "result" not in running["data"]
    job.succeed()
    succeeded = stream.next_event()
    assert brief(succeeded) == (3, "succeeded", "succeeded")
    assert succeeded["data"]["result"]["entities"][0]["text"] == "Angela Merkel"
    assert succeeded["data"]["id"] == job.id
    assert [m for m in stream.rest() if "comment" not in m] == []  # closed after the terminal one


def test_the_whole_pipeline_streams_every_change_of_a_real_job(
    ingress: Service, worker: Service, stream_factory: Any
) -> None:
    body = {"task": "embed", "input": {"texts": ["streamed as it happens"]}}
    response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT)
    job_id = response.json()["id"]
    # Last-Event-ID: 0 asks for every event after none: the whole log, whatever already happened.
    events = [m for m in stream_factory(ingress, job_id, **{"Last-Event-ID": "0"}).rest()]
    events = [e for e in events if "comment" not in e]
    assert [brief(e) for e in events] == [
        (1, "queued", "queued"),
        (2, "running", "running"),
        (3, "succeeded", "succeeded"),
    ]
    assert events[-1]["data"]["result"]["dimensions"] == 384
    assert events[0]["data"]["attempts"] == 0 and "started_at" not in events[0]["data"]


def test_a_failed_jobs_stream_ends_with_failed(
    ingress: Service, worker: Service, stream_factory: Any
) -> None:
    body = {"task": "predict", "input": {"model": "no-such-model", "instances": [[1.0]]}}
    response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=A, timeout=TIMEOUT)
    stream = stream_factory(ingress, response.json()["id"])
    events = [stream.next_event()] + [m for m in stream.rest() if "comment" not in m]
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "unknown_model"
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)


def test_a_cancelled_jobs_stream_ends_with_cancelled(ingress: Service, stream_factory: Any) -> None:
    job = DrivenJob()
    stream = stream_factory(ingress, job.id)
    assert brief(stream.next_event()) == (1, "queued", "queued")
    cancel = requests.post(f"{ingress.url}/v1/jobs/{job.id}/cancel", headers=A, timeout=TIMEOUT)
    assert cancel.status_code == 200
    assert brief(stream.next_event()) == (2, "cancelled", "cancelled")
    assert [m for m in stream.rest() if "comment" not in m] == []


def test_a_stream_opened_on_a_finished_job_carries_only_its_terminal_event(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    job.run()
    job.succeed()
    messages = stream_factory(ingress, job.id).rest()
    assert [brief(m) for m in messages] == [(3, "succeeded", "succeeded")]


def test_resuming_with_last_event_id_gets_only_the_later_events(
    ingress: Service, second_ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    job.run()
    job.succeed()
    resumed = stream_factory(ingress, job.id, **{"Last-Event-ID": "1"}).rest()
    assert [brief(m) for m in resumed] == [(2, "running", "running"), (3, "succeeded", "succeeded")]
    # The ids are the stored log's: another instance resumes from the same place.
    elsewhere = stream_factory(second_ingress, job.id, **{"Last-Event-ID": "2"}).rest()
    assert [brief(m) for m in elsewhere] == [(3, "succeeded", "succeeded")]


def test_a_client_that_has_the_terminal_event_gets_204_and_stops(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    job.run()
    job.succeed()
    url = f"{ingress.url}/v1/jobs/{job.id}/events"
    # EventSource reconnects after the server closes a stream, sending the last id it saw: 204
    # tells it to stop. An id beyond the log counts as the last one.
    for seen in ("3", "99"):
        response = requests.get(url, headers={**A, "Last-Event-ID": seen}, timeout=TIMEOUT)
        assert response.status_code == 204 and response.content == b""


def test_an_id_beyond_the_log_resumes_from_the_latest_event(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    job.run()
    stream = stream_factory(ingress, job.id, **{"Last-Event-ID": "99"})
    job.succeed()
    assert brief(stream.next_event()) == (3, "succeeded", "succeeded")


def test_a_resumed_stream_goes_on_live_on_another_instance(
    ingress: Service, second_ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    first = stream_factory(ingress, job.id)
    assert brief(first.next_event()) == (1, "queued", "queued")
    job.run()
    assert brief(first.next_event()) == (2, "running", "running")
    first.close()  # the connection drops; the client reconnects to another instance

    resumed = stream_factory(second_ingress, job.id, **{"Last-Event-ID": "2"})
    job.succeed()
    assert brief(resumed.next_event()) == (3, "succeeded", "succeeded")


def test_pings_arrive_while_nothing_changes(ingress: Service, stream_factory: Any) -> None:
    job = DrivenJob()
    stream = stream_factory(ingress, job.id)
    assert brief(stream.next_event()) == (1, "queued", "queued")
    started = time.monotonic()
    for pings, message in enumerate(stream._messages, start=1):
        assert message == {"comment": "ping"}, message  # nothing else while the job is idle
        if pings == 3:
            break
    # Three pings at the configured interval, none early.
    assert time.monotonic() - started >= 2 * SSE_PING_S


def test_pings_keep_coming_while_the_job_is_written_without_a_new_event(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    job.run()
    stream = stream_factory(ingress, job.id)
    assert brief(stream.next_event()) == (2, "running", "running")
    stop = threading.Event()

    def renew_lease() -> None:  # what a worker does every few seconds while a job runs
        while not stop.wait(0.3):
            job.ref.update({"lease_expires_at": datetime.now(UTC)}, timeout=TIMEOUT)

    renewer = threading.Thread(target=renew_lease)
    renewer.start()
    try:
        started = time.monotonic()
        for pings, message in enumerate(stream._messages, start=1):
            assert message == {"comment": "ping"}, message
            if pings == 3:
                break
    finally:
        stop.set()
        renewer.join(TIMEOUT)
    # Writes every 0.3 s did not hold the pings back beyond their interval.
    assert time.monotonic() - started < 3 * SSE_PING_S + 2


def test_the_stream_needs_a_key_and_hides_other_tenants_jobs(
    ingress: Service, stream_factory: Any
) -> None:
    job = DrivenJob()
    url = f"{ingress.url}/v1/jobs/{job.id}/events"
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    other = requests.get(url, headers=B, timeout=TIMEOUT)
    unknown = requests.get(f"{ingress.url}/v1/jobs/{new_job_id()}/events", headers=A, timeout=5)
    assert other.status_code == unknown.status_code == 404
    assert other.json()["detail"] == unknown.json()["detail"]
    for bad_id in ("x1", "-1", "²"):
        bad = requests.get(url, headers={**A, "Last-Event-ID": bad_id}, timeout=TIMEOUT)
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


# -- long poll and Prefer: wait ------------------------------------------------------------------
def test_a_long_poll_answers_as_soon_as_the_job_ends(ingress: Service) -> None:
    job = DrivenJob()
    job.run()
    answer: dict[str, Any] = {}

    def poll() -> None:
        response = requests.get(
            f"{ingress.url}/v1/jobs/{job.id}?wait=60", headers=A, timeout=TIMEOUT + 60
        )
        answer.update(status=response.status_code, job=response.json(), at=time.monotonic())

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)
    assert not answer, "the long poll answered before the job ended"
    ended = time.monotonic()
    job.succeed()
    poller.join(TIMEOUT)
    assert answer["status"] == 200 and answer["job"]["status"] == "succeeded"
    # Answered by the listener, well before the 60 s limit.
    assert answer["at"] - ended < 10


def test_a_long_poll_answers_with_the_current_state_at_its_limit(ingress: Service) -> None:
    job = DrivenJob()
    started = time.monotonic()
    response = requests.get(f"{ingress.url}/v1/jobs/{job.id}?wait=2", headers=A, timeout=TIMEOUT)
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert time.monotonic() - started >= 2


@pytest.mark.parametrize("wait", ["61", "-1", "soon"])
def test_a_wait_out_of_range_is_a_400(ingress: Service, wait: str) -> None:
    job = DrivenJob()
    url = f"{ingress.url}/v1/jobs/{job.id}?wait={wait}"
    response = requests.get(url, headers=A, timeout=TIMEOUT)
    assert response.status_code == 400 and "wait" in response.json()["detail"]


def test_prefer_wait_answers_200_with_the_result_when_the_job_finishes_in_time(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": ["waited for"]}}
    headers = {**A, "Prefer": "wait=30"}
    response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert len(response.json()["result"]["embeddings"][0]) == 384
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"


def test_prefer_wait_answers_202_when_the_job_is_not_done_in_time(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": ["not waited for"]}}
    headers = {**A, "Prefer": "respond-async, wait=1"}
    group = os.getpgid(worker.process.pid)
    os.killpg(group, signal.SIGSTOP)  # the worker cannot take the job while the request waits
    try:
        started = time.monotonic()
        response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=60)
        waited = time.monotonic() - started
    finally:
        os.killpg(group, signal.SIGCONT)
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert waited >= 1 and response.headers["Preference-Applied"] == "wait=1"
    # The job was not lost by answering early: it finishes once the worker runs again.
    url = f"{ingress.url}{response.headers['Location']}?wait=60"
    assert requests.get(url, headers=A, timeout=90).json()["status"] == "succeeded"


def test_an_idempotent_replay_waits_as_the_first_request_did(
    ingress: Service, worker: Service
) -> None:
    body = {"task": "embed", "input": {"texts": ["replayed and waited for"]}}
    headers = {**A, "Prefer": "wait=30", "Idempotency-Key": f"replay-{new_job_id()}"}
    url = f"{ingress.url}/v1/jobs"
    first = requests.post(url, json=body, headers=headers, timeout=60)
    again = requests.post(url, json=body, headers=headers, timeout=60)
    plain = requests.post(url, json=body, headers={**headers, "Prefer": ""}, timeout=60)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and again.json()["status"] == "succeeded"
    # Without the preference, a replay answers 202 with the job as it is, as before.
    assert plain.status_code == 202 and plain.json()["id"] == first.json()["id"]
