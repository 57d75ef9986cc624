"""A job's events, as ``GET /v1/jobs/ID/events`` sends them, read from its stored event log.

The log is the ``events`` array of the job document (see ``schemas/jobstate.py``): one record per
status change, in order. Event 1 is the job's creation (``queued`` at ``created_at``), which is not
stored (documents written before that choice hold it as a first record without a nonce ``n``);
the record at place k of the array is then event k + 1. Each event carries the job as it was
at that change: the current resource with the record's status, time and attempt, and ``result``,
``error`` and ``finished_at`` only on the terminal event (nothing else about a job changes before it
ends). The last event is always the job exactly as it reads now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.jobs import TERMINAL_STATUSES, Job, JobStatus


@dataclass(frozen=True)
class JobEvent:
    id: int
    status: JobStatus
    job: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_sse(self) -> str:
        """The event in ``text/event-stream`` framing (one ``data:`` line: JSON has no newlines)."""
        data = json.dumps(self.job, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.status.value}\ndata: {data}\n\n"


def _records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    records = [r for r in doc.get("events") or [] if isinstance(r, dict) and "status" in r]
    if not records or "n" in records[0]:
        records.insert(0, {"status": JobStatus.QUEUED.value, "at": doc.get("created_at")})
    # A document written before the log existed, or whose log lost its last record to a writer
    # that does not keep one, still ends with its current state.
    if not records or records[-1].get("status") != doc.get("status"):
        records.append({"status": doc["status"], "at": doc.get("updated_at")})
    return records


def job_events(job_id: str, doc: dict[str, Any], after: int = 0) -> list[JobEvent]:
    """Every event of the job with an id above ``after``, oldest first."""
    records = _records(doc)
    if after >= len(records):
        return []
    current = Job.from_document(job_id, doc)
    events = []
    attempts = 0
    started_at: datetime | None = None
    for seq, record in enumerate(records, start=1):
        status = JobStatus(record["status"])
        if status is JobStatus.RUNNING:
            attempts = int(record.get("attempts") or attempts + 1)
            started_at = started_at or record.get("at")
        if seq <= after:
            continue
        if seq == len(records):
            job = current
        else:
            job = current.model_copy(
                update={
                    "status": status,
                    "updated_at": record.get("at") or current.updated_at,
                    "attempts": attempts,
                    "started_at": started_at,
                    "finished_at": None,
                    "result": None,
                    "error": None,
                    "timings": None,  # known once the job has ended
                }
            )
        events.append(JobEvent(seq, status, job.to_json_dict()))
    return events


def event_count(doc: dict[str, Any]) -> int:
    """How many events the job has had: the id of its latest."""
    return len(_records(doc))


def latest_event(job_id: str, doc: dict[str, Any]) -> JobEvent:
    """The job's last event: its current state, with the id a client resumes from."""
    return job_events(job_id, doc, after=len(_records(doc)) - 1)[0]
