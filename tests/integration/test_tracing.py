"""One trace per job across the Pub/Sub hop: the ingress's request span, the publish, and the
worker's spans as its descendants, seen by an in-memory span exporter.

Both services run in this process (the ingress through Flask's test client, the worker's real
``Worker.run`` on a thread with the ``entities`` model), on a topic and subscription of their own,
so the in-memory exporter sees every span of both and the session's worker takes none of the jobs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from emulators.process import free_port
from emulators.provision import Resources, provision
from ingress import create_app
from ingress.settings import Settings
from schemas.messages import task_topic
from tests.support import wait_for
from tests.support.stacks import Emulators
from worker.main import Worker
from worker.settings import WorkerSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC, PREFIX = "traced-jobs", "traced-worker"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # no app in this process installed one yet
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
def traced_worker(emulators: Emulators, spans: InMemorySpanExporter) -> Iterator[Worker]:
    provision(Resources(project=emulators.project, topic=TOPIC, subscription_prefix=PREFIX))
    env = {
        **os.environ,
        "WORKER_TASKS": "entities",
        "JOBS_SUBSCRIPTION_PREFIX": PREFIX,
        "WORKER_HTTP_PORT": str(free_port()),
    }
    worker = Worker(WorkerSettings.from_env(env))
    thread = threading.Thread(target=worker.run, name="traced-worker", daemon=True)
    thread.start()
    wait_for(lambda: worker._readiness()[0], 120, "the in-process worker to be ready")
    yield worker
    worker.request_stop(signal.SIGTERM)
    thread.join(60)


def test_the_workers_spans_continue_the_trace_the_ingress_started(
    emulators: Emulators, spans: InMemorySpanExporter, traced_worker: Worker
) -> None:
    settings = Settings(project=emulators.project, jobs_topic=TOPIC, api_keys="t:key-t-0123")
    client = create_app(settings, configure_logs=False).test_client()
    headers = {"X-API-Key": "key-t-0123", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    body = {"task": "entities", "input": {"text": "Angela Merkel flew to Paris."}}
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        return job if job["status"] == "succeeded" else None

    job = wait_for(finished, 60, "the job to finish")
    assert job["trace_id"] == CALLER_TRACE  # the job stores the trace its request continued

    def job_spans() -> list[ReadableSpan] | None:
        found = [
            s for s in spans.get_finished_spans() if s.context.trace_id == int(CALLER_TRACE, 16)
        ]
        return found if any(s.name == "job entities" for s in found) else None

    found = wait_for(job_spans, 30, "the worker's spans")
    by_id = {s.context.span_id: s for s in found}
    names = {s.name for s in found}

    def parent_of(span: ReadableSpan) -> ReadableSpan | None:
        return by_id.get(span.parent.span_id) if span.parent is not None else None

    def ancestors(span: ReadableSpan) -> list[str]:
        chain = []
        while (parent := parent_of(span)) is not None:
            chain.append(parent.name)
            span = parent
        return chain

    request = next(s for s in found if s.name == "POST /v1/jobs")
    assert request.kind is trace.SpanKind.SERVER
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CALLER_SPAN
    assert "firestore create job" in names
    # The client's own span, named after the job's topic.
    publish = [s for s in found if s.name == f"{task_topic('entities', base=TOPIC)} create"]
    assert publish and parent_of(publish[0]) is request

    worker_job = next(s for s in found if s.name == "job entities")
    assert worker_job.attributes is not None and worker_job.attributes["omni.job_id"] == job_id
    # Across the hop: the worker's span descends from the ingress's request span.
    assert "POST /v1/jobs" in ancestors(worker_job)
    children = {s.name for s in found if parent_of(s) is worker_job}
    assert children == {"inference entities", "firestore write outcome"}
    inference = next(s for s in found if s.name == "inference entities")
    assert (
        worker_job.start_time <= inference.start_time <= inference.end_time <= worker_job.end_time
    )
