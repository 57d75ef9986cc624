"""``/health``: whether this instance can reach Pub/Sub and Firestore (no key needed)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ingress.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[Response, int]:
    svc = services()
    pubsub_ok = svc.publisher.ping()
    firestore_ok = svc.store.ping()
    ok = pubsub_ok and firestore_ok
    body = {"ok": ok, "pubsub_ok": pubsub_ok, "firestore_ok": firestore_ok, "service": "ingress"}
    return jsonify(body), 200 if ok else 503
