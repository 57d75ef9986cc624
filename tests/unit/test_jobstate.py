"""schemas/jobstate.py: who may move a job where, decided on the document alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import jobstate
from schemas.jobs import JobStatus, new_job_document, parse_duration

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def queued() -> dict[str, object]:
    return new_job_document(tenant="t", task="embed", input={}, metadata=None, now=NOW)


def test_a_claim_starts_a_new_attempt_with_a_fresh_token_and_a_lease() -> None:
    first = jobstate.claim(queued(), "t", NOW, lease_s=20)
    second = jobstate.claim(queued(), "t", NOW, lease_s=20)
    assert isinstance(first, jobstate.Claimed) and isinstance(second, jobstate.Claimed)
    assert first.attempt == 1 and first.token != second.token
    assert first.changes["status"] == "running"
    assert first.changes["lease_expires_at"] == NOW + timedelta(seconds=20)
    assert first.changes["started_at"] == NOW


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_terminal_job_is_never_claimed(status: str) -> None:
    refused = jobstate.claim({**queued(), "status": status}, "t", NOW, 20)
    assert refused == jobstate.Refused(f"already {status}")


def test_a_live_lease_refuses_a_second_attempt_until_it_lapses() -> None:
    lease = NOW + timedelta(seconds=5)
    running = {**queued(), "status": "running", "attempts": 1, "lease_expires_at": lease}
    running["started_at"] = NOW
    assert jobstate.claim(running, "t", NOW, 20) == jobstate.Refused(
        "held by a live attempt", busy_until=lease
    )
    later = jobstate.claim(running, "t", NOW + timedelta(seconds=6), 20)
    assert isinstance(later, jobstate.Claimed) and later.attempt == 2
    assert "started_at" not in later.changes  # the first start stays


def test_missing_foreign_and_corrupt_documents_are_refused() -> None:
    assert jobstate.claim(None, "t", NOW, 20) == jobstate.Refused("missing")
    assert jobstate.claim(queued(), "other", NOW, 20) == jobstate.Refused("tenant mismatch")
    assert "unknown status" in jobstate.claim({**queued(), "status": "?"}, "t", NOW, 20).reason  # type: ignore[union-attr]


def test_only_the_current_token_owns_a_running_job() -> None:
    doc = {**queued(), "status": "running", "attempt_token": "abc"}
    assert jobstate.owned_by(doc, "abc")
    assert not jobstate.owned_by(doc, "old")
    assert not jobstate.owned_by({**doc, "status": "cancelled"}, "abc")
    assert not jobstate.owned_by(None, "abc")


def test_a_terminal_write_counts_itself_and_sets_the_ttl() -> None:
    changes = jobstate.terminal(JobStatus.SUCCEEDED, NOW, "tok", 3600, result={"x": 1})
    assert changes["status"] == "succeeded" and changes["finished_by"] == "tok"
    assert changes["expire_at"] == NOW + timedelta(hours=1)
    assert changes["lease_expires_at"] is None and changes["result"] == {"x": 1}
    assert type(changes["terminal_writes"]).__name__ == "Increment"
    with pytest.raises(AssertionError):
        jobstate.terminal(JobStatus.RUNNING, NOW, "tok", 3600)


def test_a_release_returns_the_job_to_the_queue_with_its_error() -> None:
    changes = jobstate.released(NOW, {"code": "transient", "message": "busy"})
    assert changes["status"] == "queued" and changes["attempt_token"] is None
    assert changes["last_error"]["message"] == "busy"


def test_a_new_job_expires_after_the_result_ttl() -> None:
    assert queued()["expire_at"] == NOW + timedelta(days=7)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1", "0", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_deadline_passes_at_its_instant_and_a_job_without_one_has_none() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert jobstate.past_deadline({"deadline": now}, now)
    assert not jobstate.past_deadline({"deadline": now + timedelta(microseconds=1)}, now)
    assert not jobstate.past_deadline({}, now)


def test_a_job_past_its_deadline_ends_failed_deadline_exceeded() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    changes = jobstate.deadline_failed(now, "deadline", 3600.0)
    assert changes["status"] == JobStatus.FAILED.value
    assert changes["error"]["code"] == "deadline_exceeded"
    assert changes["finished_at"] == now and changes["lease_expires_at"] is None
