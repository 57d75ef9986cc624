"""The result cache for batch chunks (``schemas/resultcache.py`` for single jobs), in bulk:

- **Identical items within a chunk are computed once**: the model sees each distinct input line
  once, and the copies take its outcome (``unique``, ``fan_out``).
- **A chunk whose items were all computed before is not computed again**: one entry per chunk,
  keyed by the tenant, the task and the chunk's input lines (in order), holding every item's
  stored result. A batch sent again (the same file) finds each chunk's entry with one read a chunk
  and runs no model; the entry is written once the chunk has succeeded whole (one write per chunk,
  not per item, so a batch's writes per item barely move).

Only tasks with a fixed model identity (``embed``, ``similar``, ``entities``): a ``predict``
chunk's items may each name another model version. Entries expire with ``RESULT_TTL``, and the
identity check is the single jobs' (a new model image is a miss).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from common.googleapi import translated
from schemas import resultcache
from schemas.tasks import get_task
from worker.chunkstore import ChunkClaim, ChunkOutcome
from worker.errors import StoreUnavailable

SUCCEEDED = ord("s")
logger = logging.getLogger(__name__)


def unique(inputs: list[bytes], todo: tuple[int, ...]) -> tuple[tuple[int, ...], dict[int, int]]:
    """The positions to compute (the first of each distinct input line) and, for every other
    position, the one whose outcome it copies."""
    first: dict[bytes, int] = {}
    copies: dict[int, int] = {}
    for position in todo:
        line = inputs[position] if position < len(inputs) else b""
        source = first.setdefault(line, position)
        if source != position:
            copies[position] = source
    return tuple(p for p in todo if p not in copies), copies


def fan_out(copies: dict[int, int], letters: bytearray, results: list[bytes], errors: Any) -> None:
    """Give each copy its source's outcome, where the source has one (``running`` otherwise: a
    stopped run's unfinished items stay unfinished)."""
    for position, source in copies.items():
        letters[position] = letters[source]
        results[position] = results[source]
        if str(source) in errors:
            errors[str(position)] = errors[str(source)]


class ChunkCache:
    def __init__(self, client: Any, timeout_s: float, result_ttl_s: float):
        self._entries = client.collection(resultcache.CACHE_COLLECTION)
        self._timeout_s = timeout_s
        self._result_ttl_s = result_ttl_s

    def _key(self, tenant: str, task: str, inputs: list[bytes], todo: tuple[int, ...]) -> Any:
        identity = get_task(task).model
        if identity is None or identity == resultcache.PER_VERSION or not todo:
            return None, None
        digest = hashlib.sha256(f"chunk\x00{tenant}\x00{task}\x00".encode())
        for position in todo:
            digest.update(inputs[position] if position < len(inputs) else b"")
            digest.update(b"\n")
        return self._entries.document(f"c{digest.hexdigest()}"), identity

    def lookup(self, claim: ChunkClaim) -> list[bytes] | None:
        """Every ``todo`` item's stored result from an earlier run of the same items; None."""
        tenant, todo = claim.tenant, claim.todo
        ref, identity = self._key(tenant, claim.task, claim.inputs, todo)
        if ref is None:
            return None
        try:
            with translated(StoreUnavailable, "chunk cache read"):
                snapshot = ref.get(timeout=self._timeout_s)
        except StoreUnavailable as exc:
            logger.warning("%s; the chunk runs", exc)
            return None
        entry = snapshot.to_dict() if snapshot.exists else None
        if not resultcache.hit(entry, tenant, identity, datetime.now(UTC)):
            return None
        assert entry is not None
        results = entry["result"].get("items") or []
        return list(results) if len(results) == len(todo) else None

    def store(self, claim: ChunkClaim, outcome: ChunkOutcome) -> None:
        """Keep the results of a chunk whose ``todo`` items all succeeded (best effort)."""
        todo = claim.todo
        if any(outcome.letters[p] != SUCCEEDED for p in todo):
            return
        ref, identity = self._key(claim.tenant, claim.task, claim.inputs, todo)
        if ref is None:
            return
        entry = resultcache.entry_document(
            tenant=claim.tenant,
            task=claim.task,
            identity=identity,
            result={"items": [outcome.results[p] for p in todo]},
            now=datetime.now(UTC),
            result_ttl_s=self._result_ttl_s,
        )
        try:
            with translated(StoreUnavailable, "chunk cache write"):
                ref.set(entry, timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - an entry too large, an outage: no cache, no harm
            logger.warning("chunk results not cached: %s", exc)
