"""The local files of ``omni batch``: stdin spooled to a temporary file for an upload, and the
results file that ``--output`` appends to, resumed after its last whole line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

from omniclient.client import line_index
from omniclient.upload import UPLOAD_CHUNK_BYTES


def resume_point(path: str) -> int | None:
    """The index of the last whole line of a results file, which loses any partial line after
    it (a download cut mid-line); None when the file is missing or has no whole line."""
    try:
        file = open(path, "r+b")  # noqa: SIM115 - closed below; truncated in place
    except FileNotFoundError:
        return None
    with file:
        end = position = file.seek(0, os.SEEK_END)
        tail = b""
        # Back from the end until the tail holds the last whole line: two newlines, or the start.
        while position > 0 and tail.count(b"\n") < 2:
            step = min(UPLOAD_CHUNK_BYTES, position)
            position -= step
            file.seek(position)
            tail = file.read(step) + tail
        whole, newline, partial = tail.rpartition(b"\n")
        if partial:
            file.truncate(end - len(partial))
        if not newline:
            return None
        last = whole.rpartition(b"\n")[2]
        return line_index(last.decode("utf-8", errors="replace"))


@contextlib.contextmanager
def spooled_stdin() -> Iterator[IO[bytes]]:
    """stdin copied to a temporary file, so the upload has a length and a retry can re-read it."""
    with tempfile.TemporaryFile() as spool:
        stdin = sys.stdin.buffer
        while chunk := stdin.read(UPLOAD_CHUNK_BYTES):
            spool.write(chunk)
        spool.seek(0)
        yield spool
