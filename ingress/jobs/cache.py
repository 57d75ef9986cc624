"""Result-cache lookups at submit (``schemas/resultcache.py`` says what a hit is).

One read per cacheable submission: the entry, and for an unversioned ``predict`` the model's
latest version beside it, in one ``get_all``. A lookup that fails is a miss: the job runs, which
is always correct, rather than a 503 for something the cache only speeds up.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from common.googleapi import bounded_retry, translated
from ingress.errors import StoreUnavailable
from schemas import resultcache

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0
"""Longest a lookup may take before the job is queued as a miss: far under a model call."""


class ResultCache:
    def __init__(self, client: firestore.Client, timeout_s: float = LOOKUP_TIMEOUT_S):
        self._client = client
        self._entries = client.collection(resultcache.CACHE_COLLECTION)
        self._versions = client.collection(resultcache.MODEL_VERSIONS_COLLECTION)
        self._timeout_s = timeout_s
        self._retry = bounded_retry(timeout_s)

    def reference(self, key: str) -> Any:
        """The entry at ``key`` (deleted with the job that carries the key)."""
        return self._entries.document(key)

    def lookup(
        self, key: str, tenant: str, task: str, stored_input: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The stored result ``tenant``'s request would get from the cache, or None (a miss)."""
        entry_ref = self._entries.document(key)
        refs = [entry_ref]
        model = resultcache.versions_document(stored_input, task)
        if model is not None:
            refs.append(self._versions.document(model))
        try:
            with translated(StoreUnavailable, "result cache lookup"):
                snapshots = {
                    s.reference.path: s.to_dict() if s.exists else None
                    for s in self._client.get_all(refs, retry=self._retry, timeout=self._timeout_s)
                }
        except StoreUnavailable as exc:
            logger.warning("%s; treated as a miss", exc)
            return None
        versions = snapshots.get(refs[1].path) if model is not None else None
        identity = resultcache.wanted_identity(task, stored_input, versions)
        entry = snapshots.get(entry_ref.path)
        if not resultcache.hit(entry, tenant, identity, datetime.now(UTC)):
            return None
        assert entry is not None
        result: dict[str, Any] = entry["result"]
        return result
