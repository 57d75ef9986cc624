"""Prometheus metrics of the ingress, served at ``GET /metrics`` (no key); listed in
docs/observability.md.

gunicorn runs several worker processes, and each would count only what it served itself. Under
gunicorn the metrics therefore use prometheus-client's multiprocess mode: each worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` merges every worker's files,
whichever worker answers the scrape. ``ingress/gunicorn.conf.py`` prepares that directory in the
master before any worker starts (prometheus-client picks its mode when it is first imported) and
marks each dead worker, so that its open streams stop counting while its counters stay. Without
the variable (the Flask test client, ``create_app()`` in a test) the metrics live in this process
and ``/metrics`` serves the default registry.

Where they are served: on the app's own port (``GET /metrics``) unless ``METRICS_PORT`` is set.
With it (Cloud Run), the public port answers 404 on ``/metrics`` and gunicorn's master serves the
merged metrics on ``127.0.0.1:METRICS_PORT`` (``serve_merged``, started from gunicorn.conf.py's
``when_ready``: prometheus-client's documented multiprocess pattern), which only the Managed
Service for Prometheus sidecar in the same instance reaches.

What a request's time is: from the first ``before_request`` hook (``instrument`` is called before
the app registers its own, so authentication counts) to the response's start. A streamed response
(server-sent events, NDJSON results) is timed to the start of its body, not its end: how long a
stream stays open is the client's choice, and ``omni_ingress_event_streams_open`` counts them.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar
from wsgiref.simple_server import WSGIServer

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.routing import Rule

P = ParamSpec("P")
T = TypeVar("T")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable prometheus-client itself reads: set, every process writes its metrics there."""
UNMATCHED = "unmatched"
"""The ``route`` of a request no rule matched (a 404, or a 405: the method matched no rule)."""
OTHER_METHOD = "other"
"""The ``method`` of a request with a method no route serves (any token is a valid method)."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Bounds of the request latency histogram, seconds: up to a 60 s long poll (``?wait=60``)."""
PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bounds of the publish latency histogram, seconds: up to ``PUBLISH_TIMEOUT_S``'s default."""

REQUESTS = Counter(
    "omni_ingress_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "omni_ingress_request_seconds",
    "Time from a request's arrival in the app to its response's start, seconds.",
    ["route", "method"],
    buckets=REQUEST_BUCKETS_S,
)
PUBLISH_SECONDS = Histogram(
    "omni_ingress_publish_seconds",
    "Time to publish a job's message (or a batch's messages) and get Pub/Sub's answer, seconds.",
    ["outcome"],
    buckets=PUBLISH_BUCKETS_S,
)
EVENT_STREAMS_OPEN = Gauge(
    "omni_ingress_event_streams_open",
    "Server-sent event streams (jobs' and batches') open now, summed over live workers.",
    multiprocess_mode="livesum",
)
JOBS_SUBMITTED = Counter(
    "omni_ingress_jobs_submitted",
    "Jobs accepted by POST /v1/jobs (stored and published; idempotent replays not counted).",
    ["task"],
)
CACHE_LOOKUPS = Counter(
    "omni_ingress_result_cache_lookups",
    "Result-cache lookups at POST /v1/jobs, by task and outcome (hit: answered at submit, no "
    "message published; miss: queued).",
    ["task", "outcome"],
)
BATCH_ITEMS_SUBMITTED = Counter(
    "omni_ingress_batch_items_submitted",
    "Items of batches accepted by POST /v1/batches (idempotent replays not counted).",
    ["task"],
)
HEALTH_CHECKS = Counter(
    "omni_ingress_health_checks",
    "Backend calls made by GET /health (cached per process for HEALTH_CACHE_S), by outcome.",
    ["backend", "outcome"],
)

METRICS_HOST = "127.0.0.1"
"""Where ``METRICS_PORT`` listens, always: on Cloud Run the sidecar shares the instance's network
namespace and scrapes it over loopback; nothing outside the instance can reach it."""


def instrument(app: Flask, *, serve: bool = True) -> None:
    """Count and time every request ``app`` answers, and serve ``GET /metrics`` unless ``serve``
    is false (``METRICS_PORT`` set: the metrics are served on that port instead).

    Call it before the app registers its own hooks: ``before_request`` hooks run in the order
    they were registered, ``after_request`` hooks in reverse, so the time covers all of them."""
    # Read once, like prometheus-client, which read it when first imported.
    multiprocess = bool(os.environ.get(MULTIPROC_ENV))

    def metrics_view() -> Response:
        return Response(exposition(multiprocess), content_type=CONTENT_TYPE_LATEST)

    app.before_request(_start)
    app.after_request(_observe)
    if serve:
        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def exposition(multiprocess: bool) -> bytes:
    """The metrics in Prometheus's text format: every worker's, merged, in multiprocess mode."""
    return generate_latest(_merged() if multiprocess else REGISTRY)


def _merged() -> CollectorRegistry:
    """A registry of every worker's metrics: its collector reads the files at each scrape."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_merged(port: int) -> WSGIServer:
    """Serve every worker's metrics, merged, at any path of ``http://127.0.0.1:port``, from a
    daemon thread of this process (gunicorn's master); returns the server, whose ``socket`` is
    the listening one. Needs ``PROMETHEUS_MULTIPROC_DIR``, as under gunicorn.conf.py."""
    server, _thread = start_http_server(port, addr=METRICS_HOST, registry=_merged())
    return server


def route_label(rule: Rule | None) -> str:
    """The route template a request matched (``/v1/jobs/<job_id>``), never its path."""
    return rule.rule if rule is not None else UNMATCHED


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    route, method = route_label(request.url_rule), method_label(request.method)
    REQUESTS.labels(route, method, str(response.status_code)).inc()
    started: float | None = g.pop("metrics_started", None)
    if started is not None:
        REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)
    return response


def timed_publish(function: Callable[P, T]) -> Callable[P, T]:
    """Decorates a publish call: each call is observed in ``omni_ingress_publish_seconds``,
    ``ok`` when it returns and ``failed`` when it raises."""

    @functools.wraps(function)
    def timed(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = function(*args, **kwargs)
            outcome = "ok"
            return result
        finally:
            PUBLISH_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    return timed


def counted_stream(function: Callable[P, Iterator[str]]) -> Callable[P, Iterator[str]]:
    """Decorates an event stream's generator: the stream counts in
    ``omni_ingress_event_streams_open`` from when it starts yielding until it ends, fails or is
    closed (a client that went away is seen at the next write)."""

    @functools.wraps(function)
    def counted(*args: P.args, **kwargs: P.kwargs) -> Iterator[str]:
        EVENT_STREAMS_OPEN.inc()
        try:
            yield from function(*args, **kwargs)
        finally:
            EVENT_STREAMS_OPEN.dec()

    return counted


def job_submitted(task: str) -> None:
    JOBS_SUBMITTED.labels(task).inc()


def cache_lookup(task: str, hit: bool) -> None:
    CACHE_LOOKUPS.labels(task, "hit" if hit else "miss").inc()


def batch_submitted(task: str, items: int) -> None:
    BATCH_ITEMS_SUBMITTED.labels(task).inc(items)


def health_checked(backend: str, ok: bool) -> None:
    HEALTH_CHECKS.labels(backend, "ok" if ok else "failed").inc()
