"""One job's part of its trace on the worker: which context it continues, and its spans.

A job's message carries the trace the ingress started (``googclient_traceparent``; the Pub/Sub
client's own ``subscribe`` span continues it when the subscriber's tracing is on). The worker adds,
per job and after the fact (a micro-batch serves many jobs, each in its own trace): a ``job TASK``
span from the claim to the outcome's write, with ``inference TASK`` (the forward pass the job
shared, ``omni.batch_size`` jobs in all) and ``firestore write outcome`` inside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from common import tracing

_tracer = trace.get_tracer("omni.worker")


@dataclass
class JobTrace:
    parent: otel_context.Context
    claimed_ns: int = field(default_factory=time.time_ns)
    inference_ns: tuple[int, int] | None = None

    @classmethod
    def of(cls, message: Any) -> JobTrace:
        """The trace a received message continues: the client's ``subscribe`` span if it made
        one, else the context in the attributes (a new trace when there is none)."""
        data = getattr(message, "opentelemetry_data", None)
        span = getattr(data, "subscribe_span", None) if data is not None else None
        if span is not None:
            return cls(trace.set_span_in_context(span))
        return cls(tracing.extract(dict(message.attributes or {})))

    def record(
        self,
        task: str,
        job_id: str,
        attempt: int,
        outcome: str,
        batch_size: int,
        write_ns: tuple[int, int],
    ) -> trace.Span:
        """Emit this job's spans, now that its outcome is written; returns the job's span."""
        job = _tracer.start_span(
            f"job {task}",
            context=self.parent,
            kind=trace.SpanKind.CONSUMER,
            start_time=self.claimed_ns,
            attributes={
                "omni.job_id": job_id,
                "omni.task": task,
                "omni.attempt": attempt,
                "omni.outcome": outcome,
                "omni.batch_size": batch_size,
            },
        )
        inside = trace.set_span_in_context(job)
        if self.inference_ns is not None:
            inference = _tracer.start_span(
                f"inference {task}",
                context=inside,
                start_time=self.inference_ns[0],
                attributes={"omni.batch_size": batch_size},
            )
            inference.end(end_time=self.inference_ns[1])
        write = _tracer.start_span(
            "firestore write outcome", context=inside, start_time=write_ns[0]
        )
        write.end(end_time=write_ns[1])
        job.end(end_time=write_ns[1])
        return job
