"""The webhook delivery ledger, as the ingress reads it and asks for a redelivery.

The sender (``webhooks/``) writes the ledger; the ingress only reads it and, on request, makes a
finished delivery due again. Google errors become ``StoreUnavailable``, as in
``ingress/jobs/store.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import UNAVAILABLE, bounded_retry
from ingress.errors import StoreUnavailable
from schemas.webhooks import DeliveryState, delivery_key


class DeliveryInProgress(Exception):
    """A sender is sending this webhook right now: a redelivery would race it."""


class WebhookLedger:
    def __init__(self, client: firestore.Client, collection: str, timeout_s: float):
        self._client = client
        self._deliveries = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def get(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        """The ledger document, or None while the sender has not taken the webhook in."""
        ref = self._deliveries.document(delivery_key(kind, resource_id))
        try:
            snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore ledger read failed: {type(exc).__name__}") from exc
        return snapshot.to_dict() if snapshot.exists else None

    def redeliver(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        """Make the webhook due now: a finished delivery (succeeded or failed) starts a new round
        of attempts under the same ``webhook-id``; a pending one is sent now instead of at its
        backoff. None when the sender has not taken it in yet (its first attempt is coming).
        Raises ``DeliveryInProgress`` while a sender holds it."""
        ref = self._deliveries.document(delivery_key(kind, resource_id))

        @firestore.transactional
        def _redeliver(transaction: firestore.Transaction) -> dict[str, Any] | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            doc = snapshot.to_dict() or {}
            now = datetime.now(UTC)
            state = doc.get("state")
            held_until = doc.get("next_at")
            if state == DeliveryState.DELIVERING.value and held_until and held_until > now:
                raise DeliveryInProgress()
            changes: dict[str, Any] = {
                "state": DeliveryState.PENDING.value,
                "next_at": now,
                "updated_at": now,
                # A lapsed claim's sender may still try to record: it must not end this round.
                "lease": None,
            }
            if state in (DeliveryState.SUCCEEDED.value, DeliveryState.FAILED.value):
                # A new round: the backoff schedule starts again from its first step.
                changes["round_start"] = int(doc.get("attempt_count") or 0)
            transaction.update(ref, changes)
            return {**doc, **changes}

        try:
            outcome: dict[str, Any] | None = _redeliver(self._client.transaction())
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"Firestore redelivery failed: {type(exc).__name__}") from exc
        return outcome
