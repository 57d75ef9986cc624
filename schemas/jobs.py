"""Jobs: the request a client sends, the resource it gets back, and the stored document between.

The Firestore document of a job uses the resource's field names, plus ``tenant`` (never shown) and
the task's *stored* result form (see ``TaskSpec.result_to_store``). ``Job.from_document`` is the one
place that turns a document into what the API answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from schemas.tasks import get_task
from schemas.webhooks import checked_url

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
"""Job ids are uuid4 hex: unguessable, so an id alone reveals nothing about other jobs."""

MAX_METADATA_ITEMS = 16
"""Most ``metadata`` keys a job may carry."""
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600
"""``RESULT_TTL``: how long a job is kept after it finishes (``expire_at``, a Firestore TTL)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"7d"``; else ``ValueError``."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 3600, 90s, 15m, 12h, 7d)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def result_ttl_from_env(env: Mapping[str, str]) -> float:
    """``RESULT_TTL`` in seconds: every service that ends jobs reads it the same way."""
    return parse_duration(env.get("RESULT_TTL") or str(DEFAULT_RESULT_TTL_S))


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
"""A job in one of these never changes again."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def checked_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """``metadata`` within its limits (jobs and batches carry the same kind)."""
    if value is None:
        return None
    if len(value) > MAX_METADATA_ITEMS:
        raise ValueError(f"at most {MAX_METADATA_ITEMS} metadata items")
    for key, item in value.items():
        if not 0 < len(key) <= MAX_METADATA_KEY_CHARS:
            raise ValueError(f"metadata keys are 1..{MAX_METADATA_KEY_CHARS} characters")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(f"metadata values are at most {MAX_METADATA_VALUE_CHARS} characters")
    return value


Metadata = Annotated[dict[str, str] | None, AfterValidator(checked_metadata)]
"""``metadata`` of a job or a batch: at most 16 short string pairs."""
Webhook = Annotated[str | None, AfterValidator(checked_url)]
"""``webhook`` of a job or a batch: an absolute URL (its policy is checked by the ingress, which
knows whether private addresses are allowed: ``schemas.webhooks.url_refusal``)."""


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``. ``input`` is checked against the task's own schema afterwards."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=64)
    input: dict[str, Any]
    metadata: Metadata = None
    webhook: Webhook = None
    deadline: AwareDatetime | None = Field(
        default=None,
        description=(
            "RFC 3339 with an offset. Not started by then: the job ends `failed` with code "
            "`deadline_exceeded` and never runs; running then: it stops at its next safe point "
            "and ends the same way. `Cancel-After: <seconds>` is a synonym (the earlier wins)."
        ),
    )
    priority: Literal["interactive", "batch"] = Field(
        default="interactive",
        description=(
            "`batch`: run after waiting single jobs, as batch work (never starved); for work "
            "that can wait behind interactive traffic."
        ),
    )
    cache: bool = Field(
        default=True,
        description=(
            "Whether an identical earlier input of this tenant, to this deterministic task and "
            "model version, may answer this job at once (200, `timings.cache_hit: true`). "
            "`false` runs the model."
        ),
    )


MAX_CANCEL_AFTER_S = 30 * 24 * 3600
"""Longest ``Cancel-After``, seconds (30 days: longer than any job waits in practice)."""
DEADLINE_EXCEEDED = "deadline_exceeded"
"""The error code of a job that ended because its ``deadline`` passed."""


class JobError(BaseModel):
    code: str
    message: str


class JobTimings(BaseModel):
    """Where a job's time went, in milliseconds: ``queued_ms`` from creation to its first start,
    ``running_ms`` from that start to the end (retries and waits for the model included),
    ``inference_ms`` the forward pass that produced its outcome, shared with ``batch_size`` - 1
    other jobs (micro-batching). Each is absent until known."""

    queued_ms: float | None = None
    running_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None
    cache_hit: bool | None = None
    """True when the result came from the result cache at submit (no model call)."""

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> JobTimings | None:
        created, started, finished = (
            doc.get(k) for k in ("created_at", "started_at", "finished_at")
        )
        timings = cls(
            queued_ms=_ms(started - created) if created and started else None,
            running_ms=_ms(finished - started) if started and finished else None,
            inference_ms=doc.get("inference_ms"),
            batch_size=doc.get("batch_size"),
            cache_hit=doc.get("cache_hit"),
        )
        return timings if timings.model_dump(exclude_none=True) else None


def _ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 1)


class JobLinks(BaseModel):
    self: str
    events: str
    webhook_deliveries: str | None = None

    @classmethod
    def for_job(cls, job_id: str, webhook: bool = False) -> JobLinks:
        base = f"/v1/jobs/{job_id}"
        deliveries = f"{base}/webhook-deliveries" if webhook else None
        return cls(self=base, events=f"{base}/events", webhook_deliveries=deliveries)


class Job(BaseModel):
    """The job resource, as ``GET /v1/jobs/ID`` answers it."""

    id: str
    task: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: JobError | None = None
    input: dict[str, Any]
    batch_id: str | None = None
    metadata: dict[str, str] | None = None
    timings: JobTimings | None = None
    trace_id: str | None = None
    webhook: str | None = None
    retry_of: str | None = Field(
        default=None, description="The failed job this one retries (POST /v1/jobs/ID/retry)."
    )
    priority: str | None = Field(default=None, description="`batch` when sent so.")
    deadline: datetime | None = None
    queue: dict[str, float] | None = Field(
        default=None,
        description=(
            "A queued job read alone: `position_estimate` (queued jobs of its task created "
            "before it, plus one) and `eta_s` (seconds until it starts, from the workers' "
            "measured rate; absent when unknown)."
        ),
    )
    links: JobLinks

    @classmethod
    def from_document(cls, job_id: str, doc: dict[str, Any]) -> Job:
        """Build the resource from a stored job document (``tenant`` is dropped).

        ``result`` appears only when succeeded and ``error`` only when failed, whatever the
        document holds, so the contract's invariant does not depend on every writer.
        """
        status = JobStatus(doc["status"])
        result = None
        if status is JobStatus.SUCCEEDED and doc.get("result") is not None:
            result = get_task(doc["task"]).result_from_store(doc["result"])
        error = doc.get("error") if status is JobStatus.FAILED else None
        spec = get_task(doc["task"])
        return cls(
            id=job_id,
            task=doc["task"],
            status=status,
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            attempts=doc.get("attempts", 0),
            result=result,
            error=JobError(**error) if error else None,
            input=spec.input_from_store(doc["input"]),
            batch_id=doc.get("batch_id"),
            metadata=doc.get("metadata") or None,
            timings=JobTimings.from_document(doc),
            trace_id=doc.get("trace_id"),
            webhook=doc.get("webhook"),
            retry_of=doc.get("retry_of"),
            priority=doc.get("priority"),
            deadline=doc.get("deadline"),
            links=JobLinks.for_job(job_id, webhook=bool(doc.get("webhook"))),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class JobSummary(BaseModel):
    """A job as ``GET /v1/jobs`` lists it: the resource without its ``input`` and ``result``
    (each up to ~1 MiB; ``links.self`` reads them), so a page stays small whatever it holds."""

    id: str
    task: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    error: JobError | None = None
    metadata: dict[str, str] | None = None
    retry_of: str | None = None
    links: JobLinks

    FIELDS: ClassVar[tuple[str, ...]] = (
        "task",
        "status",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "attempts",
        "error",
        "metadata",
        "webhook",
        "retry_of",
    )
    """The stored fields a summary reads (a listing selects only these)."""

    @classmethod
    def from_document(cls, job_id: str, doc: dict[str, Any]) -> JobSummary:
        status = JobStatus(doc["status"])
        error = doc.get("error") if status is JobStatus.FAILED else None
        return cls(
            id=job_id,
            task=doc["task"],
            status=status,
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            attempts=doc.get("attempts", 0),
            error=JobError(**error) if error else None,
            metadata=doc.get("metadata") or None,
            retry_of=doc.get("retry_of"),
            links=JobLinks.for_job(job_id, webhook=bool(doc.get("webhook"))),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def new_job_document(
    *,
    tenant: str,
    task: str,
    input: dict[str, Any],
    metadata: dict[str, str] | None,
    now: datetime,
    result_ttl_s: float = DEFAULT_RESULT_TTL_S,
    webhook: str | None = None,
    deadline: datetime | None = None,
) -> dict[str, Any]:
    """The document the ingress writes before publishing: ``queued``, no attempts yet.

    ``expire_at`` is provisional (a job that never finishes still goes); every terminal write
    moves it to ``RESULT_TTL`` after the finish.

    A job with a ``webhook`` carries ``webhook_pending`` until the webhook sender has taken its
    terminal state into the delivery ledger (``webhooks/outbox.py``): no writer that ends a job
    has to know about webhooks, and none can end one without the sender finding it.
    """
    doc = {
        "tenant": tenant,
        "task": task,
        "status": JobStatus.QUEUED.value,
        "created_at": now,
        "updated_at": now,
        "attempts": 0,
        "input": input,
        "metadata": metadata or {},
        "terminal_writes": 0,
        # Its +1 on the tenant's jobs in flight is in the creating commit (schemas/quota.py).
        "in_flight_counted": True,
        # No ``events`` yet: event 1, the creation, is implied by ``created_at`` (see
        # schemas/jobevents.py). An array of maps is the costliest value to index, and a batch
        # writes 100,000 of these documents at once.
        "expire_at": now + timedelta(seconds=result_ttl_s),
    }
    if webhook is not None:
        doc["webhook"] = webhook
        doc["webhook_pending"] = True
    if deadline is not None:
        doc["deadline"] = deadline
    return doc
