"""The webhook delivery ledger's state machine: who may move a delivery where, as pure functions
over its document (``webhook_deliveries/<kind>-<id>``; ``docs/webhooks.md``).

    take in ──▶ pending ──claim──▶ delivering ──2xx──────────────────▶ succeeded
                 ▲ ▲ ▲               │  │ ▲ └──refused / exhausted──▶ failed
                 │ │ └───backoff─────┘  └─┘ lease lapsed: claimed again    │
                 │ └───────── redeliver: a new round ◀─────────────────────┘ (or from succeeded)
                 └── redeliver now: pending, or delivering with a lapsed lease
    a retried batch ends again: pending, from any state (a new event, a new round)

The sender (``webhooks/outbox.py``) takes ended jobs and batches in, claims and records; the
ingress (``ingress/webhooks/store.py``) redelivers. Each reads the ledger in a transaction (the
take-in: a commit fenced by update times), calls one of these, and writes the changes it returns;
nothing here reads or writes Firestore. The rules, whoever writes:

- ``next_at`` is when a ``pending`` delivery is due, or when a ``delivering`` claim's lease runs
  out; ``succeeded`` and ``failed`` have none (they are never due). A delivery is claimable when
  it is ``pending`` or ``delivering`` and its ``next_at`` has come: a sender that died mid-attempt
  is replaced once its lease lapses.
- A claim holds the delivery with a fresh random ``lease`` token; only the claim holding the
  current token may record the attempt's outcome, and every outcome (and every redelivery) clears
  it, so an attempt is recorded once and a lapsed claim's late record changes nothing.
- A delivery held by a live lease is not redelivered (its attempt would race the new one).
- A *round* is the attempts since ``round_start`` (an attempt count): the backoff schedule
  counts from its first step in each round, and after its last step the delivery is ``failed``.
  A redelivery of a finished delivery starts a new round; so does a retried batch's new event
  (``sequence`` + 1, its own ``webhook-id``).
- ``attempts`` keeps the newest ``LEDGER_ATTEMPTS`` outcomes; ``attempt_count`` counts them all.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from schemas.webhooks import DeliveryState, event_type, message_id

LEDGER_ATTEMPTS = 50
"""Attempts a ledger keeps (the newest); ``attempt_count`` counts them all."""
KEEP_AT_LEAST = timedelta(days=1)
"""A ledger outlives its take-in by at least this, whatever its resource's ``expire_at``."""
CLAIMABLE = (DeliveryState.PENDING, DeliveryState.DELIVERING)
FINISHED = (DeliveryState.SUCCEEDED, DeliveryState.FAILED)


class Outcome(Protocol):
    """What one attempt got (``webhooks.delivery.Outcome``)."""

    @property
    def status_code(self) -> int | None: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def final(self) -> bool: ...
    @property
    def delivered(self) -> bool: ...


@dataclass(frozen=True)
class Moved:
    """An allowed transition: the state it ends in and the fields to write."""

    state: DeliveryState
    changes: dict[str, Any]


@dataclass(frozen=True)
class Claimed(Moved):
    """A claim: ``delivering``, fenced by ``token`` until ``changes["next_at"]``."""

    token: str = ""


@dataclass(frozen=True)
class Refused:
    """No transition: ``reason`` says why; ``busy_until`` is set when a live lease holds it."""

    reason: str
    busy_until: datetime | None = None


def state_of(doc: dict[str, Any]) -> DeliveryState | None:
    try:
        return DeliveryState(str(doc.get("state")))
    except ValueError:
        return None


def held_until(doc: dict[str, Any], now: datetime) -> datetime | None:
    """When a live claim's lease runs out; None unless a sender holds the delivery now."""
    lease_end = doc.get("next_at")
    if state_of(doc) is DeliveryState.DELIVERING and lease_end is not None and lease_end > now:
        return lease_end  # type: ignore[no-any-return]
    return None


def holds(doc: dict[str, Any] | None, token: str) -> bool:
    """Whether the claim holding ``token`` still holds the delivery (may record its attempt)."""
    return doc is not None and doc.get("lease") == token


