"""A CloudEvent function on the dead-letter topic: work Pub/Sub gave up on ends ``failed``.

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

A batch's chunk (``schemas/chunks.py``) is a unit of work like a job and is decided the same way
from its document, ``batches/BATCH/chunks/CHUNK``; when it is given up, every item of it not ended
yet ends ``failed`` with the chunk's ``attempts_exhausted`` error, and the batch's counts move in
the same commit (items that already have an outcome keep it). A chunk still ``pending`` belongs to a
request that was never accepted: no message should exist for it, and nothing is done.

It is idempotent: a redelivered event of a finished job or chunk changes nothing.

A dead letter of a kind or version this release cannot read (``UnknownMessage``: a newer ingress
published it, against the rollout order of docs/deploy.md) is logged as an error with its whole
body and attributes and acknowledged, not failed: failing it would only have Pub/Sub push it again
every few minutes for its 7 days of retention. No work is lost with it: the unit of work is in
Firestore, and the reconciler of a release that knows the kind publishes it again.

    functions-framework --source deadletter/main.py --target on_dead_letter \\
        --signature-type cloudevent --host 127.0.0.1 --port 8095

An exception answers 500, so Pub/Sub redelivers the event: only an outage raises, as
``StoreUnavailable`` (Firestore did not answer, or the settling transaction stayed contended past
its tries: ``common/googleapi.py``) or ``RequeueFailed`` (the publish did not land), and
``LiveAttempt``. The redelivered event decides again from the document, so nothing is done twice.
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

from common.googleapi import failing_as, run_transaction
from common.jsonlog import configure_logging, log_context
from common.settings import project_from
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.chunks import CHUNKS, END_FIELDS, PENDING, ChunkMessage, end_unfinished
from schemas.jobs import JobStatus, result_ttl_from_env
from schemas.messages import (
    DEFAULT_TOPIC,
    JobMessage,
    Topics,
    UnknownMessage,
    UnknownTask,
    encode,
    parse,
)

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
CHUNK_FIELDS = [*END_FIELDS, "lease_expires_at", "attempts", "dead_letters", "last_error"]
"""What settling a chunk reads of it: never its inputs (up to ~1 MB) or results."""


class LiveAttempt(RuntimeError):
    """The job or chunk is held by a live attempt: decide again when the event is redelivered."""


class StoreUnavailable(RuntimeError):
    """Firestore did not answer in time, cannot serve now, or the transaction stayed contended:
    the event fails and is redelivered."""


class RequeueFailed(RuntimeError):
    """A requeue's publish did not land: the event fails and is redelivered."""


class DeadLetterStore:
    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        result_ttl_s: float,
        max_attempts: int = MAX_ATTEMPTS,
        batches_collection: str = "batches",
    ):
        self._client = client
        self._jobs = client.collection(collection)
        self._batches = client.collection(batches_collection)
        self._result_ttl_s = result_ttl_s
        self._max_attempts = max_attempts

    def settle(self, message: JobMessage | ChunkMessage, deliveries: str | None) -> str:
        """Fail the job or chunk, or count a dead letter and answer ``REQUEUE``; returns what was
        done."""
        if isinstance(message, ChunkMessage):
            ref = (
                self._batches.document(message.batch_id)
                .collection(CHUNKS)
                .document(message.chunk_id)
            )
            kind, fields = "chunk", CHUNK_FIELDS
        else:
            ref = self._jobs.document(message.job_id)
            kind, fields = "job", None

        def _fail(transaction: firestore.Transaction) -> str:
            snapshot = ref.get(field_paths=fields, transaction=transaction)
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or doc.get("tenant") != message.tenant:
                return f"no such {kind}"
            if jobstate.is_terminal(doc):
                return f"already {doc['status']}"
            if doc.get("status") == PENDING:
                return "not accepted"  # its request never finished: nothing was counted
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
            text = (
                f"gave up after {deliveries or 'the maximum'} deliveries; last error: "
                f"{last.get('message', 'none recorded (the worker may have crashed)')}"
            )
            error = {"code": "attempts_exhausted", "message": text}
            deltas = CountDeltas()
            items: dict[str, Any] = {}
            if kind == "chunk":  # its items not ended yet fail; the others keep their outcome
                items = end_unfinished(doc, JobStatus.FAILED, deltas, error)
            else:
                deltas.move(doc, JobStatus.FAILED)
            changes = jobstate.terminal(
                JobStatus.FAILED, now, "dead-letter", self._result_ttl_s, error=error, **items
            )
            transaction.update(ref, {**changes, "dead_letters": dead_letters})
            deltas.write(transaction, self._client, now)
            return "failed"

        outcome: str = run_transaction(
            self._client, _fail, unavailable=StoreUnavailable, what=f"{kind} settle"
        )
        return outcome


