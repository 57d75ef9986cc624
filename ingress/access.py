"""What a tenant may see: its own jobs and batches, found by id, and a batch as the API shows it.

Every route that names a job or a batch goes through ``owned_job`` or ``owned_batch``: an id that is
malformed, unknown or another tenant's answers 404, all alike, so no tenant learns that another's
resource exists. The id is bound to the request's log lines here.
"""

from __future__ import annotations

from typing import Any

from flask import g

from common.jsonlog import bind_log_context
from ingress.batches.documents import Batch as StoredBatch
from ingress.errors import NotFound, StoreUnavailable
from ingress.services import services, unavailable
from schemas import JOB_ID_PATTERN
from schemas.batches import Batch


def checked_id(job_id: str) -> str:
    """The id, bound to the request's log lines. An id that cannot exist answers exactly like one
    that does not: 404, no store read."""
    if not JOB_ID_PATTERN.match(job_id):
        raise NotFound("no such job")
    bind_log_context(job_id=job_id)
    return job_id


def owned_job(job_id: str) -> dict[str, Any]:
    """The tenant's job document; 404 for an id that is malformed, unknown or another tenant's
    (another tenant's job is indistinguishable from a missing one)."""
    svc = services()
    checked_id(job_id)
    try:
        doc = svc.store.get(job_id)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if doc is None or doc.get("tenant") != g.tenant:
        raise NotFound("no such job")
    return doc


def owned_batch(batch_id: str, counts: bool = True) -> StoredBatch:
    """The tenant's accepted batch (``counts``: with its counter shards); 404 for an id that is
    malformed, unknown or another tenant's, all alike."""
    if not JOB_ID_PATTERN.match(batch_id):
        raise NotFound("no such batch")
    bind_log_context(batch_id=batch_id)
    try:
        batch = services().batches.get(batch_id, counts)
    except StoreUnavailable as exc:
        raise unavailable("job store") from exc
    if batch is None or batch.doc.get("tenant") != g.tenant:
        raise NotFound("no such batch")
    return batch


def batch_resource(batch: StoredBatch) -> dict[str, Any]:
    """The batch as the API shows it: ``schemas.batches.Batch`` plus ``open`` (whether it takes
    parts) and, for a batch created open, ``open_expires_at`` and ``closed_at``."""
    resource = Batch.from_documents(batch.id, batch.doc, batch.shards).to_json_dict()
    resource["open"] = bool(batch.doc.get("open"))
    for field in ("open_expires_at", "closed_at"):
        if batch.doc.get(field) is not None:
            resource[field] = batch.doc[field].isoformat().replace("+00:00", "Z")
    return resource
