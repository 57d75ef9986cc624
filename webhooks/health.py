"""``/healthz`` and ``/metrics`` (Prometheus) on ``WEBHOOK_HTTP_PORT``, when it is set.

Webhooks that silently stop are what users of webhook systems complain about most, so the sender
says how it is doing: ``/healthz`` answers 503 once its loop has not come round for
``STALE_AFTER_S`` (stuck, not merely failing: a look that fails because Firestore is down still
comes round, and restarting would not bring Firestore back), and ``/metrics`` counts attempts by
outcome, times them, and shows the newest look's time and the attempts in flight, so an alert can
fire on failures or on a sender that stopped looking.

A stdlib server on a daemon thread, as the worker's (``worker/health.py``).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

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


class HealthServer:
    def __init__(self, host: str, port: int, heartbeat: Heartbeat):
        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    age = heartbeat.age_s()
                    ok = age < STALE_AFTER_S
                    body = {"ok": ok, "service": "webhooks", "last_look_s_ago": round(age, 1)}
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                elif self.path == "/metrics":
                    self._send(200, _generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b'{"title": "Not Found", "status": 404}', "application/json")

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return  # probes and scrapes would drown the attempt logs

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhooks-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
