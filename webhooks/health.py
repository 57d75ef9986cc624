"""``/healthz`` and ``/metrics`` (Prometheus) on ``WEBHOOK_HTTP_PORT``, when it is set.

Webhooks that silently stop are what users of webhook systems complain about most, so the sender
says how it is doing: ``/healthz`` answers 503 once its loop has not come round for
``STALE_AFTER_S`` (stuck, not merely failing: a look that fails because Firestore is down still
comes round, and restarting would not bring Firestore back), and ``/metrics`` counts attempts by
outcome, times them, and shows the newest look's time and the attempts in flight, so an alert can
fire on failures or on a sender that stopped looking.

The server is the worker's too (``common/healthserver.py``).
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

from common.healthserver import HealthServer as _Server
from common.healthserver import json_answer

STALE_AFTER_S = 120.0
"""``/healthz`` fails when the loop has not come round for this long, seconds: far above a look
(two queries) plus the wait between looks, and above a look whose Firestore calls time out."""

REGISTRY = CollectorRegistry()
ATTEMPTS = Counter(
    "omni_webhook_attempts",
    "Webhook attempts by resource kind and outcome: delivered (2xx), rejected (another status), "
    "error (no answer: timeout, connection), refused (the address or URL is not allowed), "
    "unsendable (no secret, the resource is gone).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "omni_webhook_attempt_seconds",
    "Time from the connection to the receiver's status line.",
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GIVEN_UP = Counter(
    "omni_webhook_deliveries_failed",
    "Deliveries that ended failed (every attempt of their schedule failed, or they were refused).",
    ["kind"],
    registry=REGISTRY,
)
LOOKS = Counter(
    "omni_webhook_looks",
    "Looks for ended resources and due attempts.",
    ["result"],
    registry=REGISTRY,
)
LAST_LOOK = Gauge(
    "omni_webhook_last_look_timestamp_seconds",
    "Unix time of the newest look that completed.",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("omni_webhook_in_flight", "Attempts being sent now.", registry=REGISTRY)


def outcome_label(status_code: int | None, error: str | None, final: bool) -> str:
    if status_code is not None:
        return "delivered" if 200 <= status_code < 300 else "rejected"
    if final:
        return "refused" if (error or "").startswith("refused") else "unsendable"
    return "error"


class Heartbeat:
    """When the loop last came round (a monotonic clock), for ``/healthz``."""

    def __init__(self) -> None:
        # Guards ``_at``: the loop thread writes it, the server's threads read it.
        self._lock = threading.Lock()
        self._at = time.monotonic()

    def beat(self) -> None:
        with self._lock:
            self._at = time.monotonic()

    def age_s(self) -> float:
        with self._lock:
            return time.monotonic() - self._at


class HealthServer(_Server):
    def __init__(self, host: str, port: int, heartbeat: Heartbeat):
        def healthz() -> tuple[int, bytes, str]:
            age = heartbeat.age_s()
            ok = age < STALE_AFTER_S
            body = {"ok": ok, "service": "webhooks", "last_look_s_ago": round(age, 1)}
            return json_answer(200 if ok else 503, body)

        super().__init__(
            host,
            port,
            {
                "/healthz": healthz,
                "/metrics": lambda: (200, _generate_latest(REGISTRY), CONTENT_TYPE_LATEST),
            },
            "webhooks-health",
        )
