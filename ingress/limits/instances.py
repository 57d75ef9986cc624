"""How many ingress processes are serving: a heartbeat registry in Firestore.

Each process (each gunicorn worker of each Cloud Run instance) writes
``ingress_instances/{random id}`` every ``INSTANCE_HEARTBEAT_S`` (``seen_at``, and ``expire_at``
for Firestore's TTL policy, which deletes what a crashed process left), then counts the documents
seen within ``LIVE_BEATS`` beats. The rate limiter divides each tenant's rate by that count
(``ingress/limits/ratelimit.py``). A beat that fails keeps the last count: requests never wait on
the registry, and a Firestore outage leaves the split as it was. A process that stops deletes its
document, so the others see it gone at their next beat.

Runs only when some tenant has a rate limit; one document write and one ``count()`` per process
per beat.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from ingress.settings import HEARTBEAT_S, INSTANCES_COLLECTION

logger = logging.getLogger(__name__)

LIVE_BEATS = 3
"""A process not seen for this many heartbeats is gone."""
EXPIRE_BEATS = 30
"""Firestore's TTL deletes a document this many heartbeats after its last ``seen_at``."""


class InstanceRegistry:
    """This process's heartbeat, and the number of live processes (at least 1: this one)."""

    def __init__(
        self,
        client: Any,
        collection: str = INSTANCES_COLLECTION,
        heartbeat_s: float = HEARTBEAT_S,
        timeout_s: float = 5.0,
    ):
        self.instance_id = secrets.token_hex(8)
        self._collection = client.collection(collection)
        self._heartbeat_s = heartbeat_s
        self._timeout_s = min(timeout_s, heartbeat_s * 2)
        # Guards _live, _thread and _started; never held across a Firestore call.
        self._lock = threading.Lock()
        self._live = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def live(self) -> int:
        """Live ingress processes, as the last successful beat counted them (1 before it)."""
        with self._lock:
            return self._live

    def start(self) -> None:
        """Start beating (the first beat at once); a second call does nothing."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._thread = threading.Thread(
                target=self._run, name="omni-instance-heartbeat", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop beating and delete this process's document; a second call does nothing."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout_s)
        try:
            self._collection.document(self.instance_id).delete(timeout=self._timeout_s)
        except Exception:  # noqa: BLE001 - best effort: the others stop counting it in 3 beats
            logger.warning("could not remove this instance from the registry", exc_info=True)

    def beat(self) -> int:
        """Write this process's heartbeat and count the live ones; raises what Firestore
        raises (``_run`` keeps the last count then)."""
        now = datetime.now(UTC)
        self._collection.document(self.instance_id).set(
            {
                "seen_at": now,
                "expire_at": now + timedelta(seconds=self._heartbeat_s * EXPIRE_BEATS),
            },
            timeout=self._timeout_s,
        )
        since = now - timedelta(seconds=self._heartbeat_s * LIVE_BEATS)
        query = self._collection.where(filter=FieldFilter("seen_at", ">=", since))
        result = query.count().get(timeout=self._timeout_s)
        live = max(1, int(result[0][0].value))
        with self._lock:
            changed, self._live = live != self._live, live
        if changed:
            logger.info("ingress instances now %s", live, extra={"instances": live})
        return live

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a helper thread: log, keep the last count
                logger.warning("instance heartbeat failed; keeping the last count", exc_info=True)
            if self._stop.wait(self._heartbeat_s):
                return
