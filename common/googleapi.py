"""How every service treats Google API failures: one classification, one bounded retry.

A request that fails with one of ``UNAVAILABLE`` failed because the service is unreachable or
overloaded, not because the request was wrong: the ingress answers 503, the worker nacks. Keeping
the list in one place means the two sides can never disagree on what "try again later" means.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

UNAVAILABLE: tuple[type[BaseException], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Unknown,
    gexc.Aborted,
    gexc.ResourceExhausted,
    gexc.RetryError,
    TimeoutError,
)


def bounded_retry(timeout_s: float) -> Retry:
    """The client's own retry, capped at ``timeout_s`` in all (its defaults retry for minutes)."""
    return Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout_s)


def is_contention(exc: ValueError) -> bool:
    """Whether a Firestore transaction gave up because of conflicting writers.

    google-cloud-firestore says "Failed to commit transaction in N attempts." with a bare
    ``ValueError``; any other ``ValueError`` is a bug and must not pass for contention."""
    return "Failed to commit transaction" in str(exc)
