"""The job state machine: which writer may move a job where, as pure functions over its document.

    queued ──claim──▶ running ──finish──▶ succeeded
      ▲                │  │   ──fail────▶ failed        (permanent error, timeout, deadline)
      └──release───────┘  └── cancel ───▶ cancelled     (ingress; also from queued)
                          └── dead letter ▶ failed      (attempts exhausted)

Every writer (the ingress, the worker, the dead-letter function, the reconciler) runs these in a
Firestore transaction or under an update-time precondition, so the rules hold whoever writes:

- Terminal states never change. Every terminal write increments ``terminal_writes`` in the same
  commit, so a job whose counter is not exactly 1 was finished twice — the chaos tests check it.
- A claim starts a new *attempt*: ``attempts + 1`` and a fresh random ``attempt_token``, plus a
  lease (``lease_expires_at``) the worker renews while it works. A claim is refused while another
  attempt's lease is live, so a duplicate delivery does not start the job twice.
- Only the attempt holding the current token may finish, fail or release the job: a zombie attempt
  (its worker lost the lease but kept running) cannot overwrite a newer attempt or a terminal state.
- A job past its ``deadline`` is never claimed: the claim that finds it so ends it ``failed``
  (``deadline_exceeded``) instead (``past_deadline``, ``deadline_failed``).

Fields kept in the document beside the resource's own (never shown by the API): ``tenant``,
``attempt_token``, ``lease_expires_at``, ``terminal_writes``, ``finished_by``, ``last_error``,
``expire_at`` (Firestore TTL), ``dispatch_count`` (reconciler re-publishes), ``worker`` (the
process that claimed the last attempt), ``batch_size`` (how many jobs shared its forward pass),
``events`` (the job's event log, below).

Every status change appends one record to ``events`` in the same commit as the change (an
``ArrayUnion``, so no writer needs to read the log first): ``{"status", "at", "n"}`` (``n`` a
random nonce, so two records are never equal and merged) plus ``attempts`` on a claim. Because
every change is fenced, the records are in the order the changes happened, and a record's place
in the array (1-based) is its event id: what ``GET /v1/jobs/ID/events`` sends as ``id:`` and
takes back in ``Last-Event-ID``. The log lives in the job's own document, so a replay needs no
extra read and a listener's snapshot always carries every event, even when it coalesces several
changes into one snapshot.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud.firestore import ArrayUnion, Increment

from schemas.jobs import DEADLINE_EXCEEDED, TERMINAL_STATUSES, JobStatus


@dataclass(frozen=True)
class Claimed:
    """A new attempt: the fields to write and the token that fences it."""

    attempt: int
    token: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """No claim: ``reason`` says why; ``busy_until`` is set when a live attempt holds the job."""

    reason: str
    busy_until: datetime | None = None


def logged(status: JobStatus, now: datetime, **fields: Any) -> ArrayUnion:
    """The transform that appends one status change to the job's event log.

    ``ArrayUnion`` skips an element equal to one already present, and two records may share a
    status and a microsecond (clocks differ between hosts): a random ``n`` keeps each distinct."""
    return ArrayUnion([{"status": status.value, "at": now, "n": secrets.token_hex(4), **fields}])


def applied(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The document as it reads once ``changes`` commit, their transforms resolved locally."""
    out = dict(doc)
    for field, value in changes.items():
        if isinstance(value, Increment):
            out[field] = (out.get(field) or 0) + value.value
        elif isinstance(value, ArrayUnion):
            present = list(out.get(field) or [])
            out[field] = present + [item for item in value.values if item not in present]
        else:
            out[field] = value
    return out


def status_of(doc: dict[str, Any]) -> JobStatus | None:
    try:
        return JobStatus(str(doc.get("status")))
    except ValueError:
        return None


def is_terminal(doc: dict[str, Any]) -> bool:
    return status_of(doc) in TERMINAL_STATUSES


