"""The error body every service answers with: RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemItem(BaseModel):
    """One field that failed validation: where it is, and what is wrong with it."""

    loc: list[str | int] = Field(description="Path to the field, e.g. ['body', 'input', 'texts'].")
    msg: str


class Problem(BaseModel):
    """``application/problem+json``; ``errors`` only on 422."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemItem] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
