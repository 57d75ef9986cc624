"""ingress/batchinput.py's line reader: lines across read boundaries, and an over-long line cut
as it arrives instead of held (and copied) whole."""

from __future__ import annotations

import hashlib
import io

import pytest

from ingress import batchinput
from ingress.errors import PayloadTooLarge


class _Request:
    def __init__(self, body: bytes):
        self.stream = io.BytesIO(body)


def lines(body: bytes, limit: int = 1000, max_line: int = 5) -> list[bytes]:
    return list(batchinput._body_lines(_Request(body), limit, hashlib.sha256(), max_line))


def test_lines_are_assembled_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchinput, "READ_BYTES", 3)
    assert lines(b"a\nbbbb\n\nccc") == [b"a", b"bbbb", b"", b"ccc"]
    assert lines(b"\n\n") == [b"", b""]


def test_a_line_past_the_limit_is_cut_to_one_byte_over_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchinput, "READ_BYTES", 4)
    assert lines(b"abcdefghijklmnopqrstuvwxyz\nxy\n") == [b"abcdef", b"xy"]
    assert lines(b"x" * 500) == [b"xxxxxx"]


def test_a_body_past_the_limit_is_refused_as_it_arrives() -> None:
    with pytest.raises(PayloadTooLarge):
        lines(b"x\n" * 600, limit=1000)
