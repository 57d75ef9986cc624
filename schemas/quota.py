"""Each tenant's jobs in flight (queued + running), kept exact by every job writer.

The count lives in ``tenants/{tenant}/counters/<0..TENANT_SHARDS-1>`` as ``Increment`` deltas of
one field, ``in_flight``; the tenant's count is the sum of its shards (one ``get_all``). It moves
in the same commit as the job transition that causes it, exactly like a batch's item counts
(``schemas/batches.py``), and through the same object, ``CountDeltas``:

    job enters queued/running from outside them    +1   (creation, a batch retry's new job)
    job leaves queued/running for a terminal state  -1   (finish, fail, cancel, dead letter,
                                                          reconciler give-up, failed publish)
    queued <-> running (claim, release, takeover)    0

Every commit that moves a job between statuses calls ``CountDeltas.move`` (or ``created`` for a
new job), so a redelivery or a lost race cannot count twice: the fenced job write and the shard
write land together or not at all. Jobs are counted whatever the tenant's limits are, so a cap
configured later starts from an exact count. Jobs that existed before the counters did are not
counted, neither at their creation nor at their end: each job carries ``in_flight_counted`` from
its creation, and only a job that has it moves the count.
"""

from __future__ import annotations

import re
from typing import Any

TENANTS = "tenants"
"""The collection of per-tenant documents; each has the ``COUNTERS`` subcollection."""
COUNTERS = "counters"
TENANT_SHARDS = 16
"""Counter shards per tenant: a shard takes about one write a second in production, and each
commit that starts or ends jobs (a micro-batch's, a 500-job chunk's) writes one shard."""
FIELD = "in_flight"
COUNTED_FLAG = "in_flight_counted"
"""Set on every job document when it is created (its +1 is in the same commit); only such a job's
end moves the count, so jobs from before the counters existed never make it drift."""
IN_FLIGHT = frozenset({"queued", "running"})
"""The statuses that count against a tenant's cap."""
_RESERVED = re.compile(r"^(\.{1,2}|__.*__)$")


def in_flight_delta(before: str | None, after: str) -> int:
    """+1 when a job enters queued/running from outside them (``before`` None: it is new), -1
    when it leaves them, 0 otherwise."""
    return int(after in IN_FLIGHT) - int(before in IN_FLIGHT)


def tenant_doc_id(tenant: str) -> str:
    """The tenant's document id: its name, escaped only where Firestore reserves the id
    (``.``, ``..``, ``__name__``); tenant names are ``[A-Za-z0-9_.-]{1,64}``."""
    return f"~{tenant}" if _RESERVED.match(tenant) else tenant


def shard_paths(tenant: str) -> list[tuple[str, ...]]:
    """The path parts of each of the tenant's shards, for ``client.document(*parts)``."""
    doc_id = tenant_doc_id(tenant)
    return [(TENANTS, doc_id, COUNTERS, str(i)) for i in range(TENANT_SHARDS)]


def in_flight_of(shards: list[dict[str, Any]]) -> int:
    """The tenant's jobs in flight from its shards' documents (never below 0)."""
    return max(0, sum(int(shard.get(FIELD) or 0) for shard in shards))
