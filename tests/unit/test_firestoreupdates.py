"""``common.firestoreupdates`` builds exactly the writes ``WriteBatch.update`` builds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.transforms import DELETE_FIELD, ArrayUnion, Increment

from common.firestoreupdates import Unsupported, set_write, update_write
from schemas import jobstate, resultcache
from schemas.jobs import JobStatus

PATH = "projects/p/databases/(default)/documents/jobs/abc"
NOW = datetime(2026, 12, 5, 15, 0, 0, 123456, tzinfo=UTC)
UPDATED = DatetimeWithNanoseconds(2026, 12, 5, 15, 0, 1, nanosecond=123456789, tzinfo=UTC)


def library(changes: dict[str, Any], last_update_time: Any = None) -> Any:
    option = None
    if last_update_time is not None:
        option = _helpers.LastUpdateOption(last_update_time)
    (write,) = _helpers.pbs_for_update(PATH, changes, option)
    return type(write).pb(write)


def ours(changes: dict[str, Any], last_update_time: Any = None) -> Any:
    # Parsed back from its bytes: what goes on the wire is what is compared (maps unordered).
    write = update_write(PATH, changes, last_update_time)
    return type(write).FromString(write.SerializeToString())


CLAIM = jobstate.claim(
    {"status": "queued", "tenant": "t", "attempts": 1}, "t", NOW, 60.0, "worker-1"
)
assert isinstance(CLAIM, jobstate.Claimed)
CASES = {
    "claim": CLAIM.changes,
    "succeeded": jobstate.terminal(
        JobStatus.SUCCEEDED,
        NOW,
        "token",
        3600.0,
        result={"model": "m", "dimensions": 384, "embeddings_f32": b"\x00\x01" * 8},
        batch_size=32,
        inference_ms=12.5,
    ),
    "failed": jobstate.terminal(
        JobStatus.FAILED, NOW, "token", 3600.0, error={"code": "x", "message": "y"}
    ),
    "released": jobstate.released(NOW, {"code": "transient", "message": "m", "attempt": 2}, True),
    "values": {
        "none": None,
        "flag": True,
        "count": -7,
        "ratio": 0.25,
        "empty_map": {},
        "empty_list": [],
        "nested": {"a": [1, "b", {"c": NOW + timedelta(days=1)}], "é": "ü"},
        "more": Increment(2.5),
        "log": ArrayUnion([{"at": NOW}, "x", 3]),
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("when", [None, UPDATED, NOW], ids=["exists", "nanos", "datetime"])
def test_the_write_is_the_clients_own(name: str, when: Any) -> None:
    assert ours(CASES[name], when) == library(CASES[name], when)


@pytest.mark.parametrize(
    "changes",
    [{"a.b": 1}, {"with space": 1}, {"gone": DELETE_FIELD}, {"set": {1, 2}}, {"m": {1: "x"}}],
)
def test_what_it_does_not_encode_it_refuses(changes: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        update_write(PATH, changes)


def test_a_set_write_is_the_clients_own() -> None:
    entry = resultcache.entry_document(
        tenant="t",
        task="embed",
        identity="all-MiniLM-L6-v2/gt",
        result={"model": "m", "dimensions": 384, "embeddings_f32": b"\x00\x01" * 8},
        now=NOW,
        result_ttl_s=3600.0,
    )
    (expected,) = _helpers.pbs_for_set_no_merge(PATH, entry)
    write = set_write(PATH, entry)
    assert type(write).FromString(write.SerializeToString()) == type(expected).pb(expected)
