"""The worker's half of the result cache (``schemas/resultcache.py``): each succeeded job that the
ingress gave a ``cache_key`` leaves its result there, in the commit that ends it, and ``predict``
results also record the highest version this worker knows of their model, so an unversioned
lookup is keyed on the version that would serve it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.cloud import firestore

from common import firestoreupdates
from schemas import resultcache
from schemas.tasks import get_task


class CacheWrites:
    def __init__(
        self,
        client: firestore.Client,
        result_ttl_s: float,
        latest_version: Callable[[str], int | None] | None = None,
    ):
        self._client = client
        self._entries = client.collection(resultcache.CACHE_COLLECTION)
        self._versions = client.collection(resultcache.MODEL_VERSIONS_COLLECTION)
        self._result_ttl_s = result_ttl_s
        self._latest_version = latest_version
        # What this worker last wrote per model: a version is written once, not with every job.
        # Plain dict operations from the settle threads (atomic under the GIL); a lost race only
        # writes the same version twice.
        self._reported: dict[str, int] = {}

    def add(
        self,
        writer: Any,
        *,
        key: str,
        tenant: str,
        task: str,
        result: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Add the entry of one succeeded job (and, for ``predict``, its model's latest version
        when it changed) to the commit ``writer`` builds."""
        identity = resultcache.served_identity(task, result)
        if identity is None:
            return
        entry = resultcache.entry_document(
            tenant=tenant,
            task=task,
            identity=identity,
            result=result,
            now=now,
            result_ttl_s=self._result_ttl_s,
        )
        ref = self._entries.document(key)
        try:  # built as protobuf: the client's set costs a third of a millisecond a job
            firestoreupdates.add(writer, firestoreupdates.set_write(ref._document_path, entry))
        except firestoreupdates.Unsupported:
            writer.set(ref, entry)
        if get_task(task).model == resultcache.PER_VERSION:
            name = str(result["model"])
            # One model's versions, not the whole catalogue: this runs for every predict job.
            latest = self._latest_version(name) if self._latest_version else None
            if latest is not None and self._reported.get(name) != latest:
                writer.set(self._versions.document(name), {"latest": latest, "at": now})
                self._reported[name] = latest
