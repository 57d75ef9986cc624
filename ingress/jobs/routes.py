"""``/v1/jobs``: submit a job (optionally idempotent, optionally waiting for it), list the
tenant's jobs, read one back (optionally as a long poll), cancel it. The event stream is in
``ingress/jobs/events.py``."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from opentelemetry import trace
from pydantic import ValidationError

from common import tracing
from common.jsonlog import bind_log_context
from ingress import metrics
from ingress.access import checked_id, owned_job
from ingress.errors import (
    AlreadyFinished,
    BadRequest,
    Conflict,
    NotFound,
    StoreRejected,
    StoreUnavailable,
    ValidationFailed,
)
from ingress.http import (
    HUGE_INT,
    has_huge_int,
    json_body,
    prefer_wait,
    request_deadline,
    wait_param,
)
from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from ingress.idempotency import KEY_PATTERN, KeyMismatch, Reservation, fingerprint
from ingress.jobs.waits import long_poll, wait_until_terminal
from ingress.pages import listing
from ingress.publisher import PublishFailed
from ingress.services import Services, admit, release, services, unavailable
from ingress.webhooks.check import checked_webhook
from schemas import (
    TASKS,
    Job,
    JobMessage,
    JobRequest,
    ProblemItem,
    UnknownTaskError,
    get_task,
    jobstate,
    resultcache,
)
from schemas.jobs import (
    JobStatus,
    JobSummary,
    new_job_document,
    new_job_id,
)
from schemas.messages import BATCH, INTERACTIVE

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer("omni.ingress")

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _idempotency_key() -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not KEY_PATTERN.match(key):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1..255 printable ASCII characters")
    return key


@bp.post("")
def create_job() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    tenant: str = g.tenant
    key = _idempotency_key()
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

    webhook = checked_webhook(job_request.webhook, ["body", "webhook"])
    deadline = request_deadline(request, job_request.deadline)
    stored_input = spec.input_to_store(task_input.model_dump(mode="json"))
    if has_huge_int(stored_input):
        raise ValidationFailed([ProblemItem(loc=["body", "input"], msg=HUGE_INT)])
    # A request that will wait holds one of its tenant's stream slots until it is answered; at the
    # cap it is refused here, before a key is reserved or a job written, so a retry is safe.
    wait_s = prefer_wait(request.headers.get("Prefer"))
    with svc.holds.acquire(tenant) if wait_s else nullcontext():
        job_id, reservation = _reserve(svc, tenant, key, body)
        replayed = reservation is not None and reservation.replayed
        if replayed and (answer := _replay(svc, job_id, tenant)) is not None:
            return answer
        doc = new_job_document(
            tenant=tenant,
            task=spec.name,
            input=stored_input,
            metadata=job_request.metadata,
            now=datetime.now(UTC),
            result_ttl_s=svc.settings.result_ttl_s,
            webhook=webhook,
            deadline=deadline,
        )
        if job_request.priority == BATCH:
            doc["priority"] = BATCH
        if resultcache.cacheable(spec.name):
            # Set even with "cache": false: the run's result then refreshes the entry.
            doc["cache_key"] = resultcache.cache_key(tenant, spec.name, stored_input)
            if job_request.cache and svc.settings.result_cache:
                cached = svc.cache.lookup(doc["cache_key"], tenant, spec.name, stored_input)
                metrics.cache_lookup(spec.name, cached is not None)
                if cached is not None:
                    return _answer_from_cache(svc, job_id, doc, cached, reservation)
        # After the replay and the cache, which take no slot: both are answered at the cap.
        admit(tenant, 1, reservation)
        return _enqueue(svc, job_id, doc, reservation)


def _answer_from_cache(
    svc: Services,
    job_id: str,
    doc: dict[str, Any],
    result: dict[str, Any],
    reservation: Reservation | None,
) -> tuple[Response, int, dict[str, str]]:
    """200 with a job born ``succeeded`` from the result cache: written like any job (listings,
    ``GET``, events, its webhook, a replay of its ``Idempotency-Key`` find it), never published."""
    bind_log_context(job_id=job_id, task=doc["task"])
    doc["trace_id"] = tracing.trace_id()
    doc = jobstate.from_cache(doc, result, datetime.now(UTC), svc.settings.result_ttl_s)
    try:
        with _tracer.start_as_current_span("firestore create job"):
            svc.store.create(job_id, doc)
    except (StoreRejected, StoreUnavailable) as exc:
        release(reservation)
        raise unavailable("job store") from exc
    logger.info("job answered from the result cache")
    body = jsonify(Job.from_document(job_id, doc).to_json_dict())
    return body, 200, {"Location": f"/v1/jobs/{job_id}"}


def _reserve(
    svc: Services, tenant: str, key: str | None, body: Any
) -> tuple[str, Reservation | None]:
    """A new job id, or with an ``Idempotency-Key`` the id the key holds (its reservation says
    whether an earlier request made it)."""
    job_id = new_job_id()
    if key is None:
        return job_id, None
    try:
        reservation = svc.idempotency.reserve(tenant, key, fingerprint(request.path, body), job_id)
    except KeyMismatch as exc:
        raise Conflict(str(exc)) from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    return reservation.resource_id, reservation


def _enqueue(
    svc: Services, job_id: str, doc: dict[str, Any], reservation: Reservation | None
) -> tuple[Response, int, dict[str, str]]:
    """Write the new job, publish it, and answer 202 (``_accepted``). The tenant's in-flight
    slot was taken (``admit``); a write or publish that fails frees the key and answers 503."""
    tenant, task = doc["tenant"], doc["task"]
    bind_log_context(job_id=job_id, task=task)
    doc["trace_id"] = tracing.trace_id()  # the request's trace: the job's whole trace
    try:
        with _tracer.start_as_current_span("firestore create job"):
            written_at = svc.store.create(job_id, doc)
    except StoreRejected as exc:
        item = ProblemItem(loc=["body"], msg=f"the job cannot be stored: {exc}")
        release(reservation)
        raise ValidationFailed([item]) from exc
    except StoreUnavailable as exc:
        release(reservation)
        raise unavailable("job store") from exc
    try:
        priority = doc.get("priority") or INTERACTIVE
        svc.publisher.publish(
            JobMessage(job_id=job_id, task=task, tenant=tenant, priority=priority)
        )
    except PublishFailed as exc:
        # The client will retry with a new job; this one must not sit in queued forever.
        svc.store.fail_unpublished(job_id, tenant, written_at, str(exc))
        release(reservation)
        raise unavailable("job queue") from exc
    logger.info("job queued", extra={"retry_of": doc["retry_of"]} if "retry_of" in doc else None)
    metrics.job_submitted(task)
    return _accepted(svc, job_id, doc, {"Location": f"/v1/jobs/{job_id}"})


def _accepted(
    svc: Services, job_id: str, doc: dict[str, Any], headers: dict[str, str]
) -> tuple[Response, int, dict[str, str]]:
    """202 with the job; with ``Prefer: wait=N``, held until the job ends (then 200) or N runs
    out (still 202). A replayed idempotent request waits the same way as the first one did.
    The caller holds the tenant's stream slot for the wait (``create_job``)."""
    wait_s = prefer_wait(request.headers.get("Prefer"))
    status = 202
    if wait_s is not None:
        doc = wait_until_terminal(svc.watcher, job_id, doc, wait_s)
        headers["Preference-Applied"] = f"wait={wait_s:g}"
        status = 200 if jobstate.is_terminal(doc) else 202
    return jsonify(Job.from_document(job_id, doc).to_json_dict()), status, headers


