"""Redrive: an operator re-queues, in bulk, single jobs that failed for a reason now fixed (a model
repaired after the dead-letter path gave up on its jobs).

    python -m reconciler redrive --task embed --since 2026-12-06T00:00:00Z
        [--error attempts_exhausted] [--until TIME] [--tenant T] [--limit N] [--dry-run]

Which jobs: ``failed`` (their ``updated_at``, the time they failed, in ``[since, until)``), of the
task, with one of the error codes (default ``attempts_exhausted``: what the dead-letter path
writes), optionally of one tenant, never an item of a batch (``POST /v1/batches/ID/retry`` re-runs
those) and never one redriven before.

Each is redriven as ``POST /v1/jobs/ID/retry`` would: a new job with the same input, metadata and
webhook whose ``retry_of`` names the failed one, which stays ``failed`` and gains ``redriven_to``
(the new job's id). The new job and the mark are written in one transaction that first checks the
mark, so a second run, or two operators at once, redrive each job once: idempotent. The new job is
then published; a publish that fails leaves it ``queued`` for the reconciler's sweep, which
publishes it again (nothing is lost). Redrives are an operator's act: they bypass the tenants'
caps on jobs in flight, though each new job is counted in flight like any other.

Each job is printed as a JSON line (``{"job_id", "tenant", "new_job_id"}``, or ``"would_redrive":
true`` with ``--dry-run``), then a summary line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.base_query import FieldFilter

from common.googleapi import run_transaction, translated
from common.publishing import publish_one
from reconciler.settings import ReconcilerSettings
from reconciler.sweep import TIMEOUT_S, PublishFailed, StoreUnavailable
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus, new_job_document, new_job_id
from schemas.messages import INTERACTIVE, JobMessage, Topics

logger = logging.getLogger("reconciler.redrive")

DEFAULT_CODES = ("attempts_exhausted",)
MAX_JOBS = 10_000
"""Most jobs one run redrives (``--limit``): run it again for more."""
PAGE = 500
"""Failed jobs read per query page."""


@dataclass(frozen=True)
class Selection:
    """Which failed jobs a run redrives."""

    task: str
    since: datetime
    until: datetime | None = None
    codes: tuple[str, ...] = DEFAULT_CODES
    tenant: str | None = None
    limit: int = MAX_JOBS

    def matches(self, doc: dict[str, Any]) -> bool:
        error = doc.get("error") or {}
        return (
            doc.get("task") == self.task
            and error.get("code") in self.codes
            and (self.tenant is None or doc.get("tenant") == self.tenant)
            and (self.until is None or doc["updated_at"] < self.until)
            and not doc.get("redriven_to")
            and not doc.get("batch_id")
        )


class Redriver:
    def __init__(
        self,
        settings: ReconcilerSettings,
        client: firestore.Client,
        publisher: pubsub_v1.PublisherClient,
    ):
        self._settings = settings
        self._client = client
        self._jobs = client.collection(settings.jobs_collection)
        self._publisher = publisher
        self._topics = Topics(settings.project, settings.jobs_topic)

    def candidates(self, selection: Selection) -> Iterator[tuple[str, dict[str, Any]]]:
        """The failed jobs ``selection`` picks, oldest failure first, at most its ``limit``.
        The query is on (status, updated_at), an index the sweep already has; the rest is
        filtered here (``error`` is exempt from indexes)."""
        query = (
            self._jobs.where(filter=FieldFilter("status", "==", JobStatus.FAILED.value))
            .where(filter=FieldFilter("updated_at", ">=", selection.since))
            .order_by("updated_at")
            .limit(PAGE)
        )
        found = 0
        last = None
        while found < selection.limit:
            page_query = query if last is None else query.start_after(last)
            with translated(StoreUnavailable, "redrive query"):
                page = list(page_query.stream(timeout=TIMEOUT_S))
            for snapshot in page:
                doc = snapshot.to_dict() or {}
                if selection.matches(doc):
                    yield snapshot.id, doc
                    found += 1
                    if found >= selection.limit:
                        return
            if len(page) < PAGE:
                return
            last = page[-1]

    def run(self, selection: Selection, dry_run: bool) -> Iterator[dict[str, Any]]:
        """Redrive each candidate (or only name it, ``dry_run``); one report line each."""
        for job_id, doc in self.candidates(selection):
            line: dict[str, Any] = {"job_id": job_id, "tenant": doc.get("tenant")}
            if dry_run:
                yield {**line, "would_redrive": True}
                continue
            new_id = self._redrive(job_id)
            if new_id is None:
                continue  # redriven meanwhile (another run), or no longer failed
            yield {**line, "new_job_id": new_id, "published": self._publish(new_id, doc)}

    def _redrive(self, job_id: str) -> str | None:
        """The new job and the old one's ``redriven_to``, in one transaction that first checks
        the old one is still failed and not redriven; the new job's id, or None."""
        old_ref = self._jobs.document(job_id)

        def _write(transaction: firestore.Transaction) -> str | None:
            snapshot = old_ref.get(transaction=transaction)
            old = snapshot.to_dict() if snapshot.exists else None
            if old is None or old.get("status") != JobStatus.FAILED.value:
                return None
            if old.get("redriven_to"):
                return None
            new_id = new_job_id()
            now = datetime.now(UTC)
            doc = new_job_document(
                tenant=old["tenant"],
                task=old["task"],
                input=old["input"],
                metadata=old.get("metadata") or None,
                now=now,
                result_ttl_s=self._settings.result_ttl_s,
                webhook=old.get("webhook"),
            )
            doc["retry_of"] = job_id
            if old.get("priority"):
                doc["priority"] = old["priority"]
            if old.get("cache_key"):
                doc["cache_key"] = old["cache_key"]
            transaction.create(self._jobs.document(new_id), doc)
            transaction.update(old_ref, {"redriven_to": new_id})
            deltas = CountDeltas()
            deltas.created(old["tenant"])
            deltas.write(transaction, self._client, now)
            return new_id

        new_id: str | None = run_transaction(
            self._client, _write, unavailable=StoreUnavailable, what=f"redrive of {job_id}"
        )
        return new_id

    def _publish(self, job_id: str, old: dict[str, Any]) -> bool:
        priority = old.get("priority") or INTERACTIVE
        message = JobMessage(
            job_id=job_id, task=old["task"], tenant=old["tenant"], priority=priority
        )
        try:
            publish_one(self._publisher, self._topics, message, TIMEOUT_S, PublishFailed)
        except PublishFailed as exc:
            # Queued and unpublished: the sweep publishes it once it is stale.
            logger.warning("%s; the sweep will publish it", exc, extra={"job_id": job_id})
            return False
        return True


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with its offset (argparse type)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no offset (e.g. 2026-12-06T00:00:00Z)")
    return value
