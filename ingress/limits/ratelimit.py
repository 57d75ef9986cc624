"""Per-tenant limits: the policy (``TENANT_LIMITS``) and the request-rate token buckets.

A policy is a JSON object of tenant name to limits, with ``"*"`` the default for every tenant::

    {"*": {"rate": 50, "burst": 100, "in_flight": 200000, "streams": 200},
     "acme": {"rate": 5, "burst": 10, "in_flight": 100, "weight": 2}}

``rate`` is requests a second, ``burst`` the most requests at once (default: ``rate``, at least
1), ``in_flight`` the most jobs queued + running, ``streams`` the most event streams and held
requests (long polls, ``Prefer: wait``) open at once in one ingress process, ``weight`` its
batches' share of the workers against other batches (1 by default: each batch keeps
``weight × BATCH_WINDOW_CHUNKS`` chunks published, docs/scheduling.md). A tenant's entry
overrides the default field by field: a field it leaves out is the default's, a field it sets to
``null`` is unlimited. No policy, or a field unset everywhere, means no limit, except ``streams``:
``DEFAULT_STREAMS`` applies unless a policy sets it (``null`` lifts it).

**The request rate is a token bucket per tenant per ingress process**, not shared state: a shared
bucket would be one Firestore document written on every request, and a document takes about one
write a second. Each process gives its bucket ``rate / N`` and ``burst / N``, where N is the number
of live ingress processes (``ingress/limits/instances.py``), so the buckets add up to the tenant's
rate when the load balancer spreads a tenant's requests evenly. What that costs in accuracy is
measured in ``bench/ratelimit.py`` (docs/limits.md). The jobs-in-flight cap is exact and shared:
``ingress/limits/quota.py``. The streams cap is counted per process too
(``ingress/limits/holds.py``): it guards that process's threads.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT = "*"
"""The policy entry that applies to every tenant without its own (and under every entry)."""
DEFAULT_STREAMS = 200
"""Event streams and held requests one tenant may have open at once in one ingress process, when
no policy says otherwise. Each holds one of the process's ~1,100 gthread threads for as long as it
lasts: 200 leaves the rest to other tenants and to short requests."""
_FIELDS = ("rate", "burst", "in_flight", "streams", "weight")
_WHOLE = ("in_flight", "streams")


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; None is unlimited (``streams`` has a default: ``DEFAULT_STREAMS``)."""

    rate: float | None = None
    """Requests a second, across every ingress process."""
    burst: float | None = None
    """Requests at once: the bucket's size (across every process)."""
    in_flight: int | None = None
    """Jobs queued + running at once."""
    streams: int | None = DEFAULT_STREAMS
    """Event streams, long polls and ``Prefer: wait`` requests open at once, in each ingress
    process (not across them)."""
    weight: float = 1.0
    """The tenant's batches' share of the workers against other batches (a multiple of
    ``BATCH_WINDOW_CHUNKS``)."""


