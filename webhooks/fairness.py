"""Which due attempts a look starts: round-robin across tenants, a few in flight per tenant.

Without this a look took due attempts by time only, so one tenant with a backlog of deliveries to
a receiver that answers only at the attempt's deadline filled every slot for that long, again and
again, and every other tenant's webhooks waited behind it. Now:

- a tenant has at most ``tenant_in_flight`` attempts in flight in one sender
  (``WEBHOOK_TENANT_IN_FLIGHT``), fewer than ``WEBHOOK_CONCURRENCY``, so it cannot take every slot;
- a look's candidates are taken round-robin: one per tenant per round, the tenants in the order of
  their oldest due attempt, each tenant's oldest first (``round_robin``);
- a backlog at the head of the time-ordered due query cannot hide another tenant's newer due
  attempts: when the head comes back full, the look also asks for due attempts tenant by tenant
  (``TenantRotation`` says which, a bounded number per look, going round the known tenants).

A ledger without a tenant is a group of its own (``None``); so is every distinct tenant.

Invariant: only the sender's loop thread calls these; they hold no lock and do no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

TenantKey = str | None
"""A tenant's group: its name, or None for ledgers that carry none."""


@dataclass(frozen=True)
class Due:
    """A due attempt as the queries see it: its ledger key, tenant and due time."""

    key: str
    tenant: TenantKey
    next_at: datetime


def round_robin(found: Iterable[Due], in_flight: Mapping[TenantKey, int], cap: int) -> list[Due]:
    """``found`` in the order a look should claim them: one per tenant per round, the tenants in
    the order of their oldest due attempt (ties by name), each tenant's oldest first; at most
    ``cap`` minus what the tenant has ``in_flight`` of each tenant; each key once.

    The list may be longer than the room a look has: a claim can fail (another sender took the
    attempt), and the next candidate, maybe the same tenant's, takes its place."""
    queues: dict[TenantKey, list[Due]] = {}
    seen: set[str] = set()
    for due in sorted(found, key=lambda d: (d.next_at, d.key)):
        if due.key in seen:
            continue
        seen.add(due.key)
        queue = queues.setdefault(due.tenant, [])
        if len(queue) < cap - in_flight.get(due.tenant, 0):
            queue.append(due)
    # Dicts keep insertion order: the tenants are in the order of their oldest due attempt.
    order: list[Due] = []
    depth = 0
    while True:
        round_ = [queue[depth] for queue in queues.values() if depth < len(queue)]
        if not round_:
            return order
        order.extend(round_)
        depth += 1


class TenantRotation:
    """Which tenants a look asks about one by one: up to ``per_look`` each time, going on from
    where the previous look stopped, so every known tenant is asked within
    ``ceil(tenants / per_look)`` looks however many there are.

    The known tenants are those with a signing secret: the ingress accepts a webhook only for
    them, and the sender can sign for no other. Deliveries of any other tenant (or none) are
    still found by the time-ordered query, and end at once as unsendable."""

    def __init__(self, tenants: Iterable[str], per_look: int):
        self._tenants = sorted(set(tenants))
        self._per_look = per_look
        self._next = 0
        """Index of the tenant the next look asks about first."""

    def take(self, skip: Iterable[TenantKey]) -> list[str]:
        """The next tenants to ask about, at most ``per_look``, none of ``skip`` (already seen in
        this look, or at their cap). Skipped tenants do not use up the look's budget."""
        if not self._tenants:
            return []
        skipped = set(skip)
        count = len(self._tenants)
        taken: list[str] = []
        looked = 0
        while looked < count and len(taken) < self._per_look:
            tenant = self._tenants[(self._next + looked) % count]
            looked += 1
            if tenant not in skipped:
                taken.append(tenant)
        self._next = (self._next + looked) % count
        return taken
