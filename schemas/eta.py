"""Estimates of when work will be done (docs/scheduling.md#estimates), from the drain rates the
workers report (``worker/rates.py``): pure functions, so the ingress and the tests compute the
same thing.

- A **running batch** shows ``progress: {"items_per_s", "eta_s"}``. Once it has finished at least
  ``MIN_OWN_ITEMS`` items, its rate is its own: finished items over the time since it was created,
  which already reflects its share of the pool against other batches and jobs. Before that, the
  pool's rate for its task (the sum of the live workers' chunk rates). ``eta_s`` is its items not
  yet ended over that rate.
- A **queued job** shows ``queue: {"position_estimate", "eta_s"}``: the queued jobs of its task
  created before it, plus one, and that over the pool's job rate for the task.

Both are estimates: a new batch shares the pool with whatever else arrives, and the pool's rate
is the workers' speed when busy, so an estimate made before work starts errs early when the pool
is shared. bench/fairness.py and tests/integration/test_eta.py measure how far off they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

RATES_COLLECTION = "worker_rates"
"""One document per worker: ``{"tasks": {task: {"jobs_per_s", "chunk_items_per_s"}}, "at"}``."""
STALE_S = 60.0
"""A worker's report older than this is not counted (the worker is gone, or stuck)."""
MIN_OWN_ITEMS = 64
"""Items a batch must have finished before its own rate is trusted over the pool's."""


def pool_rates(reports: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, dict[str, float]]:
    """Each task's rates summed over the workers whose report is fresh."""
    pool: dict[str, dict[str, float]] = {}
    for report in reports:
        at = report.get("at")
        if at is None or now - at > timedelta(seconds=STALE_S):
            continue
        for task, rates in (report.get("tasks") or {}).items():
            totals = pool.setdefault(task, {})
            for kind, rate in rates.items():
                totals[kind] = totals.get(kind, 0.0) + float(rate)
    return pool


def batch_progress(
    finished: int, remaining: int, created_at: datetime, now: datetime, pool_rate: float | None
) -> dict[str, float] | None:
    """A running batch's ``progress``; None when nothing remains or no rate is known."""
    if remaining <= 0:
        return None
    elapsed = (now - created_at).total_seconds()
    rate = finished / elapsed if finished >= MIN_OWN_ITEMS and elapsed > 0 else pool_rate
    if not rate:
        return None
    return {"items_per_s": round(rate, 1), "eta_s": round(remaining / rate, 1)}


def queue_estimate(position: int, jobs_per_s: float | None) -> dict[str, float]:
    """A queued job's ``queue``: its place, and when it should start, if the rate is known."""
    estimate: dict[str, float] = {"position_estimate": position}
    if jobs_per_s:
        estimate["eta_s"] = round(position / jobs_per_s, 1)
    return estimate
