"""The contract as code, shared by the ingress and the worker.

The models of what crosses a boundary (requests, resources, Pub/Sub messages, stored documents)
and the pure lifecycles behind them: ``jobstate`` for jobs and chunks, ``ledgerstate`` for webhook
deliveries. Everything here is light (pydantic and the Firestore client's value types only) so that
every service, the tests and the CLI can import it without pulling the ML stack. Runtime helpers
(logs, traces, Google API calls, settings) live in ``common/``.

``../shared/CONTRACT.md`` is the prose version of the contract; where the two differ,
that page wins and this package is the bug.
"""

from __future__ import annotations

from schemas.errors import Problem, ProblemItem
from schemas.jobs import (
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    Job,
    JobError,
    JobLinks,
    JobRequest,
    JobStatus,
    new_job_id,
)
from schemas.messages import JobMessage
from schemas.tasks import TASKS, TaskSpec, UnknownTaskError, get_task

__all__ = [
    "JOB_ID_PATTERN",
    "TASKS",
    "TERMINAL_STATUSES",
    "Job",
    "JobError",
    "JobLinks",
    "JobMessage",
    "JobRequest",
    "JobStatus",
    "Problem",
    "ProblemItem",
    "TaskSpec",
    "UnknownTaskError",
    "get_task",
    "new_job_id",
]
