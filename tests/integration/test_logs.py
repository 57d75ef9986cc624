"""Both services' log lines as Cloud Logging reads them: JSON, with severity, message, the trace
and span fields, and the job, tenant and task where they apply; never an API key."""

from __future__ import annotations

import pytest
import requests

from tests.support import wait_for
from tests.support.stacks import KEYS, Emulators, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRACE = "5b8aa5a2d2c872e8321cf37308d69df2"
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"


def test_one_jobs_log_lines_carry_its_trace_on_both_sides(
    ingress: Service, worker: Service, emulators: Emulators
) -> None:
    headers = {"X-API-Key": KEYS["tenant-a"], "traceparent": f"00-{TRACE}-051581bf3cb55c13-01"}
    body = {"task": "embed", "input": {"texts": ["log me"]}}
    response = requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202
    job_id = response.json()["id"]
    trace = f"projects/{emulators.project}/traces/{TRACE}"

    def worker_line() -> dict[str, object] | None:
        lines = [x for x in worker.log_lines() if x.get("job_id") == job_id]
        return next((x for x in lines if x.get("message") == "job succeeded"), None)

    done = wait_for(worker_line, 60, "the worker's outcome line")
    assert done[TRACE_FIELD] == trace and len(str(done[SPAN_FIELD])) == 16
    assert done["severity"] == "INFO" and done["tenant"] == "tenant-a" and done["task"] == "embed"

    ingress_lines = ingress.log_lines()  # every line parsed as JSON, or the test fails
    queued = next(x for x in ingress_lines if x.get("job_id") == job_id)
    assert queued["message"] == "job queued" and queued[TRACE_FIELD] == trace
    assert queued["tenant"] == "tenant-a" and queued["task"] == "embed"
    access = [
        x
        for x in ingress_lines
        if x.get("logger") == "ingress.access" and x.get(TRACE_FIELD) == trace
    ]
    assert access and access[0]["httpRequest"]["status"] == 202
    assert access[0]["httpRequest"]["requestMethod"] == "POST"
    assert access[0][SPAN_FIELD] != done[SPAN_FIELD]  # the request's span, not the worker's

    for line in [*ingress_lines, *worker.log_lines()]:
        text = str(line)
        assert all(key not in text for key in KEYS.values()), line
