"""A job's ``timings``: derived from its timestamps and what the worker recorded, absent until
known, and only on the event that shows the job ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import jobstate
from schemas.jobevents import job_events
from schemas.jobs import Job, JobStatus, JobTimings, new_job_document

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_timings_follow_the_timestamps() -> None:
    doc = new_job_document(tenant="t", task="entities", input={"text": "x"}, metadata=None, now=T0)
    assert JobTimings.from_document(doc) is None  # queued: nothing known yet
    claim = jobstate.claim(doc, "t", T0 + timedelta(milliseconds=250), 60)
    assert isinstance(claim, jobstate.Claimed)
    doc = jobstate.applied(doc, claim.changes)
    assert JobTimings.from_document(doc) == JobTimings(queued_ms=250.0)
    end = T0 + timedelta(milliseconds=1250)
    doc = jobstate.applied(
        doc,
        {
            **jobstate.terminal(JobStatus.SUCCEEDED, end, "tok", 3600),
            "result": {"entities": []},
            "inference_ms": 812.5,
            "batch_size": 7,
        },
    )
    job = Job.from_document("0" * 32, doc).to_json_dict()
    assert job["timings"] == {
        "queued_ms": 250.0,
        "running_ms": 1000.0,
        "inference_ms": 812.5,
        "batch_size": 7,
    }
    events = job_events("0" * 32, doc)
    assert [("timings" in e.job) for e in events] == [False, False, True]
