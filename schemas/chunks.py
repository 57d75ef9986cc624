"""Batch chunks: a batch's items, grouped into units of work that run, retry and count together.

A batch item is not a job. At acceptance its items are cut into **chunks** (by count, and by bytes
so that a chunk's inputs plus its worst-case results fit one Firestore document); a chunk is one
document, ``batches/BATCH/chunks/CHUNK``, and one Pub/Sub message. A chunk is claimed, leased,
fenced, retried, dead-lettered and reconciled exactly as a job is (``schemas/jobstate.py`` runs on
its document unchanged: ``status``, ``attempts``, ``attempt_token``, ``lease_expires_at``,
``terminal_writes``); its items are not units of work, they are positions in it.

The chunk document (fields beside jobstate's own):

- ``tenant``, ``task``, ``batch_id``, ``batch_path`` (so ``CountDeltas`` finds the batch's
  counters, as it does for jobs), ``part`` (the part that brought it: 0 for the creating request),
  ``in_flight_counted`` (its items count against the tenant's in-flight cap: ``schemas/quota.py``
  counts **items**, a job being one).
- ``start`` (the batch index of its first item) and ``n`` (how many items); a retry chunk's items
  are not contiguous, so it carries ``indexes`` (each item's batch index) instead of ``start``.
- ``inputs``: bytes, the items' validated inputs as JSON lines (``pack_inputs``); one value for
  the whole chunk, exempt from indexing, so acceptance encodes one field per chunk, not per item.
- ``items``: a string of one status letter per item (``ITEM_CODES``), ``q`` at creation.
- At the chunk's terminal commit: ``results`` (a list of bytes, one per item, ``b""`` where none:
  ``pack_result``), ``errors`` (``{"POS": {"code", "message"}}``), ``done_at`` (the commit's server
  timestamp: the cursor of item events, ``event_id``).
- ``moved``: ``{"POS": RETRY_CHUNK_ID}`` for failed items a retry moved to a new chunk (their
  letter becomes ``>``): the item's latest outcome is the retry chunk's.

Status: ``pending`` while the request that writes it is still being accepted (no message yet, no
counts; a request that dies leaves it to its TTL), then ``held`` while its batch already has its
window of chunks published (``HELD``: counted as queued, no message; docs/scheduling.md), then
``queued`` → ``running`` → a terminal one:
``succeeded`` (it ran to its end; each item succeeded or failed on its own), ``failed`` (attempts
exhausted: every item not yet ended fails), ``cancelled`` (its batch was cancelled: items not
started end ``cancelled``, items finished keep their outcome).

Counts stay item counts (``schemas/batches.py``): every writer that moves a chunk moves its items'
counts in the same commit, ``CountDeltas.move(chunk_doc, to, count=k)``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore import SERVER_TIMESTAMP
from pydantic import BaseModel, ConfigDict, Field

from schemas.batches import CountDeltas
from schemas.jobs import JobStatus
from schemas.quota import COUNTED_FLAG

CHUNKS = "chunks"
"""The subcollection of a batch document that holds its chunks."""
PENDING = "pending"
"""A chunk written by a request that is not accepted yet (not a job status: nothing claims it)."""
HELD = "held"
"""An accepted chunk kept back, unpublished, while its batch has ``window`` chunks queued or
running: released (``queued``, published) as one of them ends. Its items count as queued; nothing
claims it (not a job status)."""
NOT_STARTED = [JobStatus.QUEUED.value, HELD]
"""The statuses of a chunk no attempt has started: what a cancel ends whole."""
DEFAULT_WINDOW_CHUNKS = 8
"""``BATCH_WINDOW_CHUNKS``: chunks of one batch published at once (times its tenant's weight).
Pub/Sub delivers roughly in publish order, so this is how far a large batch can be ahead of a
batch submitted after it: active batches share the workers round-robin, chunk by chunk."""

ID_DIGITS = 10
"""An original chunk's id is its ``start``, zero-padded: ids sort in input order."""
RETRY_PREFIX = "r"
"""Retry chunks' ids start with it, so they sort after every original chunk."""

DOC_BUDGET_BYTES = 900_000
"""What a chunk's inputs plus its items' worst-case results may take: Firestore's document limit
is 1 MiB (1,048,576 bytes), less room for the other fields and the errors."""
ITEM_OVERHEAD_BYTES = 48
"""Per item in a chunk document beside input and result (a status letter, list entries)."""
CHUNK_ITEMS = {"embed": 256, "similar": 64, "entities": 64, "forecast": 8, "predict": 64}
"""Default items per chunk, per task (``CHUNK_ITEMS_<TASK>`` overrides): enough that a chunk's
one claim, commit and message cost little per item, few enough that a chunk runs in seconds."""
DEFAULT_CHUNK_ITEMS = 64

# Item status letters in ``items``.
ITEM_CODES = {
    "q": "queued",
    "r": "running",
    "s": "succeeded",
    "f": "failed",
    "c": "cancelled",
}
MOVED = ">"
"""A failed item a retry moved to another chunk."""
CODE_OF = {status: code for code, status in ITEM_CODES.items()}


UNFINISHED = {CODE_OF["queued"]: JobStatus.QUEUED, CODE_OF["running"]: JobStatus.RUNNING}
"""The letters of items not ended yet, and the status each one's count is in."""
END_FIELDS = ["status", "items", "n", "errors", "tenant", "batch_path", COUNTED_FLAG]
"""What ``end_unfinished`` reads of a chunk: a read for it needs no inputs or results."""


def chunk_id(start: int) -> str:
    return f"{start:0{ID_DIGITS}d}"


def chunk_path(batch_path: str, chunk: str) -> str:
    return f"{batch_path}/{CHUNKS}/{chunk}"


def item_indexes(doc: dict[str, Any]) -> list[int]:
    """Each position's batch index."""
    if doc.get("indexes") is not None:
        return [int(i) for i in doc["indexes"]]
    start = int(doc["start"])
    return list(range(start, start + int(doc["n"])))


def end_unfinished(
    doc: dict[str, Any], to: JobStatus, deltas: CountDeltas, error: dict[str, str] | None = None
) -> dict[str, Any]:
    """The changes that end every item of chunk ``doc`` not ended yet (``q``, or ``r`` of an
    attempt that died) ``to`` (a failure with ``error`` for each); items that ended keep their
    outcome. ``deltas`` gets their counts, each from the status its letter is counted in,
    whatever the chunk's own status. With ``done_at``; the caller adds ``jobstate.terminal``'s."""
    letters = str(doc.get("items") or "").ljust(int(doc.get("n") or 0), CODE_OF["queued"])
    for code, status in UNFINISHED.items():
        deltas.move({**doc, "status": status.value}, to, count=letters.count(code))
    ended = CODE_OF[to.value]
    changes: dict[str, Any] = {
        "items": "".join(ended if code in UNFINISHED else code for code in letters),
        "done_at": SERVER_TIMESTAMP,
    }
    if error is not None:
        errors = dict(doc.get("errors") or {})
        errors.update({str(i): error for i, code in enumerate(letters) if code in UNFINISHED})
        changes["errors"] = errors
    return changes


# -- sizes ------------------------------------------------------------------------------------


def result_bound(task: str, task_input: BaseModel, input_bytes: int) -> int:
    """The most bytes this input's stored result can take (``pack_result``), for chunk sizing.

    Exact for ``embed`` (float32 vectors); generous estimates elsewhere. A result past its bound
    still gets stored if the chunk has room, else that item fails ``result_too_large``."""
    if task == "embed":
        texts = len(getattr(task_input, "texts", ()) or ())
        return 96 + texts * 384 * 4
    if task == "forecast":
        return 64 + int(getattr(task_input, "horizon", 1) or 1) * 128
    if task == "similar":
        documents = len(getattr(task_input, "documents", ()) or ())
        return 64 + input_bytes + documents * 64
    if task == "entities":
        return 256 + input_bytes * 4
    return max(16 * 1024, input_bytes * 4)  # predict: the model decides; assume a lot


class ChunkCutter:
    """Decides where a stream of items is cut into chunks: ``fits`` says whether one more item
    of these sizes goes into the chunk being filled; ``add`` counts it in."""

    def __init__(self, max_items: int, budget_bytes: int = DOC_BUDGET_BYTES):
        self.max_items = max_items
        self.budget_bytes = budget_bytes
        self.items = 0
        self.used = 0

    def fits(self, input_bytes: int, result_bytes: int) -> bool:
        if self.items == 0:
            return True  # an item alone always makes a chunk
        if self.items >= self.max_items:
            return False
        return self.used + input_bytes + result_bytes + ITEM_OVERHEAD_BYTES <= self.budget_bytes

    def add(self, input_bytes: int, result_bytes: int) -> None:
        self.items += 1
        self.used += input_bytes + result_bytes + ITEM_OVERHEAD_BYTES

    def reset(self) -> None:
        self.items = 0
        self.used = 0


# -- inputs -------------------------------------------------------------------------------------


def pack_inputs(lines: Iterable[bytes]) -> bytes:
    """Validated inputs (each one JSON object on one line, no newline inside) as one value."""
    return b"\n".join(lines)


def unpack_inputs(data: bytes) -> list[bytes]:
    """Each item's input line; the worker validates each with ``model_validate_json``."""
    return data.split(b"\n") if data else []


# -- results ------------------------------------------------------------------------------------

_VECTORS = b"V"
_JSON = b"J"


def pack_result(task: str, result: dict[str, Any]) -> bytes:
    """An item's result (API shape) in its stored form: ``embed`` as a JSON header line and its
    vectors as little-endian float32 (1,536 bytes a vector, not ~8 KB of doubles); any other
    task as compact JSON (Firestore stores no arrays of arrays; bytes hold anything)."""
    if task == "embed":
        rows = result["embeddings"]
        header = {k: v for k, v in result.items() if k != "embeddings"}
        header["rows"] = len(rows)
        flat = [value for row in rows for value in row]
        packed = struct.pack(f"<{len(flat)}f", *flat)
        return _VECTORS + json.dumps(header, separators=(",", ":")).encode() + b"\n" + packed
    return _JSON + json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()


def unpack_result(data: bytes) -> dict[str, Any]:
    """The API shape of a stored result."""
    kind, body = data[:1], data[1:]
    if kind == _JSON:
        result: dict[str, Any] = json.loads(body)
        return result
    if kind != _VECTORS:
        raise ValueError("not a stored chunk result")
    line, _, packed = body.partition(b"\n")
    header: dict[str, Any] = json.loads(line)
    rows = int(header.pop("rows"))
    flat = struct.unpack(f"<{len(packed) // 4}f", packed)
    width = len(flat) // rows if rows else 0
    header["embeddings"] = [list(flat[i * width : (i + 1) * width]) for i in range(rows)]
    return header


# -- reading ------------------------------------------------------------------------------------


def item_line(
    index: int, doc: dict[str, Any], position: int, with_result: bool = True
) -> dict[str, Any]:
    """One line of ``GET /v1/batches/ID/results`` for the item at ``position`` of chunk ``doc``
    (the caller follows ``moved`` first): ``{"index", "status", "result"?, "error"?,
    "attempts"}``."""
    code = str(doc.get("items") or "")[position : position + 1]
    status = ITEM_CODES.get(code, "queued")
    line: dict[str, Any] = {"index": index, "status": status}
    if status == "succeeded" and with_result:
        results = doc.get("results") or []
        if position < len(results) and results[position]:
            line["result"] = unpack_result(results[position])
    if status == "failed":
        error = (doc.get("errors") or {}).get(str(position))
        if error:
            line["error"] = error
    line["attempts"] = int(doc.get("attempts") or 0) if status != "queued" else 0
    return line


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_id(done_at: datetime, chunk: str, position: int) -> str:
    """An ``item`` event's id: the chunk's commit time (µs), its id and the item's position.
    Ids order as completions happened (a commit's server timestamp), not by item index."""
    # Integer arithmetic: a float timestamp times 10**6 can round down by a microsecond.
    micros = (done_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros:016d}.{chunk}.{position:05d}"


_EVENT_ID = re.compile(r"([0-9]{16})\.([0-9a-z]{1,40})\.([0-9]{5})")
"""Exactly what ``event_id`` writes: ASCII digits of fixed length, so no client-sent id reaches
``int`` with other digits (``str.isdigit`` takes "²") or thousands of them."""


def parse_event_id(value: str) -> tuple[int, str, int] | None:
    """``(micros, chunk, position)`` from an ``event_id``; None when it is not one."""
    match = _EVENT_ID.fullmatch(value)
    if match is None:
        return None
    return int(match[1]), match[2], int(match[3])


class ChunkMessage(BaseModel):
    """The Pub/Sub message that names one chunk (``schemas/messages.py`` parses both kinds)."""

    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(min_length=1)
    chunk_id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
