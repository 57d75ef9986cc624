"""The cap on a tenant's jobs in flight (queued + running), checked before a submit creates jobs.

The count is exact and shared by every ingress instance: the sum of the tenant's counter shards
(``schemas/quota.py``), which every job writer moves in the same commit as the job. The check is
a read before the create, not part of it, so submits that run at the same moment may each see
room for themselves: the cap can be exceeded by at most the jobs of the submits in flight at
once (measured in ``bench/ratelimit.py``). Only tenants with a cap pay the read (one ``get_all``
of ``TENANT_SHARDS`` small documents).
"""

from __future__ import annotations

from typing import Any

from common.googleapi import bounded_retry, translated
from ingress.errors import PayloadTooLarge, StoreUnavailable, TooManyRequests
from ingress.limits.ratelimit import LimitPolicy
from schemas.quota import in_flight_of, shard_paths

IN_FLIGHT_RETRY_AFTER_S = 5
"""``Retry-After`` on a 429 for jobs in flight, seconds: jobs take seconds to finish."""


class InFlightCap:
    def __init__(self, client: Any, policy: LimitPolicy, timeout_s: float):
        self._client = client
        self._policy = policy
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def in_flight(self, tenant: str) -> int:
        """The tenant's jobs queued or running now, from its counter shards."""
        refs = [self._client.document(*parts) for parts in shard_paths(tenant)]
        with translated(StoreUnavailable, "quota read"):
            snapshots = self._client.get_all(refs, retry=self._retry, timeout=self._timeout_s)
            shards = [s.to_dict() or {} for s in snapshots if s.exists]
        return in_flight_of(shards)

    def check(self, tenant: str, new_jobs: int) -> None:
        """Refuse ``new_jobs`` more jobs of ``tenant`` if they would pass its cap: 429 with
        ``Retry-After`` when they could fit later, 413 when they never can (more than the cap).
        Raises ``StoreUnavailable`` when the count cannot be read."""
        cap = self._policy.for_tenant(tenant).in_flight
        if cap is None:
            return
        if new_jobs > cap:
            raise PayloadTooLarge(
                f"{new_jobs} jobs in one request is more than this tenant's cap of {cap} jobs "
                "in flight (queued + running); split it"
            )
        in_flight = self.in_flight(tenant)
        if in_flight + new_jobs > cap:
            raise TooManyRequests(
                f"jobs in flight (queued + running): {in_flight} of this tenant's cap of {cap}; "
                f"{new_jobs} more would pass it. Retry when some have finished",
                IN_FLIGHT_RETRY_AFTER_S,
            )