def claim(
    doc: dict[str, Any] | None, tenant: str, now: datetime, lease_s: float, worker: str = ""
) -> Claimed | Refused:
    """Start a new attempt of a queued job, or of a running one whose lease has lapsed."""
    if doc is None:
        return Refused("missing")
    if doc.get("tenant") != tenant:
        return Refused("tenant mismatch")
    status = status_of(doc)
    if status is None:
        return Refused(f"unknown status {doc.get('status')!r}")
    if status in TERMINAL_STATUSES:
        return Refused(f"already {status.value}")
    lease = doc.get("lease_expires_at")
    if status is JobStatus.RUNNING and lease is not None and lease > now:
        return Refused("held by a live attempt", busy_until=lease)
    attempt = int(doc.get("attempts", 0)) + 1
    token = secrets.token_hex(8)
    changes: dict[str, Any] = {
        "status": JobStatus.RUNNING.value,
        "attempts": attempt,
        "attempt_token": token,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "updated_at": now,
        "events": logged(JobStatus.RUNNING, now, attempts=attempt),
    }
    if worker:
        changes["worker"] = worker  # which process runs it: for operators, and the tests
    if not doc.get("started_at"):
        changes["started_at"] = now
    return Claimed(attempt, token, changes)


def past_deadline(doc: dict[str, Any], now: datetime) -> bool:
    """Whether the job has a ``deadline`` and it has passed."""
    deadline = doc.get("deadline")
    return deadline is not None and deadline <= now


DEADLINE_ERROR = {
    "code": DEADLINE_EXCEEDED,
    "message": "the deadline passed before it finished",
}
"""The error of a job, or a batch's item, ended by its deadline."""


def deadline_failed(now: datetime, by: str, result_ttl_s: float) -> dict[str, Any]:
    """The changes that end a job whose deadline passed (from queued, or from running)."""
    return terminal(JobStatus.FAILED, now, by, result_ttl_s, error=dict(DEADLINE_ERROR))


def owned_by(doc: dict[str, Any] | None, token: str) -> bool:
    """Whether the attempt holding ``token`` still owns the (running) job."""
    return (
        doc is not None
        and doc.get("status") == JobStatus.RUNNING.value
        and doc.get("attempt_token") == token
    )


def terminal(
    status: JobStatus, now: datetime, by: str, result_ttl_s: float, **fields: Any
) -> dict[str, Any]:
    """The changes that end a job; ``by`` names the writer (an attempt token, ``cancel``, ...)."""
    assert status in TERMINAL_STATUSES
    return {
        **fields,
        "status": status.value,
        "updated_at": now,
        "finished_at": now,
        "finished_by": by,
        "terminal_writes": Increment(1),
        "events": logged(status, now),
        "lease_expires_at": None,
        # Kept RESULT_TTL after it finished, then Firestore's TTL policy deletes it.
        "expire_at": now + timedelta(seconds=result_ttl_s),
    }


def from_cache(
    doc: dict[str, Any], result: dict[str, Any], now: datetime, result_ttl_s: float
) -> dict[str, Any]:
    """A new job document (``schemas.jobs.new_job_document``) answered from the result cache:
    created ``succeeded``, with its one status change logged, never queued, never counted in
    flight. Plain values, no transforms: it is written by a create."""
    return {
        **doc,
        "status": JobStatus.SUCCEEDED.value,
        "result": result,
        "cache_hit": True,
        "started_at": now,
        "finished_at": now,
        "updated_at": now,
        "finished_by": "cache",
        "terminal_writes": 1,
        "in_flight_counted": False,
        "events": [{"status": JobStatus.SUCCEEDED.value, "at": now, "n": secrets.token_hex(4)}],
        "expire_at": now + timedelta(seconds=result_ttl_s),
    }


def released(
    now: datetime, last_error: dict[str, Any] | None, started: bool = True
) -> dict[str, Any]:
    """Back to ``queued`` for a later delivery (transient failure, shutdown): the lease ends now.

    An attempt released before its model call (``started=False``: claimed with a batch that a
    shutdown never let run) gives its attempt back, so it does not count towards the maximum."""
    changes: dict[str, Any] = {
        "status": JobStatus.QUEUED.value,
        "attempt_token": None,
        "lease_expires_at": None,
        "updated_at": now,
        "events": logged(JobStatus.QUEUED, now),
    }
    if not started:
        changes["attempts"] = Increment(-1)
    if last_error is not None:
        changes["last_error"] = last_error
    return changes


def renewed(now: datetime, lease_s: float) -> dict[str, Any]:
    return {"lease_expires_at": now + timedelta(seconds=lease_s)}
