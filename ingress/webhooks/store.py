"""The webhook delivery ledger, as the ingress reads it and asks for a redelivery.

The sender (``webhooks/``) writes the ledger; the ingress only reads it and, on request, makes a
finished delivery due again (the rule is ``schemas/ledgerstate.py``'s ``redelivered``). Firestore
errors are translated as everywhere (``common/googleapi.py``): a transient one, or a redelivery
still contended after its tries, is ``StoreUnavailable`` (503).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import bounded_retry, run_transaction, translated
from ingress.errors import StoreUnavailable
from schemas import ledgerstate
from schemas.webhooks import delivery_key


class DeliveryInProgress(Exception):
    """A sender is sending this webhook right now: a redelivery would race it."""


class WebhookLedger:
    def __init__(self, client: firestore.Client, collection: str, timeout_s: float):
        self._client = client
        self._deliveries = client.collection(collection)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def reference(self, kind: str, resource_id: str) -> Any:
        """The ledger document of a job's or batch's webhook (deleted with it)."""
        return self._deliveries.document(delivery_key(kind, resource_id))

    def get(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        """The ledger document, or None while the sender has not taken the webhook in."""
        ref = self._deliveries.document(delivery_key(kind, resource_id))
        with translated(StoreUnavailable, "ledger read"):
            snapshot = ref.get(retry=self._retry, timeout=self._timeout_s)
        return snapshot.to_dict() if snapshot.exists else None

    def redeliver(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        """Make the webhook due now: a finished delivery (succeeded or failed) starts a new round
        of attempts under the same ``webhook-id``; a pending one is sent now instead of at its
        backoff. None when the sender has not taken it in yet (its first attempt is coming).
        Raises ``DeliveryInProgress`` while a sender holds it."""
        ref = self._deliveries.document(delivery_key(kind, resource_id))

        def _redeliver(transaction: firestore.Transaction) -> dict[str, Any] | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            doc = snapshot.to_dict() or {}
            move = ledgerstate.redelivered(doc, datetime.now(UTC))
            if isinstance(move, ledgerstate.Refused):
                raise DeliveryInProgress()
            transaction.update(ref, move.changes)
            return {**doc, **move.changes}

        outcome: dict[str, Any] | None = run_transaction(
            self._client, _redeliver, unavailable=StoreUnavailable, what="redelivery"
        )
        return outcome
