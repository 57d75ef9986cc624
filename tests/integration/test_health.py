"""Cheap health, private metrics and trusted traces, against gunicorn on the emulators:

- a flood of unauthenticated ``GET /health`` costs at most one Pub/Sub and one Firestore call per
  ``HEALTH_CACHE_S`` per process, counted by the ingress's own ``omni_ingress_health_checks_total``;
- ``GET /health/live`` answers while Firestore is paused (SIGSTOP), when ``/health`` says 503;
- with ``METRICS_PORT``, the public port has no ``/metrics`` and the master serves every
  worker's metrics, merged, on that port;
- a caller's ``traceparent`` is continued only on an authenticated request.

The module's own ingress (two workers, ``HEALTH_CACHE_S=1``, ``METRICS_PORT``) uses a private
Firestore emulator, so that pausing it cannot disturb the rest of the suite; the trace tests use
the session's ingress.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from emulators.localrun import ROOT
from emulators.process import Emulator, free_port, start_firestore, stop_group, wait_until_answers
from tests.support import descendants, paused, python_env, wait_for
from tests.support.stacks import API_KEYS, KEYS, Emulators, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT_S = 30
WORKERS = 2
CACHE_S = 1.0
"""``HEALTH_CACHE_S`` of the module's ingress: short, so a flood of a few seconds spans several."""
FLOOD = 200
SENDERS = 20
FRESH = {"Connection": "close"}
"""No keep-alive: each request is a new connection, which either gunicorn worker may accept."""
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = {"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"}
TRACE_FIELD = "logging.googleapis.com/trace"


@dataclass
class Ingress:
    service: Service
    metrics_url: str
    multiproc_dir: Path


@pytest.fixture(scope="module")
def private_firestore() -> Iterator[Emulator]:
    firestore = start_firestore(free_port())
    try:
        firestore.wait_ready()
        yield firestore
    finally:
        firestore.stop()


