"""``OmniClient``'s batch calls: uploads (one request, or an open batch fed in parts and closed),
reading, cancelling and retrying a batch. The files themselves are read and cut into parts by
omniclient/upload.py; the results and the event stream are omniclient/client.py's.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from omniclient.errors import OmniClientError, OmniConnectionError, OmniError
from omniclient.events import Json, OnUpload, UploadProgress
from omniclient.session import BACKOFF_S, MAX_RETRY_WAIT_S, MAX_TRIES, ApiSession, resource_path
from omniclient.upload import (
    PART_MAX_BYTES,
    PART_MAX_ITEMS,
    Part,
    part_upload,
    plan_parts,
    splittable,
    upload_source,
)

UPLOAD_TIMEOUT_S = 300.0
"""How long a batch upload may wait for its answer (the server validates every line), seconds."""
BUSY_WAIT_S = 8.0
"""Longest wait between two tries of a part or a close refused while a part is being appended."""
NDJSON = "application/x-ndjson"

_BUSY = ("is being appended", "still being accepted")
"""What the ingress's 409 says when a part is being appended: ask again once it is answered."""


class Batches(ApiSession):
    """The batch calls of ``OmniClient`` but its results and events."""

    def submit_batch(
        self,
        task: str,
        items: Iterable[Json] | str | os.PathLike[str] | IO[bytes] | IO[str],
        metadata: dict[str, str] | None = None,
        *,
        part_bytes: int = PART_MAX_BYTES,
        part_items: int = PART_MAX_ITEMS,
        batch_id: str | None = None,
        on_upload: OnUpload | None = None,
    ) -> Json:
        """``POST /v1/batches``: a list of inputs as JSON, or an NDJSON file streamed from disk.

        ``items`` is a path or an open file of NDJSON (one input per line; ``?task=`` names the
        task), or an iterable of input dicts. A file is read in pieces, never whole; a retry reads
        it again from the start, so a file that cannot seek is tried once.

        A file over one request's limits (``part_bytes``, ``part_items``) is sent in parts: an
        open batch, each part (``add_batch_items``), then ``close_batch``; the answer is the
        closed batch. With ``batch_id`` the file's parts go to that open batch instead: sent
        again after an interrupted upload, the parts it already has append nothing.
        ``on_upload`` is told the progress of the upload as each piece goes out and as each part
        is accepted.
        """
        if isinstance(items, str | os.PathLike) or hasattr(items, "read"):
            if metadata:
                raise ValueError("metadata needs a JSON batch (a list of items), not NDJSON")
            source: str | os.PathLike[str] | IO[bytes] | IO[str] = items  # type: ignore[assignment]
            if splittable(source):
                parts = plan_parts(source, part_bytes, part_items)
                if len(parts) > 1 or batch_id is not None:
                    return self._submit_parts(task, source, parts, batch_id, on_upload)
                return self._submit_file(task, source, parts[0], on_upload)
            if batch_id is not None:
                raise ValueError("batch_id needs a path or a seekable binary file")
            return self._submit_file(task, source, None, on_upload)
        if batch_id is not None:
            raise ValueError("batch_id needs an NDJSON file, not a list of items")
        body: Json = {"task": task, "items": list(items)}
        if metadata:
            body["metadata"] = metadata
        return self._json(
            "POST",
            "/v1/batches",
            json=body,
            create=True,
            timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
        )

    def open_batch(self, task: str) -> Json:
        """``POST /v1/batches?task=T&open=1``: an empty batch that takes parts until closed."""
        return self._json(
            "POST",
            "/v1/batches",
            params={"task": task, "open": "1"},
            content=lambda: iter(()),
            headers={"Content-Type": NDJSON, "Content-Length": "0"},
            create=True,
        )

    def add_batch_items(
        self,
        batch_id: str,
        items: str | os.PathLike[str] | IO[bytes],
        key: str | None = None,
        *,
        part: Part | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> Json:
        """``POST /v1/batches/ID/items``: one NDJSON part (a whole file, or ``part`` of it),
        indexed after the parts before it; the batch. The ``Idempotency-Key`` is ``key``, else
        one derived from the batch, the part's number and its bytes, so sending the same part
        again appends nothing."""
        upload = part_upload(items, part, on_sent) if part else upload_source(items, on_sent)
        if key is None and part is not None:
            key = f"part-{batch_id}-{part.number}-{part.digest[:32]}"
        elif key is None:
            # A file that cannot be read twice gets a key of its own: still one per try.
            digest = _file_digest(items) if upload.replayable else uuid.uuid4().hex
            key = f"part-{batch_id}-1-{digest[:32]}"
        headers = {"Content-Type": NDJSON}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
        return self._while_busy(
            lambda: self._json(
                "POST",
                resource_path("batches", batch_id, "items"),
                content=upload.chunks,
                headers=headers,
                idempotency_key=key,
                replay_safe=upload.replayable,
                tries=MAX_TRIES if upload.replayable else 1,
                timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
            )
        )

    def close_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/close``: no more parts; the batch runs to its end."""
        return self._while_busy(
            lambda: self._json("POST", resource_path("batches", batch_id, "close"))
        )

    def _while_busy(self, call: Callable[[], Json]) -> Json:
        """``call``, again while the batch answers 409 because a part is being appended (this
        very part, when a replay after a dropped answer overtook its first try): it will be
        answered shortly. ``MAX_RETRY_WAIT_S`` of waiting at most."""
        waited = 0.0
        delay = BACKOFF_S
        while True:
            try:
                return call()
            except OmniError as exc:
                busy = exc.status == 409 and any(m in str(exc.detail) for m in _BUSY)
                if not busy or waited + delay > MAX_RETRY_WAIT_S:
                    raise
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2, BUSY_WAIT_S)

    def list_batches(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Json]:
        """``GET /v1/batches``, every page: this key's batches with their counts, newest first."""
        return self._pages(
            "batches", page_size, status=status, task=task, created_after=created_after,
            created_before=created_before,
        )  # fmt: skip

    def get_batch(self, batch_id: str) -> Json:
        return self._json("GET", resource_path("batches", batch_id))

    def get_batch_item(self, batch_id: str, index: int) -> Json:
        """``GET /v1/batches/ID/items/INDEX``: one item's results line."""
        return self._json("GET", resource_path("batches", batch_id, "items", str(int(index))))

    def delete_batch(self, batch_id: str) -> None:
        """``DELETE /v1/batches/ID``: the batch, its items and results gone (running ones stop)."""
        self._send("DELETE", resource_path("batches", batch_id))

    def cancel_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/cancel``: items not yet started end cancelled."""
        return self._json("POST", resource_path("batches", batch_id, "cancel"))

    def retry_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/retry``: exactly the failed items run again."""
        return self._json("POST", resource_path("batches", batch_id, "retry"), create=True)

    def _submit_file(
        self,
        task: str,
        source: str | os.PathLike[str] | IO[bytes] | IO[str],
        part: Part | None,
        on_upload: OnUpload | None,
    ) -> Json:
        """The whole file as one ``POST /v1/batches``."""
        report = _UploadReport(on_upload, [part] if part else [], None)
        upload = upload_source(source, report.sent if on_upload else None)
        if report.total_bytes is None:
            report.total_bytes = upload.size
        headers = {"Content-Type": NDJSON}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
        created = self._json(
            "POST",
            "/v1/batches",
            params={"task": task},
            content=upload.chunks,
            headers=headers,
            create=True,
            tries=MAX_TRIES if upload.replayable else 1,
            timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
        )
        report.accepted(created, part)
        return created

    def _submit_parts(
        self,
        task: str,
        source: str | os.PathLike[str] | IO[bytes],
        parts: list[Part],
        batch_id: str | None,
        on_upload: OnUpload | None,
    ) -> Json:
        """Open a batch (unless ``batch_id`` names one), send each part, close it.

        A part refused for its content (413, 422) cancels a batch this call opened, so no half
        of the file runs as if it were the whole; the error names the file's lines. Any other
        failure leaves the batch open, and the same file sent again with its id resumes."""
        opened = batch_id is None
        if batch_id is None:
            batch_id = str(self.open_batch(task)["id"])
        report = _UploadReport(on_upload, parts, batch_id)
        report.tell()
        for part in parts:
            try:
                batch = self.add_batch_items(
                    batch_id,
                    source,
                    part=part,
                    on_sent=report.sent if on_upload else None,
                )
            except OmniError as exc:
                raise self._part_failed(exc, batch_id, part, len(parts), opened) from exc
            except OmniConnectionError as exc:
                raise OmniConnectionError(
                    f"{exc}; batch {batch_id} has parts 1..{part.number - 1} of {len(parts)} "
                    "and stays open: send the same file to it again to resume (omni batch submit "
                    f"--batch {batch_id})"
                ) from exc
            report.accepted(batch, part)
        return self.close_batch(batch_id)

    def _part_failed(
        self, exc: OmniError, batch_id: str, part: Part, parts: int, opened: bool
    ) -> OmniError:
        """``exc`` with the file's line numbers instead of the part's, and what became of the
        batch."""
        where = f"part {part.number} of {parts} (lines {part.first_line}-{part.last_line})"
        fate = f"batch {batch_id} stays open"
        if opened and exc.status in (413, 422):
            try:
                self.cancel_batch(batch_id)
                fate = f"batch {batch_id} was cancelled"
            except OmniClientError:
                fate = f"batch {batch_id} could not be cancelled: cancel it yourself"
        errors = [_shift_line(error, part.first_line - 1) for error in exc.errors]
        detail = f"{where}: {exc.detail or exc.title}; {fate}"
        return OmniError(exc.status, exc.title, detail, errors, exc.body)


class _UploadReport:
    """Tells ``on_upload`` where an upload stands: bytes sent, parts and items accepted."""

    def __init__(self, on_upload: OnUpload | None, parts: list[Part], batch_id: str | None):
        self._on_upload = on_upload
        self.batch_id = batch_id
        self.parts = len(parts) or 1
        self.total_bytes: int | None = sum(p.size for p in parts) if parts else None
        self.items: int | None = sum(p.items for p in parts) if parts else None
        self.parts_done = 0
        self.items_accepted = 0
        self._done_bytes = 0  # the parts accepted so far
        self._sending = 0  # of the part going out, this try

    def sent(self, so_far: int) -> None:
        self._sending = so_far
        self.tell()

    def accepted(self, batch: Json, part: Part | None = None) -> None:
        self.batch_id = str(batch.get("id") or self.batch_id)
        self.parts_done += 1
        self._done_bytes += part.size if part else self._sending
        self._sending = 0
        self.items_accepted += part.items if part else int(batch_total(batch) or 0)
        self.tell()

    def tell(self) -> None:
        if self._on_upload is None:
            return
        self._on_upload(
            UploadProgress(
                batch_id=self.batch_id,
                sent_bytes=self._done_bytes + self._sending,
                total_bytes=self.total_bytes,
                parts_done=self.parts_done,
                parts=self.parts,
                items_accepted=self.items_accepted,
                items=self.items,
            )
        )


def batch_total(batch: Json) -> int | None:
    counts = batch.get("counts")
    total = counts.get("total") if isinstance(counts, dict) else None
    return total if isinstance(total, int) else None


def _shift_line(error: dict[str, Any], by: int) -> dict[str, Any]:
    """A 422 error of a part, its ``["body", "line", N, ...]`` renumbered as the file's line."""
    loc = error.get("loc")
    if not isinstance(loc, list) or not by:
        return error
    shifted = list(loc)
    for i, value in enumerate(shifted[:-1]):
        if value == "line" and isinstance(shifted[i + 1], int):
            shifted[i + 1] += by
            break
    return {**error, "loc": shifted}


def _file_digest(source: str | os.PathLike[str] | IO[bytes] | IO[str]) -> str:
    """SHA-256 of a whole upload's bytes (hex), read once."""
    digest = hashlib.sha256()
    for chunk in upload_source(source).chunks():
        digest.update(chunk)
    return digest.hexdigest()
