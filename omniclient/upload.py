"""An NDJSON batch upload read from disk in pieces: a path, or an open file of bytes or text.

``OmniClient.submit_batch`` sends ``Upload.chunks()`` as the request body, once per try.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import IO, NamedTuple

UPLOAD_CHUNK_BYTES = 64 * 1024
"""Size of each piece of an NDJSON upload read from disk, bytes."""


class Upload(NamedTuple):
    chunks: Callable[[], Iterator[bytes]]  # a fresh iterator from the start, for each try
    size: int | None
    replayable: bool


def upload_source(source: str | os.PathLike[str] | IO[bytes] | IO[str]) -> Upload:
    """``source`` as an ``Upload``; replayable unless it is a file that cannot seek."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)

        def from_path() -> Iterator[bytes]:
            with open(path, "rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    yield chunk

        return Upload(from_path, os.path.getsize(path), replayable=True)

    file = source
    start = file.tell() if file.seekable() else None
    size = None
    if start is not None and not isinstance(file, io.TextIOBase):
        size = file.seek(0, io.SEEK_END) - start
        file.seek(start)

    def from_file() -> Iterator[bytes]:
        if start is not None:
            file.seek(start)
        while chunk := file.read(UPLOAD_CHUNK_BYTES):
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk

    return Upload(from_file, size, replayable=start is not None)
