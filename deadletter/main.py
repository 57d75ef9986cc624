"""A CloudEvent function on the dead-letter topic: a job Pub/Sub gave up on ends ``failed``.

After ``max_delivery_attempts`` (5) deliveries without an ack, Pub/Sub moves a job's message to the
dead-letter topic. This function receives it (Eventarc or a push subscription in production;
a push subscription from the emulator to ``functions-framework`` locally) and decides from the job
document, the source of truth, not from the delivery count:

- the job ended already → nothing;
- a live attempt holds it → the event fails (``LiveAttempt``), so Pub/Sub delivers it again after
  its backoff: by then the attempt has ended the job, or died and let its lease lapse (a message
  delivered to a worker that was then killed can be dead-lettered while the lease still runs);
- the job really ran ``MAX_ATTEMPTS`` attempts (or was dead-lettered ``MAX_DEAD_LETTERS`` times)
  → ``failed`` with code ``attempts_exhausted`` and the last error a worker recorded;
- otherwise the deliveries were not attempts — deliveries to a subscriber that died before it could
  claim the job (on the emulator, a dead subscriber's stream keeps receiving messages and each send
  counts) — so the job is published again, with a fresh delivery count.

It is idempotent: a redelivered event of a finished job changes nothing.

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
from schemas.batches import CountDeltas
from schemas.googleapi import UNAVAILABLE, bounded_retry
from schemas.jobs import JobStatus, result_ttl_from_env
from schemas.jsonlog import configure_logging, log_context
from schemas.messages import DEFAULT_TOPIC, JobMessage

logger = logging.getLogger("deadletter")

DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
"""Set by Pub/Sub on a dead-lettered message: how many times it was delivered."""
FIRESTORE_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 5
"""``WORKER_MAX_ATTEMPTS``: attempts (claims) after which a dead-lettered job is given up."""
MAX_DEAD_LETTERS = 10
"""Times a job may be dead-lettered and published again before it is given up whatever its
attempts (a job that can never even be claimed must end too). Generous: in the emulator's kill
test a job was dead-lettered twice without one attempt."""
REQUEUE = "requeued"
HELD = "held by a live attempt"


class LiveAttempt(RuntimeError):
    """The job is held by a live attempt: decide again when the event is redelivered."""


class DeadLetterStore:
    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        result_ttl_s: float,
        max_attempts: int = MAX_ATTEMPTS,
    ):
        self._client = client
        self._jobs = client.collection(collection)
        self._result_ttl_s = result_ttl_s
        self._max_attempts = max_attempts
        self._retry = bounded_retry(FIRESTORE_TIMEOUT_S)

    def settle(self, job: JobMessage, deliveries: str | None) -> str:
        """Fail the job, or count a dead letter and answer ``REQUEUE``; returns what was done."""
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
                return HELD
            dead_letters = int(doc.get("dead_letters") or 0) + 1
            if (
                int(doc.get("attempts") or 0) < self._max_attempts
                and dead_letters < MAX_DEAD_LETTERS
            ):
                transaction.update(ref, {"dead_letters": dead_letters})
                return REQUEUE
            last = doc.get("last_error") or {}
            message = (
                f"gave up after {deliveries or 'the maximum'} deliveries; last error: "
                f"{last.get('message', 'none recorded (the worker may have crashed)')}"
            )
            error = {"code": "attempts_exhausted", "message": message}
            changes = jobstate.terminal(
                JobStatus.FAILED, now, "dead-letter", self._result_ttl_s, error=error
            )
            transaction.update(ref, {**changes, "dead_letters": dead_letters})
            deltas = CountDeltas()
            deltas.move(doc, JobStatus.FAILED)
            deltas.write(transaction, self._client, now)
            return "failed"

        outcome: str = _fail(self._client.transaction())
        return outcome


class Requeue:
    """Publishes a job's message again, to the jobs topic."""

    def __init__(self, publisher: Any, topic_path: str):
        self._publisher = publisher
        self._topic_path = topic_path

    def __call__(self, job: JobMessage) -> None:
        data, attributes = job.to_pubsub()
        self._publisher.publish(self._topic_path, data, **attributes).result(
            timeout=FIRESTORE_TIMEOUT_S
        )


def handle(data: dict[str, Any], store: DeadLetterStore, requeue: Requeue) -> str:
    """Process one dead-lettered Pub/Sub message (the CloudEvent's ``data``).

    A requeue is published after the commit that counted it; if the publish fails the event
    fails, Pub/Sub redelivers it, and the next try counts again (towards ``MAX_DEAD_LETTERS``)."""
    message = data.get("message") or {}
    attributes = dict(message.get("attributes") or {})
    try:
        raw = base64.b64decode(message.get("data") or "", validate=True)
        job = JobMessage.from_pubsub(raw, attributes)
    except (ValueError, binascii.Error) as exc:
        logger.error("unreadable dead letter %s dropped: %s", message.get("messageId"), exc)
        return "unreadable"
    with log_context(job_id=job.job_id, task=job.task, tenant=job.tenant):
        outcome = store.settle(job, attributes.get(DELIVERY_COUNT_ATTRIBUTE))
        if outcome == REQUEUE:
            requeue(job)
        logger.info("dead letter: %s", outcome, extra={"outcome": outcome})
        if outcome == HELD:
            raise LiveAttempt(f"job {job.job_id} is held by a live attempt; retry later")
        return outcome


@functools.cache
def _services() -> tuple[DeadLetterStore, Requeue]:
    # Read once, on the first event: the function has no app factory to do it in.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    env = os.environ
    configure_logging(env.get("LOG_LEVEL", "INFO"))
    project = env.get("GOOGLE_CLOUD_PROJECT") or "omni-local"
    store = DeadLetterStore(
        firestore.Client(project=project),
        env.get("JOBS_COLLECTION") or "jobs",
        result_ttl_from_env(env),
        int(env.get("WORKER_MAX_ATTEMPTS") or MAX_ATTEMPTS),
    )
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, env.get("JOBS_TOPIC") or DEFAULT_TOPIC)
    return store, Requeue(publisher, topic)


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    try:
        handle(event.data or {}, *_services())
    except UNAVAILABLE:
        logger.warning("Firestore unavailable; the event will be redelivered")
        raise
