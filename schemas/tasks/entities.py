"""``entities``: named entities (spaCy ``en_core_web_sm``), with character offsets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DESCRIPTION = "Named entities from spaCy en_core_web_sm 3.8: text, label and character offsets."

MODEL_IDENTITY = "en_core_web_sm-3.8.0"
"""The pipeline behind ``entities`` for the result cache (schemas/resultcache.py): the pinned
package's version (pyproject.toml). Change it with the pipeline."""
MAX_TEXT_CHARS = 100_000
"""Longest text, in characters (about 400 KiB of UTF-8 at worst: it fits one document with its
entities)."""


class EntitiesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class Entity(BaseModel):
    text: str
    label: str = Field(description="spaCy's label: PERSON, GPE, ORG, DATE, ...")
    start: int = Field(description="Offset of the first character, in characters.")
    end: int = Field(description="Offset after the last character: text[start:end] is the entity.")


class EntitiesResult(BaseModel):
    entities: list[Entity]
