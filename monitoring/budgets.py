"""How old a task's oldest unacked message may grow before its alert fires, derived from the
settings that bound a healthy job's life, so a new task limit moves its alert with it.

A message stays unacked for its whole life in the worker, retries included: a transient failure
releases the job and sets the message's ack deadline to the backoff (worker/pipeline/settler.py), so
Pub/Sub redelivers it then and ``oldest_unacked_message_age`` keeps counting. The slowest job that
is still healthy therefore runs ``MAX_ATTEMPTS`` attempts, each up to the task's time limit, with
the worker's backoff between them (10 s doubling: 10 + 20 + 40 + 80 s before the fifth), after
waiting in the queue for a free worker. Older than that, no worker is taking the task's messages
(none is ready, all are stuck) or the pool cannot keep up even at its largest: either way an
operator must look. A job that fails every attempt is dead-lettered and alerted on separately.
"""

from __future__ import annotations

import math

from schemas.tasks import TASKS, get_task
from worker.settings import MAX_ATTEMPTS, RETRY_MAX_BACKOFF_S, RETRY_MIN_BACKOFF_S

QUEUE_ALLOWANCE_S = 120
"""Seconds a message may wait for a worker on top of its own attempts, seconds: Pub/Sub's
backlog metric arrives a minute or two late, and the pool's autoscaler reacts to it, so a burst
takes that long to meet new pods."""


def backoffs_s(attempts: int = MAX_ATTEMPTS) -> float:
    """Total backoff between ``attempts`` deliveries, seconds (``Processor._backoff_s``)."""
    return sum(
        min(RETRY_MIN_BACKOFF_S * float(2**delivery), RETRY_MAX_BACKOFF_S, 600.0)
        for delivery in range(attempts - 1)
    )


def backlog_age_budget_s(task: str) -> int:
    """The age of ``task``'s oldest unacked message past which its alert fires, seconds, rounded
    up to whole minutes (Cloud Monitoring samples the metric once a minute)."""
    raw = MAX_ATTEMPTS * get_task(task).timeout_s + backoffs_s() + QUEUE_ALLOWANCE_S
    return int(math.ceil(raw / 60) * 60)


def budgets() -> dict[str, int]:
    """Every task's budget, seconds, in the catalogue's order."""
    return {task: backlog_age_budget_s(task) for task in TASKS}
