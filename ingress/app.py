"""The ingress's app factory: ``gunicorn 'ingress:create_app()'``."""

from __future__ import annotations

import logging
import sys
import time

from flask import Flask, Response, g, request
from opentelemetry import context as otel_context
from opentelemetry import trace
from werkzeug.datastructures import Headers

from common import tracing
from common.errortracking import init_error_tracking
from common.jsonlog import bind_log_context, clear_log_context, configure_logging, trace_fields
from common.settings import ConfigError
from ingress import metrics
from ingress.auth import KeyRing, presented_key
from ingress.batches import reads as batch_reads
from ingress.batches import routes as batch_routes
from ingress.batches.chunkstore import ChunkStore
from ingress.batches.store import BatchStore
from ingress.errors import TooManyRequests, Unauthorized, register_error_handlers
from ingress.estimates import Estimates
from ingress.idempotency import IdempotencyStore
from ingress.jobs import events as job_events
from ingress.jobs import routes as job_routes
from ingress.jobs.cache import ResultCache
from ingress.jobs.listen import MultiListen
from ingress.jobs.store import JobStore
from ingress.jobs.watch import JobWatcher
from ingress.limits.holds import Holds
from ingress.limits.instances import InstanceRegistry
from ingress.limits.quota import InFlightCap
from ingress.limits.ratelimit import RateLimiter
from ingress.limits.uploads import UploadSlots
from ingress.meta import console, health, openapi, tasks
from ingress.publisher import JobPublisher
from ingress.services import EXTENSION, Services, services
from ingress.settings import Settings
from ingress.webhooks import routes as webhook_routes
from ingress.webhooks.store import WebhookLedger
from schemas.messages import Topics
from schemas.webhooks import SigningSecrets

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("ingress.access")
_tracer = trace.get_tracer("omni.ingress")


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> Flask:
    """Build the ingress. Reads the environment only when ``settings`` is not given."""
    settings = settings or Settings.from_env()
    if configure_logs:
        configure_logging(settings.log_level)

    tracing.configure_tracing("omni-ingress", settings.traces_exporter)
    init_error_tracking(settings.sentry_dsn, "omni-ingress")
    _cooperate_with_gevent()
    # Imported here, not at module level: building these opens gRPC channels, which must happen
    # in the process that serves (after gunicorn's fork), never at import.
    from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

    app = Flask(__name__)
    # Flask's own limit is a backstop for every route; json_body() enforces the per-route one.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The client's own tracing: a span per publish, and the trace context in each message's
    # attributes (googclient_traceparent), which the worker continues (common/tracing.py).
    publisher_client = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_open_telemetry_tracing=True)
    )
    firestore_client = firestore.Client(project=settings.project)
    publisher = JobPublisher(
        publisher_client,
        Topics(settings.project, settings.jobs_topic),
        settings.publish_timeout_s,
    )
    # The request-rate split needs the number of live ingress processes: counted only when
    # some tenant has a rate (ingress/limits/instances.py).
    instances = None
    if settings.tenant_limits.limits_rate:
        instances = InstanceRegistry(
            firestore_client,
            settings.instances_collection,
            settings.instance_heartbeat_s,
            settings.firestore_timeout_s,
        )
    app.extensions[EXTENSION] = Services(
        settings=settings,
        limiter=RateLimiter(settings.tenant_limits, instances.live if instances else lambda: 1),
        holds=Holds.for_policy(settings.tenant_limits, settings.retry_after_s),
        in_flight=InFlightCap(
            firestore_client, settings.tenant_limits, settings.firestore_timeout_s
        ),
        instances=instances,
        keys=KeyRing.from_files(settings.api_keys, settings.api_keys_file),
        store=JobStore(
            firestore_client,
            settings.jobs_collection,
            settings.firestore_timeout_s,
            settings.result_ttl_s,
        ),
        idempotency=IdempotencyStore(firestore_client, settings.firestore_timeout_s),
        publisher=publisher,
        watcher=JobWatcher(
            lambda deliver: MultiListen(firestore_client, settings.jobs_collection, deliver)
        ),
        batches=BatchStore(
            firestore_client,
            settings.batches_collection,
            publisher,
            settings.firestore_timeout_s,
            settings.result_ttl_s,
        ),
        chunks=ChunkStore(
            firestore_client,
            settings.batches_collection,
            publisher,
            settings.firestore_timeout_s,
            settings.result_ttl_s,
            settings.chunk_items_for,
        ),
        signing=_signing_secrets(settings),
        webhooks=WebhookLedger(
            firestore_client, settings.webhook_deliveries_collection, settings.firestore_timeout_s
        ),
        uploads=UploadSlots(settings.max_large_uploads),
        cache=ResultCache(firestore_client),
        estimates=Estimates(firestore_client, settings.jobs_collection),
    )

    register_error_handlers(app)
    # First: its timing then covers the hooks below. With METRICS_PORT, gunicorn's master serves
    # the metrics there (ingress/gunicorn.conf.py) and this port has no /metrics.
    metrics.instrument(app, serve=settings.metrics_port is None)
    app.before_request(_start_request)
    app.after_request(_log_request)
    app.after_request(_rate_limit_headers)
    app.teardown_request(_end_request)
    health.init_app(app)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(job_routes.bp)
    app.register_blueprint(job_events.bp)
    app.register_blueprint(batch_reads.bp)
    app.register_blueprint(batch_routes.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(webhook_routes.bp)
    if instances is not None:
        instances.start()  # stopped at shutdown (gunicorn.conf.py)
    logger.info("ingress ready", extra={"project": settings.project, "topic": settings.jobs_topic})
    return app


def _signing_secrets(settings: Settings) -> SigningSecrets:
    try:
        return SigningSecrets.from_files(settings.webhook_secrets, settings.webhook_secrets_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _cooperate_with_gevent() -> None:
    """Under gunicorn's gevent worker (measured against gthread in bench/sse_fanout.py), gRPC's
    own threads must yield to the gevent hub, or the first blocking call hangs the worker. Does
    nothing in the default gthread worker."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("socket"):
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()


def _start_request() -> None:
    svc = services()
    g.started = time.perf_counter()
    clear_log_context()
    secured = request.path.startswith("/v1/")
    tenant = svc.keys.tenant_for(presented_key(request.headers)) if secured else None
    # A span for every request, 401s included; only an authenticated one continues the caller's
    # trace (W3C traceparent), so an anonymous caller cannot choose our sampling or our trace ids.
    _start_span(svc.settings.project, request.headers if tenant is not None else Headers())
    if secured:
        if tenant is None:
            raise Unauthorized("send a valid API key in X-API-Key or Authorization: Bearer")
        g.tenant = tenant
        bind_log_context(tenant=tenant)
        # Every authenticated /v1 request takes a token of its tenant's rate
        # (ingress/limits/ratelimit.py).
        decision = svc.limiter.check(tenant)
        if decision is not None:
            g.rate_limit_headers = decision.headers()
            if not decision.allowed:
                raise TooManyRequests(
                    f"over this tenant's request rate ({decision.rate:g}/s, "
                    f"{decision.limit} at once); retry after {decision.retry_after_s} s",
                    decision.retry_after_s,
                    headers=g.rate_limit_headers,
                )


def _start_span(project: str, caller: Headers) -> None:
    """Start the request's span, a child of the trace context in ``caller`` (the headers of an
    authenticated request) or else the root of a new trace that our sampler decides on, and bind
    its ids to the request's log lines."""
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    span = _tracer.start_span(
        f"{request.method} {rule}",
        context=tracing.from_headers(caller),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": rule},
    )
    g.span, g.trace_token = span, otel_context.attach(trace.set_span_in_context(span))
    bind_log_context(**(tracing.log_fields(project, span) or trace_fields(project, caller)))


def _end_request(_exc: BaseException | None) -> None:
    span = g.pop("span", None)
    if span is not None:
        span.end()
        otel_context.detach(g.pop("trace_token"))
    clear_log_context()


def _rate_limit_headers(response: Response) -> Response:
    """``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` on a rate-limited tenant's answers."""
    for name, value in g.get("rate_limit_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


def _log_request(response: Response) -> Response:
    span = g.get("span")
    if span is not None:
        span.set_attribute("http.response.status_code", response.status_code)
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    access_logger.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "httpRequest": {
                "requestMethod": request.method,
                "requestUrl": request.path,
                "status": response.status_code,
                "latency": f"{elapsed_ms / 1000:.6f}s",
                "userAgent": request.user_agent.string,
            }
        },
    )
    return response
