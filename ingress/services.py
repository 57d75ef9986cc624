"""What a request needs beyond itself: settings, keys, the job store, the publisher, the watcher,
the tenant limits.

Built once by ``create_app`` and kept on ``app.extensions`` (no module-level clients: gunicorn
workers fork, and gRPC clients must be created after the fork).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ingress.auth import KeyRing
from ingress.batchstore import BatchStore
from ingress.errors import ServiceUnavailable
from ingress.idempotency import IdempotencyStore
from ingress.instances import InstanceRegistry
from ingress.publisher import JobPublisher
from ingress.quota import InFlightCap
from ingress.ratelimit import RateLimiter
from ingress.settings import Settings
from ingress.store import JobStore
from ingress.watch import JobWatcher
from ingress.webhookstore import WebhookLedger
from schemas.webhooks import SigningSecrets

EXTENSION = "omni"


@dataclass(frozen=True)
class Services:
    settings: Settings
    keys: KeyRing
    store: JobStore
    idempotency: IdempotencyStore
    publisher: JobPublisher
    watcher: JobWatcher
    batches: BatchStore
    limiter: RateLimiter
    in_flight: InFlightCap
    instances: InstanceRegistry | None
    """Runs only when some tenant has a request rate."""
    signing: SigningSecrets
    """Which tenants may submit a webhook (those with a signing secret)."""
    webhooks: WebhookLedger


def services() -> Services:
    svc: Services = current_app.extensions[EXTENSION]
    return svc


def unavailable(what: str) -> ServiceUnavailable:
    """The 503 (with ``Retry-After``) for a dependency that did not answer: "the job store",
    "the job queue"."""
    return ServiceUnavailable(
        f"the {what} is unavailable; try again", services().settings.retry_after_s
    )
