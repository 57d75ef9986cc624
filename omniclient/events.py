"""What an ``OmniClient`` hands back besides plain JSON: job and batch events, and where a batch
upload stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

Json = dict[str, Any]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""Job and batch statuses that never change again."""


class JobEvent(NamedTuple):
    """One event of ``GET /v1/jobs/ID/events``: the status as name, its id, the job."""

    name: str
    id: str
    data: Json


class BatchEvent(NamedTuple):
    """One event of ``GET /v1/batches/ID/events``: progress, item or done, with its data and id
    (a cursor over completions: the stream resumes after it)."""

    name: str
    data: Json
    id: str = ""


class UploadProgress(NamedTuple):
    """Where a batch upload stands, told to ``submit_batch``'s ``on_upload`` as it goes."""

    batch_id: str | None
    """None until the batch exists (a single request's batch is made by its answer)."""
    sent_bytes: int
    total_bytes: int | None
    parts_done: int
    parts: int
    items_accepted: int
    items: int | None
    """The file's items (non-blank lines), when it was planned; else None."""


OnUpload = Callable[[UploadProgress], None]