@pytest.fixture(scope="module")
def health_ingress(
    emulators: Emulators,
    private_firestore: Emulator,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Ingress]:
    """gunicorn with two workers, its metrics on a port of their own, on the private Firestore."""
    port, metrics_port = free_port(), free_port()
    multiproc_dir = tmp_path_factory.mktemp("prometheus-health")
    env = python_env(
        **{
            **emulators.env(),
            "FIRESTORE_EMULATOR_HOST": private_firestore.address,
            "API_KEYS": API_KEYS,
            "HEALTH_CACHE_S": str(CACHE_S),
            "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
            "WEB_CONCURRENCY": str(WORKERS),
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    log_path = log_dir / "ingress-health.log"
    with log_path.open("wb") as log:
        process = Popen(
            argv, env=env, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(url + "/health/live", process, 60, "ingress-health")
        wait_for(
            lambda: len(descendants(process.pid)) == WORKERS, TIMEOUT_S, "both workers to boot"
        )
        yield Ingress(
            Service(process, url, log_path), f"http://127.0.0.1:{metrics_port}", multiproc_dir
        )
    finally:
        stop_group(process, 30)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``url``'s Prometheus text, by name and labels."""
    response = requests.get(url, headers=FRESH, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def checks(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], backend: str) -> float:
    """Backend calls ``/health`` made, whatever their outcome."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "omni_ingress_health_checks_total" and ("backend", backend) in labels
    )


def health(url: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{url}/health", headers=FRESH, timeout=TIMEOUT_S)
    return response.status_code, response.json()


def test_a_flood_of_health_requests_costs_one_backend_call_per_interval(
    health_ingress: Ingress,
) -> None:
    before = scrape(f"{health_ingress.metrics_url}/metrics")
    url = health_ingress.service.url

    started = time.monotonic()
    with ThreadPoolExecutor(SENDERS) as pool:
        answers = list(pool.map(lambda _: health(url), range(FLOOD)))
    elapsed = time.monotonic() - started

    after = scrape(f"{health_ingress.metrics_url}/metrics")
    assert [status for status, _ in answers] == [200] * FLOOD
    assert answers[0][1] == {
        "ok": True,
        "pubsub_ok": True,
        "firestore_ok": True,
        "service": "ingress",
    }
    # Each worker checks at most once per interval (plus its first): a handful, not one a request.
    bound = WORKERS * (elapsed / CACHE_S + 1)
    for backend in ("pubsub", "firestore"):
        made = checks(after, backend) - checks(before, backend)
        print(f"{backend}: {made:.0f} calls for {FLOOD} requests in {elapsed:.2f} s")
        assert 1 <= made <= bound, (backend, made, bound)


def test_liveness_answers_while_firestore_is_paused(
    health_ingress: Ingress, private_firestore: Emulator
) -> None:
    url = health_ingress.service.url
    with paused(private_firestore):
        live = requests.get(f"{url}/health/live", headers=FRESH, timeout=TIMEOUT_S)
        assert live.status_code == 200
        assert live.json() == {"ok": True, "service": "ingress"}

        # Readiness notices once a check runs (at most one per interval): 503, Firestore down.
        def not_ready() -> dict[str, Any] | None:
            status, body = health(url)
            return body if status == 503 else None

        body = wait_for(not_ready, TIMEOUT_S, "/health to answer 503")
        assert body == {"ok": False, "pubsub_ok": True, "firestore_ok": False, "service": "ingress"}
        assert requests.get(f"{url}/health/live", headers=FRESH, timeout=5).status_code == 200

    wait_for(lambda: health(url)[0] == 200, TIMEOUT_S, "/health to answer 200 again")


def metric_file_pids(directory: Path) -> set[int]:
    pattern = re.compile(r"(?:counter|histogram)_(\d+)\.db")
    return {int(m.group(1)) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))}


def test_metrics_are_served_on_the_metrics_port_only_merged_over_workers(
    health_ingress: Ingress,
) -> None:
    url = health_ingress.service.url
    live = (
        "omni_ingress_requests_total",
        frozenset({("route", "/health/live"), ("method", "GET"), ("status", "200")}),
    )
    before = scrape(f"{health_ingress.metrics_url}/metrics")

    with ThreadPoolExecutor(SENDERS) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    requests.get(f"{url}/health/live", headers=FRESH, timeout=TIMEOUT_S).status_code
                ),
                range(40),
            )
        )
    public = requests.get(f"{url}/metrics", headers=FRESH, timeout=TIMEOUT_S)

    after = scrape(f"{health_ingress.metrics_url}/metrics")
    assert statuses == [200] * 40
    assert public.status_code == 404  # the public port has no metrics
    assert after.get(live, 0.0) - before.get(live, 0.0) == 40  # every worker's count, summed
    workers = descendants(health_ingress.service.process.pid)
    assert len(metric_file_pids(health_ingress.multiproc_dir) & workers) == WORKERS


def trace_of(service: Service, path: str) -> str:
    """The trace id of the access log line of ``GET path`` (a path only one request used)."""

    def line() -> dict[str, Any] | None:
        found = [
            entry
            for entry in service.log_lines()
            if entry.get("logger") == "ingress.access"
            and entry.get("httpRequest", {}).get("requestUrl") == path
        ]
        return found[0] if found else None

    entry = wait_for(line, TIMEOUT_S, f"the access log line of {path}")
    trace = str(entry[TRACE_FIELD]).rpartition("/")[2]
    assert re.fullmatch("[0-9a-f]{32}", trace), entry
    return trace


def test_only_an_authenticated_request_continues_the_callers_trace(ingress: Service) -> None:
    unique = os.urandom(8).hex()
    paths = {
        "authenticated": f"/v1/jobs/{unique}0000000000000001",
        "no key": f"/v1/jobs/{unique}0000000000000002",
        "wrong key": f"/v1/jobs/{unique}0000000000000003",
        "not /v1": f"/no-such-route/{unique}",
    }
    keys = {
        "authenticated": {"X-API-Key": KEYS["tenant-a"]},
        "no key": {},
        "wrong key": {"X-API-Key": "not-a-key-0123456789"},
        "not /v1": {"X-API-Key": KEYS["tenant-a"]},
    }

    statuses = {
        name: requests.get(
            ingress.url + path, headers={**SAMPLED, **keys[name]}, timeout=TIMEOUT_S
        ).status_code
        for name, path in paths.items()
    }

    assert statuses == {"authenticated": 404, "no key": 401, "wrong key": 401, "not /v1": 404}
    traces = {name: trace_of(ingress, path) for name, path in paths.items()}
    assert traces["authenticated"] == CALLER_TRACE  # continued: the caller's trace id
    # Every other request is the root of a trace of its own, whatever the caller sent.
    others = [traces[name] for name in ("no key", "wrong key", "not /v1")]
    assert CALLER_TRACE not in others and len(set(others)) == 3
