"""``similar``: rank documents by semantic similarity to a query (MiniLM + FAISS)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

DESCRIPTION = (
    "Documents ranked by cosine similarity to the query: all-MiniLM-L6-v2 embeddings in a FAISS "
    "inner-product index, best first."
)

MAX_DOCUMENTS = 1_000
MAX_TEXT_CHARS = 2_048
MAX_TOTAL_TEXT_BYTES = 512 * 1024
"""Query and documents together, in UTF-8 bytes (the input lives in one Firestore document)."""
MAX_TOP_K = 100

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]


class SimilarInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Text
    documents: list[Text] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="Matches to return (at most "
                       "the number of documents).")  # fmt: skip

    @model_validator(mode="after")
    def _total_size(self) -> SimilarInput:
        total = sum(len(t.encode("utf-8")) for t in [self.query, *self.documents])
        if total > MAX_TOTAL_TEXT_BYTES:
            raise ValueError(f"texts total {total} bytes; at most {MAX_TOTAL_TEXT_BYTES} allowed")
        return self


class Match(BaseModel):
    index: int = Field(description="Position of the document in the input.")
    score: float = Field(description="Cosine similarity, -1..1.")
    text: str


class SimilarResult(BaseModel):
    matches: list[Match] = Field(description="Best first.")
