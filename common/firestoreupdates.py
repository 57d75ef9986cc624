"""Firestore ``update`` writes built from protobuf directly, for the worker's hot commits.

``WriteBatch.update`` goes through the client's document extractor and proto-plus wrappers: per
job, a claim and a terminal write cost about as much CPU as the claim's read and its RPC together
(profiled: ``pbs_for_update`` alone was a fifth of the claim thread's CPU). ``update_write`` makes
the same ``Write`` — an update mask of the top-level fields, the transforms ``Increment`` and
``ArrayUnion``, an ``update_time`` precondition or ``exists`` — straight into the raw protobuf
message, and ``add`` puts it in a batch without a copy. A change it does not know how to encode
(a dotted field path, another sentinel, another type) raises ``Unsupported``: the caller then uses
``WriteBatch.update``, which knows everything. ``tests/unit/test_firestoreupdates.py`` checks the
two give byte-identical writes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from google.cloud.firestore_v1 import types
from google.cloud.firestore_v1.transforms import ArrayUnion, Increment
from google.protobuf.timestamp_pb2 import Timestamp

_WRITE = types.Write.pb()
_VALUE = types.Value.pb()
_SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
"""A field name that needs no quoting in a field path (anything else goes the client's way)."""


class Unsupported(ValueError):
    """A change this module does not encode: use ``WriteBatch.update``."""


def update_write(document_path: str, changes: dict[str, Any], last_update_time: Any = None) -> Any:
    """The raw ``Write`` of ``WriteBatch.update(ref, changes, option)`` where ``option`` is
    ``write_option(last_update_time=...)``, or none (the document must exist)."""
    write = _WRITE()
    write.update.name = document_path
    mask = write.update_mask.field_paths
    fields = write.update.fields
    for name in changes:
        if not _SIMPLE_FIELD.fullmatch(name):
            raise Unsupported(f"field path {name!r}")
    for name, value in sorted(changes.items()):  # the client's order: sorted paths
        if isinstance(value, Increment):
            transform = write.update_transforms.add(field_path=name)
            _encode(value.value, transform.increment)
        elif isinstance(value, ArrayUnion):
            transform = write.update_transforms.add(field_path=name)
            for element in value.values:
                _encode(element, transform.append_missing_elements.values.add())
        else:
            mask.append(name)
            _encode(value, fields[name])
    if last_update_time is None:
        write.current_document.exists = True
    else:
        write.current_document.update_time.CopyFrom(_timestamp(last_update_time))
    return write


def set_write(document_path: str, document: dict[str, Any]) -> Any:
    """The raw ``Write`` of ``WriteBatch.set(ref, document)`` (the whole document replaced, no
    precondition): the worker's result-cache entries (``worker/resultcache.py``)."""
    write = _WRITE()
    write.update.name = document_path
    fields = write.update.fields
    for name, value in document.items():
        if not _SIMPLE_FIELD.fullmatch(name):
            raise Unsupported(f"field path {name!r}")
        _encode(value, fields[name])
    return write


def add(batch: Any, write: Any) -> None:
    """Put a raw ``Write`` in a ``WriteBatch`` (or transaction), wrapped, not copied."""
    batch._add_write_pbs([types.Write.wrap(write)])


def _timestamp(when: Any) -> Timestamp:
    """To the microsecond, as the client converts a ``datetime`` (a ``DatetimeWithNanoseconds``
    too: Firestore's times are whole microseconds)."""
    if not isinstance(when, datetime):
        raise Unsupported(f"time of type {type(when).__name__}")
    out = Timestamp()
    out.FromDatetime(when)
    return out


def _encode(value: Any, out: Any) -> None:
    """``value`` into the raw ``Value`` message ``out`` (as ``_helpers.encode_value`` would)."""
    if value is None:
        out.null_value = 0
    elif isinstance(value, bool):  # before int: a bool is an int
        out.boolean_value = value
    elif isinstance(value, int):
        out.integer_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, datetime):
        out.timestamp_value.CopyFrom(_timestamp(value))
    elif isinstance(value, dict):
        entries = out.map_value.fields
        if not value:
            out.map_value.SetInParent()
        for key, item in value.items():
            if not isinstance(key, str):
                raise Unsupported(f"map key {type(key).__name__}")
            _encode(item, entries[key])
    elif isinstance(value, list | tuple):
        out.array_value.SetInParent()
        for item in value:
            _encode(item, out.array_value.values.add())
    else:
        raise Unsupported(f"value of type {type(value).__name__}")
