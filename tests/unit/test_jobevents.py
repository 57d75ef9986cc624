"""A job's events rendered from its stored log: ids, order, and what each event's job shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import jobstate
from schemas.jobevents import job_events, latest_event
from schemas.jobs import JobStatus, new_job_document

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
JOB_ID = "0" * 32


def history() -> dict[str, Any]:
    """queued → running (attempt 1) → queued (released) → running (attempt 2) → succeeded."""
    doc = new_job_document(tenant="t", task="entities", input={"text": "x"}, metadata=None, now=T0)
    for minutes, step in enumerate(["claim", "release", "claim", "finish"], start=1):
        now = T0 + timedelta(minutes=minutes)
        if step == "claim":
            decision = jobstate.claim(doc, "t", now, 60)
            assert isinstance(decision, jobstate.Claimed)
            changes = decision.changes
        elif step == "release":
            changes = jobstate.released(now, None)
        else:
            changes = {
                **jobstate.terminal(JobStatus.SUCCEEDED, now, "tok", 3600),
                "result": {"entities": []},
            }
        doc = jobstate.applied(doc, changes)
    return doc


def test_every_status_change_is_one_event_with_its_place_as_id() -> None:
    events = job_events(JOB_ID, history())
    assert [(e.id, e.status.value) for e in events] == [
        (1, "queued"),
        (2, "running"),
        (3, "queued"),
        (4, "running"),
        (5, "succeeded"),
    ]
    assert [e.terminal for e in events] == [False, False, False, False, True]


def test_each_event_shows_the_job_as_it_was_then() -> None:
    events = job_events(JOB_ID, history())
    first, running, _, second_run, done = (e.job for e in events)
    assert first["attempts"] == 0 and "started_at" not in first and "result" not in first
    assert running["attempts"] == 1 and running["updated_at"].startswith("2026-11-27T12:01")
    assert second_run["attempts"] == 2 and "finished_at" not in second_run
    assert done["result"] == {"entities": []} and done["finished_at"].startswith("2026-11-27T12:04")


def test_after_skips_what_the_client_has_and_latest_is_the_current_state() -> None:
    doc = history()
    assert [e.id for e in job_events(JOB_ID, doc, after=3)] == [4, 5]
    assert job_events(JOB_ID, doc, after=5) == [] == job_events(JOB_ID, doc, after=99)
    latest = latest_event(JOB_ID, doc)
    assert (latest.id, latest.status) == (5, JobStatus.SUCCEEDED)


def test_a_document_without_a_log_still_has_its_creation_and_current_state_as_events() -> None:
    doc = history()
    del doc["events"]
    statuses = [(e.id, e.status.value) for e in job_events(JOB_ID, doc)]
    assert statuses == [(1, "queued"), (2, "succeeded")]


def test_a_stored_creation_record_keeps_the_same_ids() -> None:
    # Documents written before the creation event became implicit hold it as a first record
    # without a nonce; their ids must not shift.
    doc = history()
    assert "events" not in new_job_document(
        tenant="t", task="entities", input={"text": "x"}, metadata=None, now=T0
    )
    doc["events"] = [{"status": "queued", "at": T0}, *doc["events"]]
    assert [e.id for e in job_events(JOB_ID, doc)] == [1, 2, 3, 4, 5]
    assert latest_event(JOB_ID, doc).id == 5


def test_sse_framing_is_id_event_and_one_data_line() -> None:
    text = latest_event(JOB_ID, history()).to_sse()
    lines = text.split("\n")
    assert lines[0] == "id: 5" and lines[1] == "event: succeeded"
    assert lines[2].startswith("data: {") and text.endswith("\n\n") and len(lines) == 5
