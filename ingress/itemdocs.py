"""A batch's item documents as ready-made Firestore writes, and how they are cut into commits."""

from __future__ import annotations

from typing import Any

CHUNK = 499
"""Jobs per atomic batched write at most, with the tenant's jobs-in-flight counter as one more
write (``schemas/quota.py``). Firestore no longer limits a commit's writes (the old 500-write
limit is gone); this bounds a commit's latency, and ``CHUNK_BYTES`` its 10 MiB request limit."""
CHUNK_BYTES = 8 * 1024 * 1024
"""Input bytes per batched write at most (Firestore refuses commits over 10 MiB)."""


class ItemDocuments:
    """The job documents of one batch's items, as ready-made protobuf writes.

    The Firestore client encodes every value through proto-plus wrappers, ~300 µs a document
    here. Every item's document is the same but for its input and index, so the shared fields
    are encoded once, from ``template`` (built by ``new_job_document``, the one definition of a
    job document), and copied; only the input is encoded per item."""

    def __init__(self, jobs: Any, template: dict[str, Any]):
        from google.cloud.firestore_v1 import _helpers
        from google.cloud.firestore_v1.types import document, write

        self._encode_value = _helpers.encode_value
        self._document_pb = document.Document.pb()
        self._write_pb = write.Write.pb()
        self._template = document.Document(fields=_helpers.encode_dict(template))._pb
        self._prefix = jobs.document("-")._document_path[:-1]

    def write(self, job_id: str, index: int, item_input: dict[str, Any]) -> Any:
        doc = self._document_pb()
        doc.CopyFrom(self._template)
        doc.name = self._prefix + job_id
        doc.fields["batch_index"].integer_value = index
        self._encode(item_input, doc.fields["input"])
        return self._write_pb(update=doc)

    def _encode(self, value: Any, out: Any) -> None:
        """``value`` into the protobuf ``Value`` ``out``, as the client would encode it."""
        if isinstance(value, str):
            out.string_value = value
        elif isinstance(value, bool):
            out.boolean_value = value
        elif isinstance(value, int):
            out.integer_value = value
        elif isinstance(value, float):
            out.double_value = value
        elif isinstance(value, dict):
            out.map_value.SetInParent()
            for key, item in value.items():
                self._encode(item, out.map_value.fields[key])
        elif isinstance(value, list):
            out.array_value.SetInParent()
            for item in value:
                self._encode(item, out.array_value.values.add())
        else:  # None, bytes, timestamps: rare in an input, left to the client's own encoder
            out.CopyFrom(self._encode_value(value)._pb)


def chunks(sizes: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of items for one commit each: at most ``CHUNK`` items and, past
    the first item, at most ``CHUNK_BYTES`` of input."""
    out: list[tuple[int, int]] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= CHUNK or used + size > CHUNK_BYTES):
            out.append((start, index))
            start, used = index, 0
        used += size
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out
