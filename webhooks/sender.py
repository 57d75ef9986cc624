"""The sender's loop: take ended jobs and batches in, send what is due, record each outcome.

One thread looks (every ``poll_s``, at once again when a look came back full); a pool of
``concurrency`` threads sends, each attempt claimed first (``webhooks/outbox.py``), so any number
of senders may run side by side and an attempt runs once at a time. Which due attempts a look
starts is fair across tenants: round-robin, at most ``tenant_in_flight`` per tenant
(``webhooks/fairness.py``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from schemas.webhooks import SigningSecrets, message_id
from webhooks import health
from webhooks.delivery import Outcome, attempt, signed_headers
from webhooks.fairness import TenantKey, TenantRotation, round_robin
from webhooks.health import Heartbeat
from webhooks.outbox import Claimed, Outbox
from webhooks.settings import SenderSettings

logger = logging.getLogger(__name__)

Attempt = Callable[..., Outcome]

HEAD_FACTOR = 2
"""A look reads the oldest ``HEAD_FACTOR × concurrency`` due attempts (two fields each); when
that many come back, it also asks the tenants missing from them, a ``concurrency`` a look."""


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        signing: SigningSecrets,
        settings: SenderSettings,
        send: Attempt = attempt,
        heartbeat: Heartbeat | None = None,
    ):
        self._outbox = outbox
        self._signing = signing
        self._settings = settings
        self._send = send
        self._heartbeat = heartbeat or Heartbeat()
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="webhook-send")
        # Guards ``_in_flight``: the loop thread adds a key, a pool thread removes it when done
        # (only the loop adds, so during a look a tenant's count can only fall: its checks hold).
        self._lock = threading.Lock()
        self._in_flight: dict[str, TenantKey] = {}
        """Ledger key → its tenant, for every attempt being sent."""
        self._rotation = TenantRotation(signing.tenants(), settings.concurrency)

    def run(self, stop: threading.Event) -> None:
        """Look and send until ``stop`` is set; then let the attempts in hand finish."""
        logger.info(
            "webhook sender running",
            extra={"poll_s": self._settings.poll_s, "allow_private": self._settings.allow_private},
        )
        try:
            while not stop.is_set():
                try:
                    busy = self.look()
                    health.LOOKS.labels("ok").inc()
                    health.LAST_LOOK.set_to_current_time()
                except Exception:
                    # Firestore down: the next look tries again; nothing is lost (see outbox).
                    logger.exception("look failed")
                    health.LOOKS.labels("failed").inc()
                    busy = False
                self._heartbeat.beat()
                if not busy:
                    stop.wait(self._settings.poll_s)
        finally:
            self._pool.shutdown(wait=True)

    def look(self) -> bool:
        """One look: take in what ended, start every due attempt there is room for, round-robin
        across tenants and at most ``tenant_in_flight`` per tenant. True when there was more than
        room (look again at once)."""
        now = datetime.now(UTC)
        self._outbox.discover(now)
        cap = self._settings.tenant_in_flight
        with self._lock:
            room = self._settings.concurrency - len(self._in_flight)
            counts = Counter(self._in_flight.values())
        if room <= 0:
            return False
        head = self._settings.concurrency * HEAD_FACTOR
        found = self._outbox.due(now, head)
        if len(found) >= head:
            # A backlog: the head may be one tenant's, hiding others' newer due attempts.
            seen = {due.tenant for due in found}
            full = {tenant for tenant, n in counts.items() if n >= cap}
            for tenant in self._rotation.take(seen | full):
                found += self._outbox.due_of(tenant, now, cap - counts[tenant])
        started = 0
        for due in round_robin(found, counts, cap):
            with self._lock:
                if due.key in self._in_flight:
                    continue
                if sum(1 for t in self._in_flight.values() if t == due.tenant) >= cap:
                    continue  # this tenant's earlier candidates were claimed
            claimed = self._outbox.claim(due.key, now)
            if claimed is None:
                continue
            with self._lock:
                self._in_flight[due.key] = due.tenant
                health.IN_FLIGHT.set(len(self._in_flight))
            self._pool.submit(self._deliver, claimed)
            started += 1
            if started >= room:
                return True
        return False

    def wait_idle(self, timeout_s: float) -> bool:
        """Whether every attempt in hand ended within ``timeout_s`` (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return True
            time.sleep(0.02)
        return False

    def _deliver(self, claimed: Claimed) -> None:
        kind, resource_id = claimed.doc["kind"], claimed.doc["resource_id"]
        log = {f"{kind}_id": resource_id, "attempt": claimed.attempt, "event": claimed.doc["event"]}
        try:
            outcome = self._attempt(claimed)
            state = self._outbox.record(claimed, outcome, datetime.now(UTC))
            label = health.outcome_label(outcome.status_code, outcome.error, outcome.final)
            health.ATTEMPTS.labels(kind, label).inc()
            if outcome.latency_ms is not None:
                health.ATTEMPT_SECONDS.observe(outcome.latency_ms / 1000)
            if state == "failed":
                health.GIVEN_UP.labels(kind).inc()
            logger.info(
                "webhook attempt",
                extra={
                    **log,
                    "status_code": outcome.status_code,
                    "latency_ms": outcome.latency_ms,
                    "error": outcome.error,
                    "state": state or "lost its lease",
                },
            )
        except Exception:
            # The lease runs out and the attempt is claimed again: at least once, never lost.
            logger.exception("webhook attempt could not be recorded", extra=log)
        finally:
            with self._lock:
                self._in_flight.pop(claimed.key, None)
                health.IN_FLIGHT.set(len(self._in_flight))

    def _attempt(self, claimed: Claimed) -> Outcome:
        secret = self._signing.for_tenant(str(claimed.doc.get("tenant")))
        if secret is None:
            return Outcome(error="the tenant has no signing secret any more", final=True)
        now = datetime.now(UTC)
        payload: dict[str, Any] | None = self._outbox.payload(claimed, now)
        if payload is None:
            return Outcome(error=f"the {claimed.doc['kind']} no longer exists", final=True)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        msg_id = message_id(
            claimed.doc["kind"], claimed.doc["resource_id"], int(claimed.doc.get("sequence") or 1)
        )
        return self._send(
            claimed.doc["url"],
            body.encode(),
            signed_headers(secret, msg_id, body, now),
            allow_private=self._settings.allow_private,
            timeout_s=self._settings.timeout_s,
        )
