"""Holding on through a Firestore outage, and the shutdown's two stages that end the holding.

Firestore being unreachable is not a task failure: a call is retried with backoff while the
messages wait (the Pub/Sub client keeps extending their leases), so an outage cannot burn delivery
attempts. Only once the shutdown's grace period is over does a retry give up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from worker.errors import StoreUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORE_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits between retries of a Firestore call during an outage (the last one repeats)."""


class Hold:
    """The worker's shutdown state, and ``hold(call)``: a Firestore call that outlasts an outage.

    ``draining`` (stage one): start no new job. ``abandoned`` (stage two, the grace period is
    over): jobs in hand stop, and a held call gives up. Both only ever go from unset to set."""

    def __init__(self) -> None:
        self.draining = threading.Event()
        self.abandoned = threading.Event()

    def drain(self) -> None:
        self.draining.set()

    def abandon(self) -> None:
        self.draining.set()
        self.abandoned.set()

    def __call__(self, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while Firestore is unavailable, until it answers or
        the shutdown's grace period is over (then ``StoreUnavailable`` propagates)."""
        attempt = 0
        while True:
            try:
                return call()
            except StoreUnavailable as exc:
                if self.abandoned.is_set():
                    raise
                wait_s = STORE_BACKOFF_S[min(attempt, len(STORE_BACKOFF_S) - 1)]
                logger.warning("Firestore unavailable (%s); retrying in %.1fs", exc, wait_s)
                if self.abandoned.wait(wait_s):
                    raise
                attempt += 1
