"""Trace context across the Pub/Sub hop: what the ingress injects is what the worker extracts,
in the attribute the Pub/Sub client's own tracing uses."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from common.jsonlog import SPAN_FIELD, TRACE_FIELD


@pytest.fixture
def tracer() -> trace.Tracer:
    return TracerProvider().get_tracer("test")


def test_the_context_round_trips_through_message_attributes(tracer: trace.Tracer) -> None:
    attributes = {"job_id": "j", "task": "embed"}
    with tracer.start_as_current_span("publish") as span:
        tracing.inject(attributes)
    assert set(attributes) == {"job_id", "task", "googclient_traceparent"}
    parent = trace.get_current_span(tracing.extract(attributes)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id
    assert parent.is_remote


def test_a_message_without_context_extracts_to_nothing() -> None:
    context = tracing.extract({"job_id": "j"})
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_ids_and_log_fields_come_from_the_span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("request") as span:
        ids = span.get_span_context()
        assert tracing.trace_id() == f"{ids.trace_id:032x}"
        fields = tracing.log_fields("proj")
    assert fields == {
        TRACE_FIELD: f"projects/proj/traces/{ids.trace_id:032x}",
        SPAN_FIELD: f"{ids.span_id:016x}",
    }
    assert tracing.trace_id() is None and tracing.log_fields("proj") == {}


def test_incoming_w3c_headers_continue_the_callers_trace() -> None:
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = tracing.from_headers({"Traceparent": header})
    span_context = trace.get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"


def test_an_unknown_exporter_is_refused() -> None:
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("a provider is installed in this process already")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing.configure_tracing("test", "zipkin")


def test_spans_record_once_a_processor_is_added_even_on_tracers_handed_out_before() -> None:
    # The ingress and worker install the provider with no exporter; a test adding its in-memory
    # exporter afterwards must see the spans of tracers those apps already hold.
    provider = tracing._Provider(Resource.create({"service.name": "test"}))
    tracer = provider.get_tracer("early")
    with tracer.start_as_current_span("unexported") as span:
        assert not span.is_recording()
        assert span.get_span_context().trace_id != 0  # ids still made for jobs and logs
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracer.start_as_current_span("exported") as span:
        assert span.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["exported"]
