"""``Idempotency-Key``: the same key and body within 24 h return the same resource.

A key is scoped to its tenant. The first request with a key reserves it by *creating* a record
(``idempotency/<sha256(tenant, key)>``) that names the resource it is about to make and a
fingerprint of the request (path and canonical JSON body); creation is atomic, so of two racing
requests exactly one reserves. Every later request with the key either replays that resource (same
fingerprint) or is refused with 409 (another body, or another endpoint).

Validation runs first: a request refused with 4xx reserves nothing, so the client can fix it and
retry with the same key. A request that fails with 503 *after* reserving releases the key, so the
client's retry makes a fresh resource instead of replaying a failed one. Records carry
``expire_at`` for Firestore's TTL policy; an expired record not yet deleted is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from common.googleapi import (
    AlreadyExists,
    BackendError,
    Missing,
    PreconditionFailed,
    bounded_retry,
    translated,
)
from ingress.errors import StoreUnavailable

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
TTL_S = 24 * 3600
"""How long a key is remembered, seconds (the contract's 24 h)."""
COLLECTION = "idempotency"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
"""1..255 printable ASCII characters without spaces (a UUID is the usual choice)."""
_RESERVE_TRIES = 3
DONE = "done"
"""Set on a record in the commit that made its resource, where a resource is not a document of
its own that a replay could look for (a part of an open batch)."""


class KeyMismatch(ValueError):
    """The key was used with another request body or on another endpoint."""


@dataclass(frozen=True)
class Reservation:
    resource_id: str
    replayed: bool
    doc_id: str
    update_time: datetime | None = None  # set when this request created the record
    record: dict[str, Any] | None = None  # a replay's: what the first request stored


def fingerprint(path: str, body: Any) -> str:
    """The same request, whatever its key order or whitespace, has the same fingerprint."""
    canonical = json.dumps(
        {"path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class IdempotencyStore:
    def __init__(self, client: firestore.Client, timeout_s: float, collection: str = COLLECTION):
        self._client = client
        self._records = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    @staticmethod
    def _doc_id(tenant: str, key: str) -> str:
        return hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()

    def reserve(self, tenant: str, key: str, request_fingerprint: str, new_id: str) -> Reservation:
        """Reserve ``key`` for ``new_id``, or return what it already names.

        Raises ``KeyMismatch`` (409) and ``StoreUnavailable`` (503)."""
        doc_id = self._doc_id(tenant, key)
        ref = self._records.document(doc_id)
        now = datetime.now(UTC)
        record = {
            "tenant": tenant,
            "fingerprint": request_fingerprint,
            "resource_id": new_id,
            "created_at": now,
            "expire_at": now + timedelta(seconds=TTL_S),
        }
        with translated(StoreUnavailable, "idempotency check"):
            for _ in range(_RESERVE_TRIES):
                try:
                    with translated(StoreUnavailable, "idempotency check"):
                        result = ref.create(record, retry=self._retry, timeout=self._timeout_s)
                    return Reservation(new_id, False, doc_id, result.update_time)
                except AlreadyExists:
                    pass
                snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
                existing = snapshot.to_dict() if snapshot.exists else None
                if existing is None:
                    continue  # released between our create and our read: try again
                if existing["expire_at"] > now:
                    break
                # Expired but not yet removed by the TTL policy: remove it, unless someone
                # else changed it meanwhile, and try again.
                with (
                    contextlib.suppress(PreconditionFailed, Missing),
                    translated(StoreUnavailable, "idempotency check"),
                ):
                    ref.delete(
                        option=self._client.write_option(last_update_time=snapshot.update_time),
                        timeout=self._timeout_s,
                    )
            else:
                raise StoreUnavailable("the idempotency key is contended; try again")
        if existing["fingerprint"] != request_fingerprint:
            raise KeyMismatch(
                f"{HEADER} was already used with another request; use a new key for a new request"
            )
        return Reservation(existing["resource_id"], True, doc_id, record=existing)

    def mark_done(self, reservation: Reservation, writer: Any) -> None:
        """Add to ``writer``'s commit (the one that makes the resource) ``done: true`` on the
        key's record, so that a replay knows the resource was made, not only reserved."""
        writer.update(self._records.document(reservation.doc_id), {DONE: True})

    def release(self, reservation: Reservation) -> None:
        """Forget a key this request reserved (its request failed); best effort."""
        if reservation.replayed or reservation.update_time is None:
            return
        try:
            with translated(StoreUnavailable, "idempotency release"):
                self._records.document(reservation.doc_id).delete(
                    option=self._client.write_option(last_update_time=reservation.update_time),
                    timeout=self._timeout_s,
                )
        except (BackendError, StoreUnavailable) as exc:
            # Left in place, a retry with the key finds the job document missing or failed and
            # says so; nothing is lost either way.
            logger.warning("could not release an idempotency key: %s", type(exc).__name__)
