"""Self-clocking batches (docs/scheduling.md): a batch keeps ``window`` chunks published; the rest
wait ``held`` (``schemas.chunks.HELD``), unpublished, and each chunk that ends releases the next.

Pub/Sub delivers roughly in publish order, so a batch with every chunk published puts every batch
after it behind all of them; with windows, a released chunk is published behind the chunks other
batches released meanwhile, and active batches take turns. Who releases:

- the ingress, at acceptance: the first ``window`` chunks (less those of the batch already queued
  or running, for a later part) are ``queued`` and published, the rest ``held``;
- the worker, after each chunk's terminal commit: one, for the one that ended;
- the reconciler's sweep: a batch with held chunks but fewer than ``window`` queued or running
  (a worker died between its commit and its release; chunks ended by a cancel, the dead-letter
  path or a deadline) is topped up, so a batch never stalls.

A release is a transaction (query the first held chunks, flip them ``queued``), so two releasers
never release the same chunk; publishing happens after it, and a publish that fails leaves a
``queued`` chunk for the reconciler, which publishes stale queued chunks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from common.googleapi import ErrorFactory, run_transaction, translated
from schemas.chunks import CHUNKS, HELD
from schemas.jobs import JobStatus

ACTIVE = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]


def _held(chunks: Any, count: int) -> Any:
    return (
        chunks.where(filter=FieldFilter("status", "==", HELD))
        .order_by(FieldPath.document_id())
        .limit(count)
    )


def release_held(
    client: firestore.Client,
    batch_ref: Any,
    count: int,
    unavailable: ErrorFactory,
    timeout_s: float = 30.0,
) -> list[str]:
    """Flip the batch's first ``count`` held chunks (input order) to ``queued``; their ids (none
    when it has none held). One cheap query first, so a batch without held chunks costs no
    transaction."""
    chunks = batch_ref.collection(CHUNKS)
    if count <= 0:
        return []
    with translated(unavailable, "held chunks"):
        if not list(_held(chunks, 1).select([]).stream(timeout=timeout_s)):
            return []

    def _release(transaction: firestore.Transaction) -> list[str]:
        snapshots = list(_held(chunks, count).stream(transaction=transaction))
        now = datetime.now(UTC)
        for snapshot in snapshots:
            transaction.update(
                snapshot.reference, {"status": JobStatus.QUEUED.value, "updated_at": now}
            )
        return [snapshot.id for snapshot in snapshots]

    released: list[str] = run_transaction(
        client, _release, unavailable=unavailable, what="chunk release"
    )
    return released


def active_chunks(
    batch_ref: Any, at_most: int, unavailable: ErrorFactory, timeout_s: float = 30.0
) -> int:
    """How many of the batch's chunks are queued or running now, counted up to ``at_most`` (its
    window): a bounded read of ids, where a count aggregation would scan every chunk."""
    query = (
        batch_ref.collection(CHUNKS)
        .where(filter=FieldFilter("status", "in", ACTIVE))
        .select([])
        .limit(at_most)
    )
    with translated(unavailable, "chunk count"):
        return len(list(query.stream(timeout=timeout_s)))