@dataclass(frozen=True)
class LimitPolicy:
    """Every tenant's limits, resolved once at start."""

    default: TenantLimits = field(default_factory=TenantLimits)
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantLimits:
        return self.tenants.get(tenant, self.default)

    @property
    def limits_rate(self) -> bool:
        """Whether any tenant has a request rate (the instance registry runs only then)."""
        return any(t.rate is not None for t in (self.default, *self.tenants.values()))

    @classmethod
    def parse(cls, text: str, source: str = "TENANT_LIMITS") -> LimitPolicy:
        """The policy in ``text`` (JSON); ``ValueError`` naming ``source`` and the bad entry."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{source} is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f'{source} must be a JSON object of tenant → limits ("*": default)')
        entries = {name: _entry(source, name, value) for name, value in raw.items()}
        base = entries.pop(DEFAULT, {})
        default = _limits(source, DEFAULT, base)
        tenants = {name: _limits(source, name, {**base, **own}) for name, own in entries.items()}
        return cls(default, tenants)


def _entry(source: str, name: str, value: Any) -> dict[str, Any]:
    where = f"{source}[{name!r}]"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with some of {', '.join(_FIELDS)}")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; known: {', '.join(_FIELDS)}")
    for key, number in value.items():
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            raise ValueError(f"{where}.{key} must be a positive number or null")
        if not math.isfinite(number):
            raise ValueError(f"{where}.{key} must be finite")
        if key in _WHOLE and not float(number).is_integer():
            raise ValueError(f"{where}.{key} must be a whole number")
    return dict(value)


def _limits(source: str, name: str, merged: dict[str, Any]) -> TenantLimits:
    rate, burst, in_flight = (merged.get(key) for key in ("rate", "burst", "in_flight"))
    streams = merged.get("streams", DEFAULT_STREAMS)  # absent: the default; null: unlimited
    if burst is not None and rate is None:
        raise ValueError(f"{source}[{name!r}] sets a burst without a rate")
    if rate is not None and burst is None:
        burst = max(float(rate), 1.0)
    return TenantLimits(
        rate=None if rate is None else float(rate),
        burst=None if burst is None else float(burst),
        in_flight=None if in_flight is None else int(in_flight),
        streams=None if streams is None else int(streams),
        weight=float(merged.get("weight") or 1.0),
    )


@dataclass(frozen=True)
class Decision:
    """One request's verdict, with what the ``RateLimit-*`` headers tell the client."""

    allowed: bool
    rate: float
    """The tenant's requests a second (across every process)."""
    limit: int
    """The tenant's burst (its whole bucket, across every process)."""
    remaining: int
    """Requests the tenant may still make at once: this process's tokens times N, an estimate."""
    reset_s: int
    """Seconds until the bucket is full again."""
    retry_after_s: int
    """Seconds until this process has a token again (0 when allowed)."""

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets, one per limited tenant, each ``1/N`` of the tenant's rate and burst.

    ``instances()`` says how many ingress processes share the tenant's traffic (at least 1); it
    is read on every check, so a change of N applies at the next request: the bucket's tokens
    are kept, clamped to the new burst."""

    def __init__(
        self,
        policy: LimitPolicy,
        instances: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._policy = policy
        self._instances = instances
        self._clock = clock
        # Guards _buckets and every bucket's tokens and updated: a check reads and writes both,
        # and gthread serves up to ~1,100 requests at once. Held for a few arithmetic steps only.
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def check(self, tenant: str) -> Decision | None:
        """Take one token for ``tenant``'s request; None when the tenant has no rate limit."""
        limits = self._policy.for_tenant(tenant)
        if limits.rate is None or limits.burst is None:
            return None
        n = max(1, self._instances())
        rate = limits.rate / n
        burst = max(1.0, limits.burst / n)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(burst, now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            tokens = bucket.tokens
        return Decision(
            allowed=allowed,
            rate=limits.rate,
            limit=int(limits.burst),
            remaining=min(int(limits.burst), int(tokens * n)),
            reset_s=math.ceil((burst - tokens) / rate),
            retry_after_s=0 if allowed else max(1, math.ceil((1.0 - tokens) / rate)),
        )

    def share(self, tenant: str) -> tuple[float, float] | None:
        """This process's ``(rate, burst)`` for ``tenant`` now; None when unlimited."""
        limits = self._policy.for_tenant(tenant)
        if limits.rate is None or limits.burst is None:
            return None
        n = max(1, self._instances())
        return limits.rate / n, max(1.0, limits.burst / n)


def limits_from(env_text: str | None, file_path: str | None) -> LimitPolicy:
    """The policy from ``TENANT_LIMITS`` or ``TENANT_LIMITS_FILE`` (not both); no limits when
    neither is set. ``ValueError`` says what is wrong."""
    if env_text and file_path:
        raise ValueError("set TENANT_LIMITS or TENANT_LIMITS_FILE, not both")
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ValueError(f"TENANT_LIMITS_FILE cannot be read: {exc}") from None
        return LimitPolicy.parse(text, "TENANT_LIMITS_FILE")
    if env_text:
        return LimitPolicy.parse(env_text)
    return LimitPolicy()
