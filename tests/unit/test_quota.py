"""schemas/quota.py and the tenant deltas of ``CountDeltas``: every kind of transition moves a
tenant's jobs in flight by the right amount, in the same commit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.batches import CountDeltas
from schemas.jobs import new_job_document
from schemas.quota import COUNTED_FLAG as COUNTED
from schemas.quota import in_flight_delta, in_flight_of, shard_paths, tenant_doc_id
from tests.support.fakes import NOW, written


def tenant_total(deltas: CountDeltas) -> dict[str, int]:
    totals: dict[str, int] = {}
    for path, data in written(deltas, merge_only=True):
        if path.startswith("tenants/"):
            tenant = path.split("/")[1]
            totals[tenant] = totals.get(tenant, 0) + data["in_flight"].value
            assert data["at"] == NOW
    return totals


@pytest.mark.parametrize(
    ("before", "after", "delta"),
    [
        ("queued", "running", 0),  # a claim
        ("running", "queued", 0),  # a release
        ("running", "running", 0),  # a lapsed attempt taken over
        ("queued", "succeeded", -1),
        ("running", "succeeded", -1),
        ("running", "failed", -1),
        ("queued", "failed", -1),  # a failed publish, the reconciler, the dead-letter function
        ("queued", "cancelled", -1),
        ("running", "cancelled", -1),
        ("failed", "queued", 1),  # a batch retry: the item's new job
    ],
)
def test_each_transition_moves_the_tenant_count(before: str, after: str, delta: int) -> None:
    deltas = CountDeltas()

    deltas.move({"tenant": "acme", "status": before, COUNTED: True}, after)

    assert in_flight_delta(before, after) == delta
    assert tenant_total(deltas) == ({"acme": delta} if delta else {})
    assert bool(deltas) is bool(delta)


def test_creation_counts_each_new_job() -> None:
    deltas = CountDeltas()

    deltas.created("acme")
    deltas.created("acme", 499)  # a batch chunk

    assert in_flight_delta(None, "queued") == 1
    assert tenant_total(deltas) == {"acme": 500}


def test_batch_items_move_their_batch_and_their_tenant_in_one_commit() -> None:
    deltas = CountDeltas()
    item = {"tenant": "acme", "batch_path": "batches/b1", "status": "running", COUNTED: True}

    deltas.move(item, "succeeded")
    deltas.move({**item, "tenant": "other"}, "failed")

    paths = [path.rsplit("/", 1)[0] for path, _ in written(deltas, merge_only=True)]
    assert sorted(paths) == [
        "batches/b1/counters",
        "tenants/acme/counters",
        "tenants/other/counters",
    ]
    assert tenant_total(deltas) == {"acme": -1, "other": -1}


def test_moves_that_cancel_out_write_nothing_and_jobs_without_a_tenant_count_nowhere() -> None:
    deltas = CountDeltas()
    deltas.created("acme")
    deltas.move({"tenant": "acme", "status": "queued", COUNTED: True}, "cancelled")
    deltas.move({"status": "queued"}, "cancelled")  # no tenant (never written so): no count
    deltas.move(None, "cancelled")

    assert tenant_total(deltas) == {}
    assert not deltas


def test_shards_are_summed_and_never_below_zero() -> None:
    assert in_flight_of([{"in_flight": 3}, {"in_flight": -1}, {}]) == 2
    assert in_flight_of([{"in_flight": -4}]) == 0  # jobs from before the counters existed
    assert in_flight_of([]) == 0


def test_tenant_names_firestore_reserves_are_escaped() -> None:
    assert tenant_doc_id("acme") == "acme"
    assert tenant_doc_id(".") == "~."
    assert tenant_doc_id("__x__") == "~__x__"
    assert shard_paths("acme")[3] == ("tenants", "acme", "counters", "3")


def test_a_job_created_before_the_counters_moves_no_count_when_it_ends() -> None:
    deltas = CountDeltas()
    deltas.move({"tenant": "acme", "status": "running"}, "succeeded")  # no in_flight_counted
    assert not deltas
    assert new_job_document(
        tenant="acme", task="embed", input={}, metadata=None, now=datetime.now(UTC)
    )[COUNTED]
