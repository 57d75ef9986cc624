"""Per-tenant caps on open streams and held requests, and the maximum lifetime of a job stream,
against the emulators and a real gunicorn ingress (one worker process: the cap is per process).

Jobs are *driven*: written straight into Firestore with the state machine's own functions and no
message, so the test decides when each change happens. Each test runs its own ingress with its own
tenants (a random suffix) and ``TENANT_LIMITS``; jobs it submits go to a topic nobody reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from schemas import jobstate
from schemas.jobs import JobStatus, new_job_document, new_job_id
from schemas.tasks import get_task
from tests.support import sse_messages, wait_for
from tests.support.stacks import (
    Emulators,
    Service,
    fresh_tenants,
    limited_ingress,
    sink_topic_named,
    tenant_key,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30
PROBLEM = "application/problem+json"
SINK_TOPIC = "stream-limits-sink"
"""A topic no subscription reads: jobs submitted here stay queued and run nowhere."""
LIFETIME_S = 3
"""The lifetime ingress's ``STREAM_MAX_LIFETIME_S``: a few of the test ingress's 1 s pings."""
ENTITIES = get_task("entities")


@pytest.fixture(scope="module")
def sink_topic(emulators: Emulators) -> str:
    return sink_topic_named(emulators, SINK_TOPIC)


class DrivenJob:
    """An ``entities`` job of ``tenant`` that no message carries: the test moves it itself."""

    def __init__(self, tenant: str) -> None:
        self.id = new_job_id()
        self.tenant = tenant
        self.ref = firestore.Client().collection("jobs").document(self.id)
        self.token = ""
        doc = new_job_document(
            tenant=tenant,
            task="entities",
            input=ENTITIES.input_to_store({"text": "Ada Lovelace met Charles Babbage."}),
            metadata=None,
            now=datetime.now(UTC),
        )
        self.ref.create(doc, timeout=TIMEOUT)

    def run(self) -> None:
        doc = self.ref.get(timeout=TIMEOUT).to_dict()
        decision = jobstate.claim(doc, self.tenant, datetime.now(UTC), 60, "test")
        assert isinstance(decision, jobstate.Claimed), decision
        self.token = decision.token
        self.ref.update(decision.changes, timeout=TIMEOUT)

    def release(self) -> None:
        """Back to queued, as a worker that shuts down mid-attempt writes it."""
        self.ref.update(jobstate.released(datetime.now(UTC), None), timeout=TIMEOUT)

    def succeed(self) -> None:
        result = ENTITIES.result_to_store({"entities": []})
        changes = jobstate.terminal(JobStatus.SUCCEEDED, datetime.now(UTC), self.token, 3600)
        self.ref.update({**changes, "result": result}, timeout=TIMEOUT)


class Stream:
    """One event stream, opened (headers received) when constructed."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.opened = time.monotonic()
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, TIMEOUT))
        self._lines = self.response.iter_lines(chunk_size=None, decode_unicode=True)
        self._messages: Iterator[dict[str, Any]] = sse_messages(self._lines)

    @property
    def status(self) -> int:
        return self.response.status_code

    def next_event(self) -> dict[str, Any]:
        for message in self._messages:
            if "comment" not in message:
                return message
        raise AssertionError("the stream closed")

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def streams() -> Iterator[Any]:
    opened: list[Stream] = []

    def open_stream(url: str, headers: dict[str, str]) -> Stream:
        stream = Stream(url, headers)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def assert_429(response: requests.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 429 and problem["type"] == "/problems/too-many-requests"
    assert "cap of 2" in problem["detail"] and "streams" in problem["detail"]
    assert int(response.headers["Retry-After"]) >= 1


def jobs_of(tenant: str) -> int:
    query = firestore.Client().collection("jobs").where(filter=FieldFilter("tenant", "==", tenant))
    return int(query.count().get(timeout=TIMEOUT)[0][0].value)


# -- the cap -------------------------------------------------------------------------------------


def test_a_tenant_at_its_stream_cap_gets_429_on_every_kind_of_hold_until_one_closes(
    emulators: Emulators, log_dir: Path, sink_topic: str, streams: Any
) -> None:
    t = fresh_tenants("capped", "other")
    limits = {t["capped"]: {"streams": 2}}
    with limited_ingress(
        emulators, log_dir, "ingress-streams", list(t.values()), limits, JOBS_TOPIC=sink_topic
    ) as ingress:
        capped, other = tenant_key(t["capped"]), tenant_key(t["other"])
        job, finished = DrivenJob(t["capped"]), DrivenJob(t["capped"])
        finished.run()
        finished.succeed()
        events = f"{ingress.url}/v1/jobs/{job.id}/events"
        batch = requests.post(
            f"{ingress.url}/v1/batches",
            json={"task": "embed", "items": [{"texts": ["held"]}]},
            headers=capped,
            timeout=TIMEOUT,
        )
        assert batch.status_code == 202, batch.text
        jobs_before = jobs_of(t["capped"])

        first, second = streams(events, capped), streams(events, capped)
        assert first.status == second.status == 200
        assert first.next_event()["event"] == second.next_event()["event"] == "queued"

        # A third job stream, a batch stream, a long poll and a submit that would wait: all 429.
        assert_429(streams(events, capped).response)
        batch_events = f"{ingress.url}/v1/batches/{batch.json()['id']}/events"
        assert_429(streams(batch_events, capped).response)
        poll = requests.get(
            f"{ingress.url}/v1/jobs/{job.id}?wait=5", headers=capped, timeout=TIMEOUT
        )
        assert_429(poll)
        submit = requests.post(
            f"{ingress.url}/v1/jobs",
            json={"task": "embed", "input": {"texts": ["waited for"]}},
            headers={**capped, "Prefer": "wait=5"},
            timeout=TIMEOUT,
        )
        assert_429(submit)
        assert jobs_of(t["capped"]) == jobs_before  # refused before anything was created

        # What holds nothing is still answered: a plain read, a long poll on a finished job, a
        # submit that does not wait.
        plain = requests.get(f"{ingress.url}/v1/jobs/{job.id}", headers=capped, timeout=TIMEOUT)
        assert plain.status_code == 200
        done = f"{ingress.url}/v1/jobs/{finished.id}?wait=5"
        assert requests.get(done, headers=capped, timeout=TIMEOUT).json()["status"] == "succeeded"

        # Another tenant opens streams meanwhile, on its own job.
        theirs = DrivenJob(t["other"])
        others = [streams(f"{ingress.url}/v1/jobs/{theirs.id}/events", other) for _ in range(3)]
        assert [s.status for s in others] == [200, 200, 200]

        # The client goes away: the server sees it at its next ping and frees the slot.
        first.close()

        def reopened(url: str = events) -> Stream | None:
            attempt = streams(url, capped)
            if attempt.status == 200:
                return attempt
            assert attempt.status == 429
            attempt.close()
            return None

        third = wait_for(reopened, TIMEOUT, "a slot freed by the closed stream", interval_s=0.5)
        assert third.next_event()["event"] == "queued"
        assert_429(streams(events, capped).response)

        # Streams that end with their job's terminal event free their slots too.
        job.run()
        job.succeed()
        for stream in (second, third):
            assert [m["event"] for m in stream._messages if "event" in m][-1] == "succeeded"
        fresh = f"{ingress.url}/v1/jobs/{DrivenJob(t['capped']).id}/events"
        for _ in range(2):
            wait_for(lambda: reopened(fresh), TIMEOUT, "a slot freed by an ended stream", 0.5)
        assert_429(streams(fresh, capped).response)


# -- the lifetime --------------------------------------------------------------------------------


@dataclass
class Connection:
    status: int
    raw: str
    lasted_s: float

    @property
    def events(self) -> list[dict[str, Any]]:
        lines = self.raw.split("\n")
        return [m for m in sse_messages(iter(lines)) if "comment" not in m]


def read_whole(
    ingress: Service,
    job_id: str,
    tenant: str,
    last_id: int | None,
    first_event: threading.Event | None = None,
) -> Connection:
    """One connection to the job's stream, read until the server ends it; ``first_event`` is
    set once an event has arrived (the stream has read the job)."""
    headers = (
        tenant_key(tenant)
        if last_id is None
        else {**tenant_key(tenant), "Last-Event-ID": str(last_id)}
    )
    started = time.monotonic()
    response = requests.get(
        f"{ingress.url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=(5, TIMEOUT)
    )
    parts: list[str] = []
    with response:
        # A stream cut mid-way would raise here (ChunkedEncodingError): it must end cleanly.
        for part in response.iter_content(chunk_size=None, decode_unicode=True):
            parts.append(part if isinstance(part, str) else part.decode())
            if first_event is not None and "id:" in "".join(parts):
                first_event.set()
    return Connection(response.status_code, "".join(parts), time.monotonic() - started)


def test_a_stream_past_its_lifetime_ends_between_events_and_resumes_without_loss_or_repeat(
    emulators: Emulators, log_dir: Path
) -> None:
    t = fresh_tenants("lifetime")
    with limited_ingress(
        emulators,
        log_dir,
        "ingress-lifetime",
        list(t.values()),
        {},
        STREAM_MAX_LIFETIME_S=str(LIFETIME_S),
    ) as ingress:
        job = DrivenJob(t["lifetime"])
        connections: list[Connection] = []

        def follow(
            last_id: int | None, first_event: threading.Event | None = None
        ) -> threading.Thread:
            reader = threading.Thread(
                target=lambda: connections.append(
                    read_whole(ingress, job.id, t["lifetime"], last_id, first_event)
                )
            )
            reader.start()
            return reader

        def last_id() -> int:
            return max(int(e["id"]) for c in connections for e in c.events)

        # First stream: event 1, and event 2 written while it is open; then its lifetime ends it.
        # A stream opened without Last-Event-ID starts at the job's state when it reads it:
        # event 2 is written only once the stream has sent event 1.
        opened = threading.Event()
        reader = follow(None, opened)
        assert opened.wait(TIMEOUT), "the first stream sent no event"
        job.run()
        reader.join(TIMEOUT)
        # While no stream is open: events 3 and 4.
        job.release()
        job.run()
        # Resumed: 3 and 4 at once, 5 while it is open, then its lifetime ends it too.
        reader = follow(last_id())
        time.sleep(0.5)
        job.release()
        reader.join(TIMEOUT)
        # While none is open: 6 and 7 (terminal); the resumed stream sends them and ends.
        job.run()
        job.succeed()
        follow(last_id()).join(TIMEOUT)
        final = read_whole(ingress, job.id, t["lifetime"], last_id())

    assert len(connections) == 3
    ids = [int(e["id"]) for c in connections for e in c.events]
    assert ids == list(range(1, 8)), ids  # every event once, in order, across three streams
    statuses = [e["event"] for c in connections for e in c.events]
    assert statuses == ["queued", "running", "queued", "running", "queued", "running", "succeeded"]
    for ended in connections[:2]:
        assert ended.status == 200
        assert ended.events[-1]["event"] in {"queued", "running"}  # ended by time, not by the job
        assert ended.raw.endswith("\n\n")  # between two messages, never inside one
        assert ended.lasted_s >= LIFETIME_S - 0.5  # not before its lifetime
        assert ": ping" in ended.raw  # it stayed open and quiet until then
    assert connections[2].events[-1]["event"] == "succeeded"
    assert final.status == 204  # the client has the terminal event: nothing to resume
