"""What the worker's two stores share (``worker/store.py`` for jobs, ``worker/chunkstore.py`` for
batch chunks): Firestore reads and commits whose outages raise ``StoreUnavailable``, the update
times of this worker's own writes, and the lease checks and renewals of the attempts it runs.

Every call goes through ``common.googleapi`` (``translated``, ``run_transaction``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.cloud import firestore

from common import firestoreupdates
from common.googleapi import PreconditionFailed, bounded_retry, run_transaction, translated
from schemas import jobstate
from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from worker.errors import StoreUnavailable

T = TypeVar("T")
MAX_VERSIONS = 10_000
"""Update times kept for optimistic writes; beyond it they are dropped (writes fall back to
transactions, correct but slower)."""


class AttemptStore:
    """What ``JobStore`` and ``worker.chunkstore.ChunkStore`` share: Firestore reads and commits
    whose outages raise ``StoreUnavailable``, the update times of this worker's own writes, and
    the lease checks and renewals of the attempts it runs."""

    RENEWAL = "lease renewal"
    """What a failed lease renewal's log line calls it."""

    def __init__(
        self,
        client: firestore.Client,
        *,
        timeout_s: float,
        lease_s: float,
        result_ttl_s: float,
    ):
        self._client = client
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)
        self.lease_s = lease_s
        self._result_ttl_s = result_ttl_s
        # Attempt token -> update time of this worker's last write to the document (claim, renewal).
        # No lock: the gather thread (claims), the settle threads (terminal writes, releases) and
        # the watcher (renewals) each do single gets, sets and pops, atomic under the GIL, on
        # distinct tokens but for a renewal racing its own terminal write. Whatever a race loses
        # is a missing version, which only sends that write down the transactional path.
        self._versions: dict[str, Any] = {}
        self._logger = logging.getLogger(type(self).__module__)  # the subclass's module logs

    def _get_all(
        self, refs: list[Any], what: str, field_paths: list[str] | None = None
    ) -> list[Any]:
        """The snapshots of ``refs`` (outside a transaction)."""
        with translated(StoreUnavailable, what):
            return list(
                self._client.get_all(
                    refs, field_paths=field_paths, retry=self._retry, timeout=self._timeout_s
                )
            )

    def _commit(self, write: Any, what: str) -> list[Any] | None:
        """Commit an optimistic batch of writes: its results, or None if one of its
        update-time preconditions failed (a document changed since it was read)."""
        try:
            with translated(StoreUnavailable, what):
                results: list[Any] = write.commit(retry=self._retry, timeout=self._timeout_s)
            return results
        except PreconditionFailed:
            return None

    def _verdict(
        self,
        snapshot: Any,
        doc: dict[str, Any] | None,
        token: str,
        now: datetime,
        cancel: bool = False,
    ) -> str:
        """``check``'s verdict on one claim from its document: ``ok`` (``cancelled`` with
        ``cancel``) while the attempt owns it, ``cancelled`` once it was, otherwise ``lost``.
        Renews the lease of an owned claim whose lease is past half-way; a renewal that loses a
        race is retried at the next check."""
        if jobstate.owned_by(doc, token):
            assert doc is not None
            lease = doc.get("lease_expires_at")
            if lease is None or lease - now < timedelta(seconds=self.lease_s / 2):
                self._renew(snapshot, token)
            return "cancelled" if cancel else "ok"
        if doc is not None and doc.get("status") == JobStatus.CANCELLED.value:
            return "cancelled"
        return "lost"

    def _renew(self, snapshot: Any, token: str) -> None:
        self._versions.pop(token, None)  # unknown until the renewal answers
        try:
            with translated(StoreUnavailable, self.RENEWAL):
                result = snapshot.reference.update(
                    jobstate.renewed(datetime.now(UTC), self.lease_s),
                    option=self._client.write_option(last_update_time=snapshot.update_time),
                    timeout=self._timeout_s,
                )
            self._versions[token] = result.update_time
        except PreconditionFailed:
            pass  # someone wrote it since we read it; the next check decides what that means
        except StoreUnavailable as exc:
            self._logger.warning("%s", exc)  # "Firestore lease renewal failed: <error>"

    def _fenced(
        self,
        ref: Any,
        token: str,
        what: str,
        changes: Callable[[dict[str, Any], datetime], tuple[dict[str, Any], CountDeltas]],
        field_paths: list[str] | None = None,
    ) -> bool:
        """Write ``changes(doc, now)`` and their counts in a transaction, only while the attempt
        ``token`` owns the document (``field_paths``: what to read of it); False otherwise."""

        def _write(transaction: firestore.Transaction) -> bool:
            (snapshot,) = self._client.get_all(
                [ref], field_paths=field_paths, transaction=transaction
            )
            doc = snapshot.to_dict() if snapshot.exists else None
            if doc is None or not jobstate.owned_by(doc, token):
                return False
            now = datetime.now(UTC)
            update, deltas = changes(doc, now)
            transaction.update(ref, update)
            deltas.write(transaction, self._client, now)
            return True

        written: bool = self._run(_write, what, ref.path)
        return written

    def _update(self, batch: Any, ref: Any, changes: dict[str, Any], last_update_time: Any) -> None:
        """``batch.update(ref, changes)`` conditioned on ``last_update_time``: built from protobuf
        directly (``common.firestoreupdates``), the client's way for what that does not encode."""
        try:
            write = firestoreupdates.update_write(ref._document_path, changes, last_update_time)
        except firestoreupdates.Unsupported:
            option = self._client.write_option(last_update_time=last_update_time)
            batch.update(ref, changes, option=option)
            return
        firestoreupdates.add(batch, write)

    def _run(self, function: Callable[[firestore.Transaction], T], what: str, subject: str) -> T:
        """Run a transaction (``common.googleapi.run_transaction``); ``subject`` names what it
        writes in an error message."""
        return run_transaction(
            self._client, function, unavailable=StoreUnavailable, what=f"{what} for {subject}"
        )
