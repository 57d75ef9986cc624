"""NDJSON batch uploads read from disk in pieces, and cut into parts when one request cannot
carry the whole file.

``OmniClient.submit_batch`` sends ``Upload.chunks()`` as a request body, once per try. A file over
one request's limits (``PART_MAX_BYTES``, ``PART_MAX_ITEMS``: the ingress's defaults) is planned
into ``Part``s first, each a byte range of whole lines, sent as ``POST /v1/batches/ID/items``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from typing import IO, NamedTuple, TypeGuard

UPLOAD_CHUNK_BYTES = 64 * 1024
"""Size of each piece of an NDJSON upload read from disk, bytes."""
PART_MAX_BYTES = 32 * 1024 * 1024
"""Most bytes in one request's body: the ingress's default ``MAX_BATCH_BODY_BYTES`` (Cloud Run's
HTTP/1 request limit)."""
PART_MAX_ITEMS = 100_000
"""Most items (non-blank lines) in one request: the ingress's default ``MAX_BATCH_ITEMS``."""

Sent = Callable[[int], None]
"""Told, as each piece is handed to the connection, how many bytes of this try went so far (from
0 again on a retry)."""


class Upload(NamedTuple):
    chunks: Callable[[], Iterator[bytes]]  # a fresh iterator from the start, for each try
    size: int | None
    replayable: bool


class Part(NamedTuple):
    """One request's worth of a file: whole lines, ``start`` to ``end`` (bytes)."""

    number: int
    """1-based."""
    start: int
    end: int
    first_line: int
    """The file's line number (1-based) of the part's first line: the server numbers a part's
    lines from 1, so a 422's line N is the file's line ``first_line + N - 1``."""
    lines: int
    items: int
    digest: str
    """SHA-256 of the part's bytes (hex): with the batch id, its ``Idempotency-Key``."""

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def last_line(self) -> int:
        return self.first_line + self.lines - 1


def upload_source(
    source: str | os.PathLike[str] | IO[bytes] | IO[str], sent: Sent | None = None
) -> Upload:
    """``source`` as an ``Upload``; replayable unless it is a file that cannot seek."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        path_size = os.path.getsize(path)

        def from_path() -> Iterator[bytes]:
            with open(path, "rb") as file:
                yield from _read(file, path_size, sent)

        return Upload(from_path, path_size, replayable=True)

    file = source
    start = file.tell() if file.seekable() else None
    size = None
    if start is not None and not isinstance(file, io.TextIOBase):
        size = file.seek(0, io.SEEK_END) - start
        file.seek(start)

    def from_file() -> Iterator[bytes]:
        if start is not None:
            file.seek(start)
        done = 0
        while chunk := file.read(UPLOAD_CHUNK_BYTES):
            data = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
            done += len(data)
            if sent is not None:
                sent(done)
            yield data

    return Upload(from_file, size, replayable=start is not None)


def part_upload(
    source: str | os.PathLike[str] | IO[bytes], part: Part, sent: Sent | None = None
) -> Upload:
    """The bytes of ``part`` of ``source`` (a path or a seekable binary file), read again from
    the part's start for each try."""

    def chunks() -> Iterator[bytes]:
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                file.seek(part.start)
                yield from _read(file, part.size, sent)
        else:
            source.seek(part.start)
            yield from _read(source, part.size, sent)

    return Upload(chunks, part.size, replayable=True)


def splittable(source: object) -> TypeGuard[str | os.PathLike[str] | IO[bytes]]:
    """Whether ``source`` can be planned into parts: a path, or a seekable binary file."""
    if isinstance(source, str | os.PathLike):
        return True
    seekable = getattr(source, "seekable", None)
    return callable(seekable) and bool(seekable()) and not isinstance(source, io.TextIOBase)


def plan_parts(
    source: str | os.PathLike[str] | IO[bytes],
    max_bytes: int = PART_MAX_BYTES,
    max_items: int = PART_MAX_ITEMS,
) -> list[Part]:
    """The file cut at line boundaries into parts of at most ``max_bytes`` and ``max_items``
    items each, in one read of it. Blank lines carry no item: they travel with the next item
    (or, at the end, with the last part), so no part is only blank lines, which the server
    refuses ("the batch has no items"). A single line over ``max_bytes`` is a part of its own;
    the server refuses it for its size."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            return _plan(file, 0, max_bytes, max_items)
    start = source.tell()
    try:
        return _plan(source, start, max_bytes, max_items)
    finally:
        source.seek(start)


def _plan(file: IO[bytes], offset: int, max_bytes: int, max_items: int) -> list[Part]:
    parts: list[Part] = []
    # The part being filled: its start, its end after its last item, its lines, items, hash.
    start = end = offset
    first_line, lines, items = 1, 0, 0
    digest = hashlib.sha256()
    # Blank lines read since the last item: they go with whatever comes next.
    pending: list[bytes] = []
    line_number = 0
    for line in file:
        line_number += 1
        if not line.strip():
            pending.append(line)
            continue
        waiting = sum(map(len, pending)) + len(line)
        if items and (items >= max_items or end - start + waiting > max_bytes):
            parts.append(
                Part(len(parts) + 1, start, end, first_line, lines, items, digest.hexdigest())
            )
            start, first_line, lines, items = end, line_number - len(pending), 0, 0
            digest = hashlib.sha256()
        for blank in pending:
            digest.update(blank)
        digest.update(line)
        end += waiting
        lines += len(pending) + 1
        items += 1
        pending.clear()
    for blank in pending:
        digest.update(blank)
        end += len(blank)
        lines += 1
    if lines or not parts:
        parts.append(Part(len(parts) + 1, start, end, first_line, lines, items, digest.hexdigest()))
    return parts


def _read(file: IO[bytes], size: int, sent: Sent | None) -> Iterator[bytes]:
    left = size
    while left > 0 and (chunk := file.read(min(UPLOAD_CHUNK_BYTES, left))):
        left -= len(chunk)
        if sent is not None:
            sent(size - left)
        yield chunk
