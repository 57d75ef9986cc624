"""The webhook delivery ledger at the edge (the submit-time URL check:
``ingress/webhooks/check.py``).

    GET  /v1/jobs/ID/webhook-deliveries      the ledger: state, next attempt, every attempt
    POST /v1/jobs/ID/webhook-deliveries      send it again (202), under the same webhook-id
    GET  /v1/batches/ID/webhook-deliveries   the same for a batch's webhook
    POST /v1/batches/ID/webhook-deliveries

The sender (``python -m webhooks``) delivers; ``docs/webhooks.md`` has the whole design.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from ingress.access import owned_batch, owned_job
from ingress.errors import Conflict, NotFound, StoreUnavailable
from ingress.services import services, unavailable
from ingress.webhooks.store import DeliveryInProgress
from schemas import jobstate
from schemas.batches import Batch, BatchStatus
from schemas.webhooks import WebhookDeliveries

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)


def _ledger(kind: str, resource_id: str, url: str) -> dict[str, Any]:
    try:
        doc = services().webhooks.get(kind, resource_id)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    return WebhookDeliveries.from_document(kind, resource_id, url, doc).to_json_dict()


def _redeliver(kind: str, resource_id: str, url: str, finished: bool) -> tuple[Response, int]:
    if not finished:
        raise Conflict(f"the {kind} has not finished; its webhook is sent when it does")
    try:
        services().webhooks.redeliver(kind, resource_id)
    except DeliveryInProgress as exc:
        raise Conflict("an attempt is being sent now; ask again when it has ended") from exc
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    logger.info("webhook redelivery requested", extra={"kind": kind})
    return jsonify(_ledger(kind, resource_id, url)), 202


def _job_webhook(job_id: str) -> tuple[dict[str, Any], str]:
    doc = owned_job(job_id)
    url = doc.get("webhook")
    if not url:
        raise NotFound("this job has no webhook")
    return doc, str(url)


def _batch_webhook(batch_id: str) -> tuple[Any, str]:
    batch = owned_batch(batch_id)
    url = batch.doc.get("webhook")
    if not url:
        raise NotFound("this batch has no webhook")
    return batch, str(url)


@bp.get("/v1/jobs/<job_id>/webhook-deliveries")
def job_deliveries(job_id: str) -> Response:
    """The job's webhook ledger; ``waiting`` until the job ends and the sender takes it in."""
    _, url = _job_webhook(job_id)
    return jsonify(_ledger("job", job_id, url))


@bp.post("/v1/jobs/<job_id>/webhook-deliveries")
def redeliver_job(job_id: str) -> tuple[Response, int]:
    """Send the job's webhook again (202); 409 before the job has ended or while sending."""
    doc, url = _job_webhook(job_id)
    return _redeliver("job", job_id, url, jobstate.is_terminal(doc))


@bp.get("/v1/batches/<batch_id>/webhook-deliveries")
def batch_deliveries(batch_id: str) -> Response:
    """The batch's webhook ledger."""
    _, url = _batch_webhook(batch_id)
    return jsonify(_ledger("batch", batch_id, url))


@bp.post("/v1/batches/<batch_id>/webhook-deliveries")
def redeliver_batch(batch_id: str) -> tuple[Response, int]:
    """Send the batch's webhook again (202); 409 before every item has ended."""
    batch, url = _batch_webhook(batch_id)
    status = Batch.from_documents(batch.id, batch.doc, batch.shards).status
    return _redeliver("batch", batch_id, url, status is not BatchStatus.RUNNING)
