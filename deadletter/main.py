"""A CloudEvent function on the dead-letter topic: a job Pub/Sub gave up on ends ``failed``.

After ``max_delivery_attempts`` (5) deliveries without an ack, Pub/Sub moves a job's message to the
dead-letter topic. This function receives it (Eventarc or a push subscription in production;
a push subscription from the emulator to ``functions-framework`` locally) and writes the job
``failed`` with code ``attempts_exhausted`` and the last error a worker recorded, unless the job
already ended, or a live attempt still holds it (that attempt writes the outcome; if it dies, the
reconciler finds the job). It is idempotent: a redelivered event changes nothing.

    functions-framework --source deadletter/main.py --target on_dead_letter \\
        --signature-type cloudevent --host 127.0.0.1 --port 8095

An exception answers 500, so Pub/Sub redelivers the event: only a Firestore outage raises.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
from datetime import UTC, datetime
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent
from google.cloud import firestore

from schemas import jobstate
from schemas.googleapi import UNAVAILABLE, bounded_retry
from schemas.jobs import DEFAULT_RESULT_TTL_S, JobStatus, parse_duration
from schemas.jsonlog import configure_logging, log_context
from schemas.messages import JobMessage

logger = logging.getLogger("deadletter")

DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
"""Set by Pub/Sub on a dead-lettered message: how many times it was delivered."""
FIRESTORE_TIMEOUT_S = 10.0


class DeadLetterStore:
    def __init__(self, client: firestore.Client, collection: str, result_ttl_s: float):
        self._client = client
        self._jobs = client.collection(collection)
        self._result_ttl_s = result_ttl_s
        self._retry = bounded_retry(FIRESTORE_TIMEOUT_S)

    def fail(self, job: JobMessage, deliveries: str | None) -> str:
        """End the job ``failed``; returns what was done (for the log)."""
        ref = self._jobs.document(job.job_id)

        @firestore.transactional
        def _fail(transaction: firestore.Transaction) -> str:
            snapshot = ref.get(transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != job.tenant:
                return "no such job"
            if jobstate.is_terminal(doc):
                return f"already {doc['status']}"
            now = datetime.now(UTC)
            lease = doc.get("lease_expires_at")
            if doc.get("status") == JobStatus.RUNNING.value and lease is not None and lease > now:
                return "held by a live attempt"
            last = doc.get("last_error") or {}
            message = (
                f"gave up after {deliveries or 'the maximum'} deliveries; last error: "
                f"{last.get('message', 'none recorded (the worker may have crashed)')}"
            )
            error = {"code": "attempts_exhausted", "message": message}
            changes = jobstate.terminal(
                JobStatus.FAILED, now, "dead-letter", self._result_ttl_s, error=error
            )
            transaction.update(ref, changes)
            return "failed"

        outcome: str = _fail(self._client.transaction())
        return outcome


def handle(data: dict[str, Any], store: DeadLetterStore) -> str:
    """Process one dead-lettered Pub/Sub message (the CloudEvent's ``data``)."""
    message = data.get("message") or {}
    attributes = dict(message.get("attributes") or {})
    try:
        raw = base64.b64decode(message.get("data") or "", validate=True)
        job = JobMessage.from_pubsub(raw, attributes)
    except (ValueError, binascii.Error) as exc:
        logger.error("unreadable dead letter %s dropped: %s", message.get("messageId"), exc)
        return "unreadable"
    with log_context(job_id=job.job_id, task=job.task, tenant=job.tenant):
        outcome = store.fail(job, attributes.get(DELIVERY_COUNT_ATTRIBUTE))
        logger.info("dead letter: %s", outcome, extra={"outcome": outcome})
        return outcome


@functools.cache
def _store() -> DeadLetterStore:
    # Read once, on the first event: the function has no app factory to do it in.
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    return DeadLetterStore(
        firestore.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT")),
        os.environ.get("JOBS_COLLECTION") or "jobs",
        parse_duration(os.environ.get("RESULT_TTL") or str(DEFAULT_RESULT_TTL_S)),
    )


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    try:
        handle(event.data or {}, _store())
    except UNAVAILABLE:
        logger.warning("Firestore unavailable; the event will be redelivered")
        raise
