"""The one way every service calls Firestore (and the few Pub/Sub calls that can fail): one
classification of Google API errors, one translation into each service's own error, one
transaction policy. No other module catches a Google API error (``tests/unit/test_layout.py``).

Errors, after ``translated`` or ``run_transaction``:

    the service's "unavailable" error   transient: unreachable, overloaded, timed out, contended
                                        (ingress ``StoreUnavailable`` → 503; worker: nack; ...)
    BackendError                        the backend answered, and the answer is final
    ├── AlreadyExists                   a create found the document (or topic) there already
    ├── PreconditionFailed              a write's precondition (update time, existence) failed
    ├── Missing                         the document (or resource) is not there
    └── Refused                         any other final refusal: forbidden, unimplemented...
        └── Invalid                     the request itself is invalid: too large, too deep

A request that fails with one of ``UNAVAILABLE`` failed because the service is unreachable or
overloaded, not because the request was wrong: the ingress answers 503, the worker nacks. Keeping
the list in one place means the services can never disagree on what "try again later" means.

Transactions (``run_transaction``), one policy for all: the client's own retry of a commit that
lost to a conflicting writer, ``TRANSACTION_ATTEMPTS`` tries in all, each retry keeping the first
try's place in line (Firestore's ``retry_transaction``, so no backoff is needed); past that, or on
any transient error, the service's "unavailable" error. The function's own exceptions pass
through untouched, and nothing is retried after a transient error: the caller (a 503, a nack, the
next sweep) retries the whole step, which re-reads what it decides on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

if TYPE_CHECKING:
    from google.cloud import firestore

T = TypeVar("T")

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

TRANSACTION_ATTEMPTS = 5
"""Tries of one transaction whose commit loses to a conflicting writer (the client's default)."""

ErrorFactory = Callable[[str], BaseException]
"""A service's transient error: called with a message, e.g. ``StoreUnavailable``."""


class BackendError(Exception):
    """A Google API call failed for good: retrying the same request gets the same answer."""


class AlreadyExists(BackendError):
    """A create found its document (or resource) there already."""


class PreconditionFailed(BackendError):
    """A write's precondition failed: the document changed since read, or exists, or does not."""


class Missing(BackendError):
    """The document (or resource) is not there."""


class Refused(BackendError):
    """Any other final refusal: a missing permission, an unimplemented call."""


class Invalid(Refused):
    """The request itself is invalid (``InvalidArgument``): a document too large or too deep."""


def bounded_retry(timeout_s: float) -> Retry:
    """The client's own retry, capped at ``timeout_s`` in all (its defaults retry for minutes)."""
    return Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout_s)


@contextlib.contextmanager
def translated(unavailable: ErrorFactory, what: str, backend: str = "Firestore") -> Iterator[None]:
    """Run the block's Google API calls, their errors translated (module docstring): transient
    ones into ``unavailable("<backend> <what> failed: <error>")``, final ones into
    ``BackendError``'s tree. ``what`` names the call: "job read", "chunk commit"."""
    try:
        yield
    except gexc.AlreadyExists as exc:
        raise AlreadyExists(f"{what}: {exc.message}") from exc
    except gexc.FailedPrecondition as exc:
        raise PreconditionFailed(f"{what}: {exc.message}") from exc
    except gexc.NotFound as exc:
        raise Missing(f"{what}: {exc.message}") from exc
    except gexc.InvalidArgument as exc:
        raise Invalid(exc.message) from exc
    except UNAVAILABLE as exc:
        raise unavailable(f"{backend} {what} failed: {type(exc).__name__}") from exc
    except gexc.GoogleAPIError as exc:
        raise Refused(f"{what}: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def failing_as(error: ErrorFactory, what: str) -> Iterator[None]:
    """Every Google API error of the block, transient or not, and a timeout, as ``error``: for a
    call whose every failure means the same to its caller (a publish that did not land)."""
    try:
        yield
    except (gexc.GoogleAPIError, TimeoutError) as exc:
        raise error(f"{what} failed: {type(exc).__name__}") from exc


def run_transaction(
    client: firestore.Client,
    function: Callable[[firestore.Transaction], T],
    *,
    unavailable: ErrorFactory,
    what: str,
) -> T:
    """``function(transaction)`` in a Firestore transaction, committed; its result.

    One policy (module docstring): up to ``TRANSACTION_ATTEMPTS`` tries when the commit loses to
    a conflicting writer, then ``unavailable``; a transient error at once ``unavailable``; a final
    one ``BackendError``'s tree; the function's own exceptions as they are. ``function`` must
    read before it writes and may run more than once: it decides on what it reads each time."""
    from google.cloud import firestore

    transactional: Any = firestore.transactional(function)
    with translated(unavailable, what):
        try:
            result: T = transactional(client.transaction(max_attempts=TRANSACTION_ATTEMPTS))
        except ValueError as exc:
            # The client says "Failed to commit transaction in N attempts." with a bare
            # ValueError; any other ValueError is the function's own and must not pass for
            # contention.
            if "Failed to commit transaction" not in str(exc):
                raise
            raise unavailable(f"Firestore {what} contended: {exc}") from exc
    return result