def opened(
    kind: str,
    resource_id: str,
    tenant: str | None,
    url: str | None,
    status: str,
    now: datetime,
    expire_at: datetime,
) -> dict[str, Any]:
    """A new ledger for a job or batch that ended ``status``: ``pending``, due now."""
    return {
        "kind": kind,
        "resource_id": resource_id,
        "tenant": tenant,
        "url": url,
        "event": event_type(kind, status),
        "state": DeliveryState.PENDING.value,
        "next_at": now,
        "attempt_count": 0,
        "round_start": 0,
        "sequence": 1,
        "attempts": [],
        "lease": None,
        "created_at": now,
        "updated_at": now,
        "expire_at": max(expire_at, now + KEEP_AT_LEAST),
    }


def reopened(doc: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A retried batch ended again: the changes that make ``doc`` (its ledger) carry the new event
    ``new`` (what ``opened`` gives for it), from any state. A new ``sequence`` (its own
    ``webhook-id``), a new round, due now; the attempts of the earlier events stay, and a claim of
    the earlier event can no longer record."""
    return {
        **{k: new[k] for k in ("url", "event", "state", "next_at", "updated_at")},
        "sequence": int(doc.get("sequence") or 1) + 1,
        "round_start": int(doc.get("attempt_count") or 0),
        "lease": None,
        "expire_at": new["expire_at"],
    }


def claim(doc: dict[str, Any] | None, now: datetime, lease_s: float) -> Claimed | Refused:
    """Hold a due delivery (``pending``, or ``delivering`` with a lapsed lease) for ``lease_s``."""
    if doc is None:
        return Refused("missing")
    state = state_of(doc)
    if state not in CLAIMABLE:
        return Refused(f"not claimable: {doc.get('state')}")
    busy_until = held_until(doc, now)
    if busy_until is not None:
        return Refused("held by a live attempt", busy_until=busy_until)
    due = doc.get("next_at")
    if due is None or due > now:
        return Refused("not due yet")
    token = secrets.token_hex(8)
    changes = {
        "state": DeliveryState.DELIVERING.value,
        "next_at": now + timedelta(seconds=lease_s),
        "lease": token,
        "updated_at": now,
    }
    return Claimed(DeliveryState.DELIVERING, changes, token)


def recorded(
    doc: dict[str, Any] | None,
    token: str,
    outcome: Outcome,
    now: datetime,
    backoff_s: tuple[float, ...],
) -> Moved | Refused:
    """The claim ``token``'s attempt and what follows it: ``succeeded`` on a 2xx; ``failed`` when
    retrying cannot help or the round's schedule is spent; else ``pending`` after the round's next
    backoff step. Refused when the claim lost its lease (lapsed and claimed again, redelivered)."""
    if not holds(doc, token):
        return Refused("lost its lease")
    assert doc is not None
    number = int(doc.get("attempt_count") or 0) + 1
    entry = {
        "attempt": number,
        "at": now,
        "webhook_id": message_id(
            str(doc.get("kind")), str(doc.get("resource_id")), int(doc.get("sequence") or 1)
        ),
        "status_code": outcome.status_code,
        "latency_ms": outcome.latency_ms,
        "error": outcome.error,
    }
    in_round = number - int(doc.get("round_start") or 0)
    next_at: datetime | None = None
    if outcome.delivered:
        state = DeliveryState.SUCCEEDED
    elif outcome.final or in_round > len(backoff_s):
        state = DeliveryState.FAILED
    else:
        state = DeliveryState.PENDING
        next_at = now + timedelta(seconds=backoff_s[in_round - 1])
    changes = {
        "attempts": [*(doc.get("attempts") or []), entry][-LEDGER_ATTEMPTS:],
        "attempt_count": number,
        "state": state.value,
        "next_at": next_at,
        "lease": None,
        "updated_at": now,
    }
    return Moved(state, changes)


def redelivered(doc: dict[str, Any], now: datetime) -> Moved | Refused:
    """Due now: a finished delivery (``succeeded``, ``failed``) starts a new round; a pending one
    (or a lapsed claim) is sent now instead of at its backoff. Refused while a live lease holds
    it. The lease is cleared: a lapsed claim's sender may still try to record, and must not end
    this round."""
    busy_until = held_until(doc, now)
    if busy_until is not None:
        return Refused("held by a live attempt", busy_until=busy_until)
    changes: dict[str, Any] = {
        "state": DeliveryState.PENDING.value,
        "next_at": now,
        "updated_at": now,
        "lease": None,
    }
    if state_of(doc) in FINISHED:
        # A new round: the backoff schedule starts again from its first step.
        changes["round_start"] = int(doc.get("attempt_count") or 0)
    return Moved(DeliveryState.PENDING, changes)
