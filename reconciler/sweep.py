"""One sweep: find jobs that no message will bring to a worker, and re-publish or fail them.

A job can be left without a message when the ingress's publish failed and Firestore was down too
(so the job could not be marked failed), when Pub/Sub lost its messages (an emulator restart; in
production, a message past its 7-day retention), or when a dead-lettered job was held by an
attempt that then died. Firestore knows every job, so a sweep over two queries finds them all:

- ``queued`` and unchanged for ``stale_after_s`` → re-published (again after 2×, 4×, ... that);
  still ``queued`` ``give_up_after_s`` after creation → ``failed`` / ``not_dispatched``.
- ``running`` with a lease that lapsed ``stale_after_s`` ago (its worker died, and no redelivery
  came) → re-published.

A duplicate message is harmless: claims are fenced, and a delivery of a finished or held job does
no work. Both queries need composite indexes in production (``firestore.indexes.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from reconciler.settings import BATCH_LIMIT, ReconcilerSettings
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from schemas.messages import JobMessage

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0


@dataclass
class SweepReport:
    republished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"republished": len(self.republished), "failed": len(self.failed)}


class Reconciler:
    def __init__(
        self,
        settings: ReconcilerSettings,
        firestore_client: firestore.Client,
        publisher: pubsub_v1.PublisherClient,
    ):
        self._settings = settings
        self._client = firestore_client
        self._jobs = firestore_client.collection(settings.jobs_collection)
        self._publisher = publisher
        self._topic = publisher.topic_path(settings.project, settings.jobs_topic)

    def sweep(self, now: datetime | None = None) -> SweepReport:
        now = now or datetime.now(UTC)
        stale = now - timedelta(seconds=self._settings.stale_after_s)
        report = SweepReport()
        queued = self._query(JobStatus.QUEUED, "updated_at", stale)
        running = self._query(JobStatus.RUNNING, "lease_expires_at", stale)
        for snapshot in [*queued, *running]:
            doc = snapshot.to_dict() or {}
            try:
                self._reconcile(snapshot, doc, now, report)
            except gexc.GoogleAPICallError as exc:
                logger.warning("could not reconcile a job: %s", exc, extra={"job_id": snapshot.id})
        if report.republished or report.failed:
            logger.info("sweep done", extra=report.as_dict())
        return report

    def _query(self, status: JobStatus, field_name: str, before: datetime) -> list[Any]:
        query = (
            self._jobs.where(filter=FieldFilter("status", "==", status.value))
            .where(filter=FieldFilter(field_name, "<", before))
            .limit(BATCH_LIMIT)
        )
        return list(query.stream(timeout=TIMEOUT_S))

    def _reconcile(self, snapshot: Any, doc: dict[str, Any], now: datetime, report: Any) -> None:
        job_id = snapshot.id
        created = doc.get("created_at") or now
        if doc.get("status") == JobStatus.QUEUED.value and now - created > timedelta(
            seconds=self._settings.give_up_after_s
        ):
            if self._give_up(job_id, doc, snapshot.update_time, now):
                report.failed.append(job_id)
            return
        count = int(doc.get("dispatch_count") or 0)
        last = doc.get("dispatched_at")
        wait = timedelta(seconds=self._settings.stale_after_s * 2**count)
        if last is not None and now - last < wait:
            return
        message = JobMessage(job_id=job_id, task=doc["task"], tenant=doc["tenant"])
        data, attributes = message.to_pubsub()
        self._publisher.publish(self._topic, data, **attributes).result(timeout=TIMEOUT_S)
        # No precondition: a worker may claim the job meanwhile, and these two fields are the
        # reconciler's own; losing a count to a race only re-publishes once more.
        snapshot.reference.update(
            {"dispatched_at": now, "dispatch_count": firestore.Increment(1)}, timeout=TIMEOUT_S
        )
        logger.warning(
            "re-published a %s job no message was carrying",
            doc.get("status"),
            extra={"job_id": job_id, "dispatch_count": count + 1},
        )
        report.republished.append(job_id)

    def _give_up(
        self, job_id: str, doc: dict[str, Any], update_time: datetime, now: datetime
    ) -> bool:
        error = {
            "code": "not_dispatched",
            "message": "the job could not be handed to a worker; submit it again",
        }
        writes = self._client.batch()
        writes.update(
            self._jobs.document(job_id),
            jobstate.terminal(
                JobStatus.FAILED, now, "reconciler", self._settings.result_ttl_s, error=error
            ),
            option=self._client.write_option(last_update_time=update_time),
        )
        deltas = CountDeltas()
        deltas.move(doc, JobStatus.FAILED)  # an item of a batch: counted in the same commit
        deltas.write(writes, self._client, now)
        try:
            writes.commit(timeout=TIMEOUT_S)
        except gexc.FailedPrecondition:
            return False  # it moved meanwhile (claimed, cancelled): leave it
        logger.warning("gave up on a job that stayed queued", extra={"job_id": job_id})
        return True