class Requeue:
    """Publishes a job's or chunk's message again, to its task's topic of its kind."""

    def __init__(self, publisher: Any, topics: Topics):
        self._publisher = publisher
        self._topics = topics

    def __call__(self, message: JobMessage | ChunkMessage) -> None:
        data, attributes = encode(message)
        topic = self._topics.of(message)
        with failing_as(RequeueFailed, "requeue publish"):
            self._publisher.publish(topic, data, **attributes).result(timeout=FIRESTORE_TIMEOUT_S)


def handle(data: dict[str, Any], store: DeadLetterStore, requeue: Requeue) -> str:
    """Process one dead-lettered Pub/Sub message (the CloudEvent's ``data``).

    A requeue is published after the commit that counted it; if the publish fails the event
    fails, Pub/Sub redelivers it, and the next try counts again (towards ``MAX_DEAD_LETTERS``)."""
    envelope = data.get("message") or {}
    attributes = dict(envelope.get("attributes") or {})
    try:
        raw = base64.b64decode(envelope.get("data") or "", validate=True)
        message = parse(raw, attributes)
    except UnknownMessage as exc:
        # Acked, not failed (module docstring): logged whole, so nothing about it is lost.
        logger.error(
            "dead letter %s of a kind this release cannot read dropped: %s",
            envelope.get("messageId"),
            exc,
            extra={"attributes": attributes, "data": envelope.get("data")},
        )
        return "unknown kind"
    except (ValueError, binascii.Error) as exc:
        logger.error("unreadable dead letter %s dropped: %s", envelope.get("messageId"), exc)
        return "unreadable"
    if isinstance(message, ChunkMessage):
        context = {"batch_id": message.batch_id, "chunk_id": message.chunk_id}
        name = f"chunk {message.batch_id}/{message.chunk_id}"
    else:
        context = {"job_id": message.job_id}
        name = f"job {message.job_id}"
    with log_context(**context, task=message.task, tenant=message.tenant):
        outcome = store.settle(message, attributes.get(DELIVERY_COUNT_ATTRIBUTE))
        if outcome == REQUEUE:
            try:
                requeue(message)
            except UnknownTask:
                # No release of this catalogue can run it; retrying would not change that.
                logger.error("dead letter of a task with no topic dropped", exc_info=True)
                return "unknown task"
        logger.info("dead letter: %s", outcome, extra={"outcome": outcome})
        if outcome == HELD:
            raise LiveAttempt(f"{name} is held by a live attempt; retry later")
        return outcome


@functools.cache
def _services() -> tuple[DeadLetterStore, Requeue]:
    # Read once, on the first event: the function has no app factory to do it in.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    env = os.environ
    configure_logging(env.get("LOG_LEVEL", "INFO"))
    project = project_from(env)
    store = DeadLetterStore(
        firestore.Client(project=project),
        env.get("JOBS_COLLECTION") or "jobs",
        result_ttl_from_env(env),
        int(env.get("WORKER_MAX_ATTEMPTS") or MAX_ATTEMPTS),
        env.get("BATCHES_COLLECTION") or "batches",
    )
    publisher = pubsub_v1.PublisherClient()
    return store, Requeue(publisher, Topics(project, env.get("JOBS_TOPIC") or DEFAULT_TOPIC))


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    try:
        handle(event.data or {}, *_services())
    except (StoreUnavailable, RequeueFailed) as exc:
        logger.warning("%s; the event will be redelivered", exc)
        raise
