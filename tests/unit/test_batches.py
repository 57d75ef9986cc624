"""Batch counting rules: what each job transition adds to its batch's counters, and how the
counts and the batch's status are read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore import Increment

from schemas.batches import Batch, BatchCounts, BatchStatus, CountDeltas, batch_status, counts_of

NOW = datetime(2026, 11, 27, tzinfo=UTC)
ITEM = {"batch_path": "batches/b1", "status": "queued"}


class Recorder:
    """Collects the writes ``CountDeltas.write`` adds to a commit."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any], bool]] = []

    def set(self, reference: Any, document_data: dict[str, Any], merge: bool = False) -> None:
        self.writes.append((reference, document_data, merge))

    @staticmethod
    def document(*path: str) -> str:
        return "/".join(path)


def increments(data: dict[str, Any]) -> dict[str, int]:
    return {k: v.value for k, v in data.items() if isinstance(v, Increment)}


def test_a_move_adds_one_merged_shard_write_per_batch() -> None:
    deltas = CountDeltas()
    deltas.move(ITEM, "running")
    deltas.move(ITEM, "running")
    deltas.move({"batch_path": "batches/b2", "status": "running"}, "succeeded")
    writer = Recorder()
    deltas.write(writer, writer, NOW)
    assert len(writer.writes) == 2
    by_batch = {ref.rsplit("/", 2)[0]: (data, merge) for ref, data, merge in writer.writes}
    data, merge = by_batch["batches/b1"]
    assert merge and increments(data) == {"queued": -2, "running": 2} and data["at"] == NOW
    assert increments(by_batch["batches/b2"][0]) == {"running": -1, "succeeded": 1}
    shard = int(writer.writes[0][0].rsplit("/", 1)[1])
    assert 0 <= shard < 16 and "/counters/" in writer.writes[0][0]


def test_jobs_outside_batches_and_non_moves_write_nothing() -> None:
    deltas = CountDeltas()
    deltas.move({"status": "queued"}, "running")  # a single job
    deltas.move({"batch_path": "batches/b1", "status": "running"}, "running")  # a takeover
    deltas.move(None, "cancelled")
    writer = Recorder()
    deltas.write(writer, writer, NOW)
    assert not deltas and writer.writes == []


def test_opposite_moves_cancel_out() -> None:
    deltas = CountDeltas()
    deltas.move(ITEM, "running")
    deltas.move({**ITEM, "status": "running"}, "queued")  # released again
    writer = Recorder()
    deltas.write(writer, writer, NOW)
    assert writer.writes == []


def test_counts_are_the_creation_counts_plus_every_shard() -> None:
    doc = {"counts": {"total": 10, "queued": 10}}
    shards = [
        {"queued": -6, "running": 2, "succeeded": 3, "at": NOW},
        {"succeeded": 1, "queued": 0, "at": NOW + timedelta(seconds=1)},
    ]
    counts = counts_of(doc, shards)
    assert counts == BatchCounts(total=10, queued=4, running=2, succeeded=4)
    assert counts.in_flight == 6 and counts.finished == 4


def test_status_follows_the_contract() -> None:
    def status(cancel: bool = False, **counts: int) -> BatchStatus:
        return batch_status(BatchCounts(total=3, **counts), cancel)

    assert status(queued=1, succeeded=2) is BatchStatus.RUNNING
    assert status(running=1, cancelled=2, cancel=True) is BatchStatus.RUNNING
    assert status(succeeded=3) is BatchStatus.SUCCEEDED
    assert status(succeeded=2, failed=1) is BatchStatus.FAILED
    assert status(succeeded=2, cancelled=1, cancel=True) is BatchStatus.CANCELLED
    assert status(succeeded=3, cancel=True) is BatchStatus.CANCELLED  # a cancel was accepted
    # An open batch is open until it is closed, whatever its items do; a cancel closes it.
    assert batch_status(BatchCounts(total=0), False, True) is BatchStatus.OPEN
    assert batch_status(BatchCounts(total=3, succeeded=3), False, True) is BatchStatus.OPEN
    assert batch_status(BatchCounts(total=3, queued=3), True, True) is BatchStatus.RUNNING


def test_each_parts_items_are_counted_from_the_shards() -> None:
    doc = {"task": "embed", "created_at": NOW, "counts": {"total": 0}, "open": True}
    shards = [{"total": 300, "queued": 300, "at": NOW}, {"total": 5, "queued": 4, "succeeded": 1}]
    counts = counts_of(doc, shards)
    assert counts == BatchCounts(total=305, queued=304, succeeded=1)
    assert Batch.from_documents("b" * 32, doc, shards).status is BatchStatus.OPEN
    closed = Batch.from_documents("b" * 32, {**doc, "open": False}, shards)
    assert closed.status is BatchStatus.RUNNING


def test_a_parts_items_are_added_to_the_batch_and_the_tenant() -> None:
    deltas = CountDeltas()
    deltas.added("batches/b1", "acme", 256)
    writer = Recorder()
    deltas.write(writer, writer, NOW)
    batch_writes = [w for w in writer.writes if w[0].startswith("batches/b1/counters/")]
    assert len(batch_writes) == 1
    assert increments(batch_writes[0][1]) == {"total": 256, "queued": 256}
    tenant_writes = [w for w in writer.writes if not w[0].startswith("batches/")]
    assert len(tenant_writes) == 1 and list(increments(tenant_writes[0][1]).values()) == [256]


def test_finished_at_is_the_last_counted_change_once_done() -> None:
    doc = {"task": "embed", "created_at": NOW, "counts": {"total": 2, "queued": 2}}
    later = NOW + timedelta(seconds=9)
    shards = [{"queued": -1, "succeeded": 1, "at": NOW}, {"queued": -1, "failed": 1, "at": later}]
    batch = Batch.from_documents("b" * 32, doc, shards)
    assert batch.status is BatchStatus.FAILED and batch.finished_at == later
    running = Batch.from_documents("b" * 32, doc, shards[:1])
    assert running.status is BatchStatus.RUNNING and running.finished_at is None
    assert running.to_json_dict()["links"]["results"] == f"/v1/batches/{'b' * 32}/results"


def test_huge_integers_are_found_anywhere_in_a_stored_input() -> None:
    from ingress.http import has_huge_int

    assert has_huge_int({"a": [1, {"b": 2**63}]}) and has_huge_int(-(2**63) - 1)
    assert not has_huge_int({"a": [2**63 - 1, -(2**63), True, 1.5e300, "9" * 40]})
