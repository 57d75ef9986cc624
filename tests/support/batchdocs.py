"""Batches and chunks written straight to Firestore, as the ingress would leave them, and read
back: their documents, counts and the tenants' in-flight counters (the session's emulators)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from schemas.batches import COUNTERS, CountDeltas, counts_of
from schemas.chunks import CHUNKS, chunk_id, pack_inputs
from schemas.jobs import new_job_id
from schemas.quota import COUNTED_FLAG, in_flight_of, shard_paths

FIRESTORE_TIMEOUT = 30
"""Seconds a helper below waits for one Firestore read or write."""


def write_chunk(
    batch: firestore.DocumentReference,
    start: int,
    items: str,
    tenant: str,
    at: datetime,
    inputs: list[bytes] | None = None,
    counted: bool = True,
    **fields: Any,
) -> str:
    """A chunk of ``batch`` (its part 0) from item ``start`` on, queued and last changed ``at``
    unless ``fields`` say otherwise, whose items stand as ``items`` says; its id. Its input lines
    are ``inputs`` (one embed text each by default). If ``counted``, the same commit counts its
    items as acceptance counts them and moves each running, succeeded or failed letter to its
    status."""
    client = firestore.Client()
    lines = inputs if inputs is not None else [b'{"texts":["x"]}'] * len(items)
    doc = {
        "tenant": tenant,
        "task": "embed",
        "batch_id": batch.id,
        "batch_path": batch.path,
        "part": 0,
        "start": start,
        "n": len(items),
        "inputs": pack_inputs(lines),
        "items": items,
        COUNTED_FLAG: True,
        "status": "queued",
        "attempts": 0,
        "terminal_writes": 0,
        "created_at": at,
        "updated_at": at,
        **fields,
    }
    writes = client.batch()
    writes.create(batch.collection(CHUNKS).document(chunk_id(start)), doc)
    if counted:
        deltas = CountDeltas()
        deltas.added(batch.path, tenant, len(items))
        for code, status in (("r", "running"), ("s", "succeeded"), ("f", "failed")):
            deltas.move({**doc, "status": "queued"}, status, count=items.count(code))
        deltas.write(writes, client, at)
    writes.commit(timeout=FIRESTORE_TIMEOUT)
    return chunk_id(start)


def one_chunk_batch(
    items: str,
    tenant: str,
    inputs: list[bytes] | None = None,
    counted: bool = True,
    **fields: Any,
) -> tuple[str, str]:
    """A new batch of embed items of ``tenant`` whose one part is one chunk (``write_chunk``
    with these arguments), both written now; ``(batch_id, chunk_id)``."""
    now = datetime.now(UTC)
    batch = firestore.Client().collection("batches").document(new_job_id())
    batch.create({"tenant": tenant, "task": "embed", "created_at": now, "counts": {}})
    chunk = write_chunk(batch, 0, items, tenant, now, inputs, counted, **fields)
    return batch.id, chunk


def chunk_doc(batch_id: str, chunk: str) -> dict[str, Any]:
    ref = firestore.Client().document("batches", batch_id, CHUNKS, chunk)
    return ref.get(timeout=FIRESTORE_TIMEOUT).to_dict() or {}


def batch_counts(batch_id: str) -> dict[str, int]:
    """The batch's counts, its counter shards summed."""
    ref = firestore.Client().collection("batches").document(batch_id)
    shards = [s.to_dict() or {} for s in ref.collection(COUNTERS).stream(timeout=FIRESTORE_TIMEOUT)]
    return counts_of(ref.get(timeout=FIRESTORE_TIMEOUT).to_dict() or {}, shards).model_dump()


def exact_counts(total: int, **nonzero: int) -> dict[str, int]:
    """What ``batch_counts`` of ``total`` items reads when only the statuses named are not 0."""
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    assert set(nonzero) <= set(statuses), nonzero
    return {"total": total, **{status: nonzero.get(status, 0) for status in statuses}}


def in_flight(tenant: str) -> int:
    """The tenant's items in flight, its counter shards summed."""
    client = firestore.Client()
    refs = [client.document(*parts) for parts in shard_paths(tenant)]
    return in_flight_of([s.to_dict() or {} for s in client.get_all(refs) if s.exists])
