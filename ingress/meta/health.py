"""Health routes (no key needed).

- ``GET /health/live``: liveness. The process answers HTTP; touches no backend, so a Pub/Sub or
  Firestore outage never makes it fail (Cloud Run's liveness probe restarts the container, and a
  restart cannot bring a backend back). Not ``/livez``: Cloud Run reserves some paths ending in
  ``z`` and advises against all of them.
- ``GET /health``: readiness, the contract's ``{"ok", "pubsub_ok", "firestore_ok", "service"}``,
  200 or 503. Its backend checks are cached per process for ``HEALTH_CACHE_S`` seconds, and at
  most one check runs at a time, so a flood of unauthenticated requests costs at most one Pub/Sub
  and one Firestore call per interval (``omni_ingress_health_checks_total`` counts them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, jsonify

from ingress import metrics
from ingress.services import EXTENSION as SERVICES_EXTENSION
from ingress.services import Services

bp = Blueprint("health", __name__)

EXTENSION = "omni.health"
"""Key of this app's ``CachedHealth`` in ``app.extensions``."""
SERVICE = "ingress"


@dataclass(frozen=True)
class _Result:
    ok_by_backend: dict[str, bool]
    checked_at: float
    """``clock()`` when the check started."""


class CachedHealth:
    """Each backend's reachability, checked at most once per ``ttl_s`` in this process.

    A caller finding the last result fresh gets it. Otherwise one caller runs the checks; callers
    arriving meanwhile get the last result, however old, or, before the first check has ended,
    wait for it. So concurrent requests never start a second check (no thundering herd), and a
    slow backend (each ping has its own timeout) holds only the caller that checks.
    """

    def __init__(
        self,
        checks: Mapping[str, Callable[[], bool]],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._checks = dict(checks)
        self._ttl_s = ttl_s
        self._clock = clock
        # Held by the one caller running the checks, for as long as they run.
        self._checking = threading.Lock()
        # The last result: replaced whole (one reference assignment), read without a lock.
        self._last: _Result | None = None

    def status(self) -> dict[str, bool]:
        """Each backend's last known reachability, by name, checking first if it is stale."""
        last = self._last
        if last is not None and self._fresh(last):
            return last.ok_by_backend
        # Before any result exists there is nothing to answer with: wait for the check.
        if not self._checking.acquire(blocking=last is None):
            assert last is not None  # a non-blocking acquire is tried only with a result
            return last.ok_by_backend
        try:
            last = self._last  # another caller may have checked while this one waited
            if last is None or not self._fresh(last):
                last = self._last = self._check()
            return last.ok_by_backend
        finally:
            self._checking.release()

    def _fresh(self, result: _Result) -> bool:
        return self._clock() - result.checked_at < self._ttl_s

    def _check(self) -> _Result:
        started = self._clock()
        ok_by_backend = {}
        for backend, check in self._checks.items():
            ok = check()
            metrics.health_checked(backend, ok)
            ok_by_backend[backend] = ok
        return _Result(ok_by_backend, started)


def init_app(app: Flask) -> None:
    """Register the health routes, with a cache over the app's publisher and job store (which
    ``create_app`` has put on ``app.extensions`` before)."""
    svc: Services = app.extensions[SERVICES_EXTENSION]
    app.extensions[EXTENSION] = CachedHealth(
        {"pubsub": svc.publisher.ping, "firestore": svc.store.ping}, svc.settings.health_cache_s
    )
    app.register_blueprint(bp)


@bp.get("/health")
def health() -> tuple[Response, int]:
    cached: CachedHealth = current_app.extensions[EXTENSION]
    status = cached.status()
    pubsub_ok, firestore_ok = status["pubsub"], status["firestore"]
    ok = pubsub_ok and firestore_ok
    body = {"ok": ok, "pubsub_ok": pubsub_ok, "firestore_ok": firestore_ok, "service": SERVICE}
    return jsonify(body), 200 if ok else 503


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"ok": True, "service": SERVICE})
