"""``/v1/jobs``: submit a job, read it back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, Response, g, jsonify, request
from pydantic import ValidationError

from ingress.errors import NotFound, ServiceUnavailable, ValidationFailed
from ingress.publisher import PublishFailed
from ingress.requests import json_body
from ingress.services import services
from ingress.store import StoreRejected, StoreUnavailable
from schemas import (
    JOB_ID_PATTERN,
    TASKS,
    Job,
    JobMessage,
    JobRequest,
    ProblemItem,
    UnknownTaskError,
    get_task,
)
from schemas.jobs import new_job_document, new_job_id
from schemas.jsonlog import bind_log_context

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    tenant: str = g.tenant
    body = json_body(request, svc.settings.max_body_bytes)
    try:
        job_request = JobRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, prefix=["body"]) from exc
    try:
        spec = get_task(job_request.task)
    except UnknownTaskError:
        known = ", ".join(sorted(TASKS))
        msg = f"unknown task {job_request.task!r}; known tasks: {known}"
        raise ValidationFailed([ProblemItem(loc=["body", "task"], msg=msg)]) from None
    try:
        task_input = spec.input_model.model_validate(job_request.input)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, prefix=["body", "input"]) from exc

    job_id = new_job_id()
    bind_log_context(job_id=job_id, task=spec.name)
    doc = new_job_document(
        tenant=tenant,
        task=spec.name,
        input=task_input.model_dump(mode="json"),
        metadata=job_request.metadata,
        now=datetime.now(UTC),
    )
    retry_after = svc.settings.retry_after_s
    try:
        written_at = svc.store.create(job_id, doc)
    except StoreRejected as exc:
        item = ProblemItem(loc=["body"], msg=f"the job cannot be stored: {exc}")
        raise ValidationFailed([item]) from exc
    except StoreUnavailable as exc:
        raise ServiceUnavailable("the job store is unavailable; try again", retry_after) from exc
    try:
        svc.publisher.publish(JobMessage(job_id=job_id, task=spec.name, tenant=tenant))
    except PublishFailed as exc:
        # The client will retry with a new job; this one must not sit in queued forever.
        svc.store.fail_unpublished(job_id, written_at, str(exc))
        raise ServiceUnavailable("the job queue is unavailable; try again", retry_after) from exc
    logger.info("job queued")
    job = Job.from_document(job_id, doc)
    return jsonify(job.to_json_dict()), 202, {"Location": job.links.self}


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    svc = services()
    # An id that cannot exist answers exactly like one that does not: 404, no store read.
    if not JOB_ID_PATTERN.match(job_id):
        raise NotFound("no such job")
    bind_log_context(job_id=job_id)
    try:
        doc = svc.store.get(job_id)
    except StoreUnavailable as exc:
        raise ServiceUnavailable(
            "the job store is unavailable; try again", svc.settings.retry_after_s
        ) from exc
    # Another tenant's job is indistinguishable from a missing one.
    if doc is None or doc.get("tenant") != g.tenant:
        raise NotFound("no such job")
    return jsonify(Job.from_document(job_id, doc).to_json_dict())
