"""Waiting for a job to finish: long polls (``?wait=N``) and ``Prefer: wait=N`` share this.

The wait follows the job through the shared listener (``ingress/jobs/watch.py``), never by
re-reading Firestore in a loop, and holds one of the tenant's ``streams`` slots while it lasts.
"""

from __future__ import annotations

import time
from typing import Any

from flask import g

from ingress.jobs.watch import CLOSED, JobWatcher, WatcherClosed
from ingress.services import services
from schemas.jobstate import is_terminal

REVIVE_CHECK_S = 15.0
"""How often a long poll checks that the job's Listen stream still runs, seconds."""


def wait_until_terminal(
    watcher: JobWatcher, job_id: str, doc: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """The job's document once it is terminal, or as it is when ``timeout_s`` runs out.

    Answers the moment the listener shows a terminal state; shutdown ends the wait early."""
    if is_terminal(doc) or timeout_s <= 0:
        return doc
    try:
        feed = watcher.feed(job_id)
    except WatcherClosed:
        return doc
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            item = feed.get(min(left, REVIVE_CHECK_S))
            if item is CLOSED:
                break
            if item is None:
                watcher.revive(feed)
                continue
            assert isinstance(item, dict)
            doc = item
            if is_terminal(doc):
                break
    finally:
        watcher.release(feed)
    return doc


def long_poll(job_id: str, doc: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """``wait_until_terminal`` for a request that has not waited yet: while it waits it holds
    one of the tenant's ``streams`` slots (429 when none is free). A job already terminal, or
    no time to wait, answers at once and takes no slot."""
    if is_terminal(doc) or timeout_s <= 0:
        return doc
    svc = services()
    with svc.holds.acquire(g.tenant):
        return wait_until_terminal(svc.watcher, job_id, doc, timeout_s)
