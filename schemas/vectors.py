"""Compact stored form for vectors: little-endian float32 bytes.

Firestore stores no arrays of arrays, and a document holds at most 1 MiB; a 384-d vector as bytes
is 1,536 bytes against ~8 KB as a list of doubles. The API gives clients nested float lists.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence


def pack_f32(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def unpack_f32(data: bytes) -> list[float]:
    if len(data) % 4:
        raise ValueError("float32 data length is not a multiple of 4")
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def pack_rows(rows: Iterable[Sequence[float]]) -> list[bytes]:
    return [pack_f32(row) for row in rows]


def unpack_rows(rows: Iterable[bytes]) -> list[list[float]]:
    return [unpack_f32(row) for row in rows]
