"""What a request needs beyond itself: settings, keys, the job store, the batch and chunk stores,
the publisher, the watcher, the tenant limits (the rate, items in flight, and the open streams
this process holds).

Built once by ``create_app`` and kept on ``app.extensions`` (no module-level clients: gunicorn
workers fork, and gRPC clients must be created after the fork).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ingress.auth import KeyRing
from ingress.batches.chunkstore import ChunkStore
from ingress.batches.store import BatchStore
from ingress.errors import ApiError, ServiceUnavailable, StoreUnavailable
from ingress.estimates import Estimates
from ingress.idempotency import IdempotencyStore, Reservation
from ingress.jobs.cache import ResultCache
from ingress.jobs.store import JobStore
from ingress.jobs.watch import JobWatcher
from ingress.limits.holds import Holds
from ingress.limits.instances import InstanceRegistry
from ingress.limits.quota import InFlightCap
from ingress.limits.ratelimit import RateLimiter
from ingress.limits.uploads import UploadSlots
from ingress.publisher import JobPublisher
from ingress.settings import Settings
from ingress.webhooks.store import WebhookLedger
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
    chunks: ChunkStore
    """A batch's chunks: results, item events, cancel and retry."""
    limiter: RateLimiter
    in_flight: InFlightCap
    instances: InstanceRegistry | None
    """Runs only when some tenant has a request rate."""
    holds: Holds
    """Each tenant's open event streams and held requests in this process, and their cap."""
    signing: SigningSecrets
    """Which tenants may submit a webhook (those with a signing secret)."""
    webhooks: WebhookLedger
    uploads: UploadSlots
    """This process's slots for large batch uploads (``MAX_LARGE_UPLOADS``)."""
    estimates: Estimates
    """Queue places and drain rates for ``queue`` and ``progress`` (``schemas/eta.py``)."""
    cache: ResultCache
    """Result-cache lookups at submit (none with ``RESULT_CACHE=off``), and its entries."""


def services() -> Services:
    svc: Services = current_app.extensions[EXTENSION]
    return svc


def unavailable(what: str) -> ServiceUnavailable:
    """The 503 (with ``Retry-After``) for a dependency that did not answer: "the job store",
    "the job queue"."""
    return ServiceUnavailable(
        f"the {what} is unavailable; try again", services().settings.retry_after_s
    )


def release(reservation: Reservation | None) -> None:
    """Free an ``Idempotency-Key`` whose request created nothing, so that it can be used again."""
    if reservation is not None:
        services().idempotency.release(reservation)


def admit(tenant: str, new_items: int, reservation: Reservation | None = None) -> None:
    """The tenant's cap on items in flight (a job is one; a batch, a part or a retry, its
    items), checked before a view creates ``new_items``: its 429 (or 413) as raised, a 503 when
    the count cannot be read, and on either the request's ``Idempotency-Key`` freed first, so
    the same key works once there is room."""
    try:
        services().in_flight.check(tenant, new_items)
    except StoreUnavailable as exc:
        release(reservation)
        raise unavailable("job store") from exc
    except ApiError:
        release(reservation)
        raise
