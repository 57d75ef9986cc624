"""OpenTelemetry for every Omni process: one tracer provider, set up once from the environment, and
the W3C trace context that crosses the Pub/Sub hop in message attributes.

- ``OTEL_TRACES_EXPORTER``: ``none`` (default: spans are made but not recorded, so jobs
  still store a trace id and logs carry it), ``console`` (stderr), ``otlp`` (HTTP,
  ``OTEL_EXPORTER_OTLP_ENDPOINT``) or ``gcp`` (Cloud Trace, through
  ``opentelemetry-exporter-gcp-trace``).
- Sampling: OpenTelemetry's own ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default
  ``parentbased_always_on``; e.g. ``parentbased_traceidratio`` and ``0.1``), read by the SDK,
  and applied while a span processor exists (an exporter, or a test's).

The context travels as ``googclient_traceparent``: the attribute the Pub/Sub client's built-in
tracing writes on publish and reads on receipt, so the ingress's single jobs (published through
the client with tracing on) and its batches (published as raw protobufs, ``inject`` here) arrive
alike, and the subscriber's own ``subscribe`` span continues the publisher's trace.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.jsonlog import SPAN_FIELD, TRACE_FIELD

EXPORTERS = ("none", "console", "otlp", "gcp")
ATTRIBUTE_PREFIX = "googclient_"
"""Prefix of the trace context in message attributes (the Pub/Sub client's own choice)."""

_PROPAGATOR = TraceContextTextMapPropagator()


class _PrefixedSetter(Setter[MutableMapping[str, str]]):
    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[ATTRIBUTE_PREFIX + key] = value


class _PrefixedGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(ATTRIBUTE_PREFIX + key)
        return [value] if value else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return [k[len(ATTRIBUTE_PREFIX) :] for k in carrier if k.startswith(ATTRIBUTE_PREFIX)]


class _WhileExported(Sampler):
    """Drops every span until its provider has a span processor, then samples as the sampler it
    wraps (``OTEL_TRACES_SAMPLER``). Ids are made and propagated either way (a job's trace_id, the
    log lines' trace field); an unrecorded span costs a fraction of a recorded one, which the
    worker would pay several times per job for nothing when nothing exports.

    Decided per span, not once: a processor added later (a test's in-memory exporter, on a
    provider that an app made earlier in the same process) turns recording on for tracers that
    were handed out before it."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self.exported = False

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        chosen = self._sampler if self.exported else ALWAYS_OFF
        return chosen.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"WhileExported{{{self._sampler.get_description()}}}"


class _Provider(TracerProvider):
    def __init__(self, resource: Resource) -> None:
        super().__init__(resource=resource)  # the sampler OTEL_TRACES_SAMPLER names
        self._gate = _WhileExported(self.sampler)
        self.sampler = self._gate

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._gate.exported = True


def configure_tracing(service: str, exporter: str = "none") -> TracerProvider:
    """Install this process's tracer provider, once; a provider already installed (by a test, or
    an earlier call) is kept and returned."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    if exporter not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}")
    span_exporter = _exporter(exporter)
    provider = _Provider(Resource.create({"service.name": service}))
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> SpanExporter | None:
    # Exporters import their own clients: only the chosen one is loaded.
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp: SpanExporter = OTLPSpanExporter()
        return otlp
    if name == "gcp":
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

        exporter: SpanExporter = CloudTraceSpanExporter()  # type: ignore[no-untyped-call]
        return exporter
    return None


def recording() -> bool:
    """Whether this process's spans are recorded (an exporter, or a test's provider): what
    decides if per-message spans, like the Pub/Sub subscriber's, are worth making."""
    probe = trace.get_tracer("omni.probe").start_span("probe")
    probe.end()
    return bool(probe.is_recording())


def inject(
    attributes: MutableMapping[str, str], context: otel_context.Context | None = None
) -> None:
    """Add the trace context (``context``, else the current one) to message attributes."""
    _PROPAGATOR.inject(attributes, context=context, setter=_PrefixedSetter())


def extract(attributes: Mapping[str, str]) -> otel_context.Context:
    """The trace context a message carries (an empty context when it carries none)."""
    return _PROPAGATOR.extract(attributes, getter=_PrefixedGetter())


def from_headers(headers: Any) -> otel_context.Context:
    """The trace context of an incoming HTTP request (``traceparent``)."""
    return _PROPAGATOR.extract({k.lower(): v for k, v in headers.items()})


def trace_id(span: trace.Span | None = None) -> str | None:
    """The trace id of ``span`` (else the current span) as 32 hex digits; None without one."""
    context = (span or trace.get_current_span()).get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def log_fields(project: str, span: trace.Span | None = None) -> dict[str, str]:
    """Cloud Logging's trace fields for ``span`` (else the current span)."""
    context = (span or trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return {}
    return {
        TRACE_FIELD: f"projects/{project}/traces/{trace.format_trace_id(context.trace_id)}",
        SPAN_FIELD: trace.format_span_id(context.span_id),
    }
