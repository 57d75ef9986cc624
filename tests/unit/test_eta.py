"""schemas/eta.py: the pool's rates from fresh reports, a batch's progress, a job's queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import eta

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_the_pool_sums_fresh_reports_only() -> None:
    reports = [
        {"at": NOW, "tasks": {"embed": {"jobs_per_s": 10, "chunk_items_per_s": 400}}},
        {"at": NOW - timedelta(seconds=5), "tasks": {"embed": {"chunk_items_per_s": 100}}},
        {"at": NOW - timedelta(seconds=eta.STALE_S + 1), "tasks": {"embed": {"jobs_per_s": 99}}},
        {"tasks": {"embed": {"jobs_per_s": 99}}},
    ]
    assert eta.pool_rates(reports, NOW) == {"embed": {"jobs_per_s": 10, "chunk_items_per_s": 500}}


def test_a_batch_uses_the_pool_rate_until_it_has_its_own() -> None:
    created = NOW - timedelta(seconds=10)
    assert eta.batch_progress(0, 1000, created, NOW, 500.0) == {"items_per_s": 500.0, "eta_s": 2.0}
    own = eta.batch_progress(200, 800, created, NOW, 500.0)
    assert own == {"items_per_s": 20.0, "eta_s": 40.0}  # shared with others: its own pace
    assert eta.batch_progress(0, 1000, created, NOW, None) is None
    assert eta.batch_progress(1000, 0, created, NOW, 500.0) is None


def test_a_queued_job_has_a_place_and_an_eta_when_the_rate_is_known() -> None:
    assert eta.queue_estimate(30, 10.0) == {"position_estimate": 30, "eta_s": 3.0}
    assert eta.queue_estimate(30, None) == {"position_estimate": 30}