def _replay(svc: Services, job_id: str, tenant: str) -> tuple[Response, int, dict[str, str]] | None:
    """The job an earlier request with the same key made, as it is now; None if that request
    reserved the key but its job is not written (yet): this request then writes it."""
    bind_log_context(job_id=job_id)
    try:
        doc = svc.store.get(job_id)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if doc is None or doc.get("tenant") != tenant:
        return None
    logger.info("idempotent replay")
    return _accepted(
        svc, job_id, doc, {"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "true"}
    )


@bp.get("")
def list_jobs() -> Response:
    """The tenant's jobs, newest first, a page at a time (``ingress/pages.py``): filters
    ``status``, ``task``, ``created_after`` (inclusive), ``created_before`` (exclusive); ``limit``;
    ``page_token`` from the previous page. Items are summaries: no input, no result."""
    tenant: str = g.tenant
    query = listing(request.args, tenant, [s.value for s in JobStatus], list(TASKS))
    try:
        jobs, next_cursor = services().store.page(
            tenant,
            limit=query.limit,
            fields=JobSummary.FIELDS,
            status=query.status,
            task=query.task,
            created_after=query.created_after,
            created_before=query.created_before,
            after=query.cursor,
        )
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    return jsonify(
        {
            "jobs": [JobSummary.from_document(i, doc).to_json_dict() for i, doc in jobs],
            "next_page_token": query.next_token(tenant, next_cursor),
        }
    )


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """The job; with ``?wait=N``, a long poll that answers as soon as the job is terminal, or
    with its state as it is after N seconds."""
    wait_s = wait_param(request.args.get("wait"))
    doc = owned_job(job_id)
    if wait_s:
        doc = long_poll(job_id, doc, wait_s)
    job = Job.from_document(job_id, doc)
    if job.status is JobStatus.QUEUED:
        job.queue = services().estimates.queue(doc)
    return jsonify(job.to_json_dict())


@bp.delete("/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    """204: the job is gone, with its result, its event log (both in its document), its webhook
    ledger and its result-cache entry; one not yet ended is cancelled by going (its worker stops
    at its next check). 404 for an unknown or foreign id, as for every read; 409 for an item of a
    batch (``DELETE /v1/batches/ID`` deletes those)."""
    svc = services()
    doc = owned_job(job_id)
    if doc.get("batch_id"):
        raise Conflict("this job is an item of a batch; delete the batch")
    also = [svc.webhooks.reference("job", job_id)]
    if doc.get("cache_key"):
        also.append(svc.cache.reference(doc["cache_key"]))
    try:
        deleted = svc.store.delete(job_id, g.tenant, also)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if not deleted:
        raise NotFound("no such job")
    logger.info("job deleted", extra={"status": doc.get("status")})
    return "", 204


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """A queued job is ``cancelled`` at once and never runs; a running one is ``cancelled`` at once
    too and its worker stops at its next safe point, writing nothing. 409 when already terminal."""
    svc = services()
    checked_id(job_id)
    try:
        doc = svc.store.cancel(job_id, g.tenant)
    except AlreadyFinished as exc:
        status = exc.doc.get("status")
        raise Conflict(f"the job is already {status}; a finished job cannot be cancelled") from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if doc is None:
        raise NotFound("no such job")
    logger.info("job cancelled")
    return jsonify(Job.from_document(job_id, doc).to_json_dict())


@bp.post("/<job_id>/retry")
def retry_job(job_id: str) -> tuple[Response, int, dict[str, str]]:
    """A failed job again: 202 with a new job of the same task, input, metadata and webhook,
    whose ``retry_of`` names this one (which stays ``failed``); 409 unless this one failed.
    ``Idempotency-Key`` makes a retried request answer the same new job."""
    svc = services()
    tenant: str = g.tenant
    key = _idempotency_key()
    old = owned_job(job_id)
    if old.get("status") != JobStatus.FAILED.value:
        raise Conflict(f"only a failed job can be retried; this one is {old.get('status')}")
    wait_s = prefer_wait(request.headers.get("Prefer"))
    with svc.holds.acquire(tenant) if wait_s else nullcontext():  # as create_job's wait
        new_id, reservation = _reserve(svc, tenant, key, {"retry_of": job_id})
        replayed = reservation is not None and reservation.replayed
        if replayed and (answer := _replay(svc, new_id, tenant)) is not None:
            return answer
        admit(tenant, 1, reservation)
        doc = new_job_document(
            tenant=tenant,
            task=old["task"],
            input=old["input"],  # already in its stored form, as validated when first submitted
            metadata=old.get("metadata") or None,
            now=datetime.now(UTC),
            result_ttl_s=svc.settings.result_ttl_s,
            webhook=old.get("webhook"),
            # The failed job's own deadline has passed, or will: only a new Cancel-After counts.
            deadline=request_deadline(request, None),
        )
        doc["retry_of"] = job_id
        if old.get("priority"):
            doc["priority"] = old["priority"]
        if "cache_key" in old:
            doc["cache_key"] = old["cache_key"]  # a retry runs the model; its result is kept
        return _enqueue(svc, new_id, doc, reservation)
