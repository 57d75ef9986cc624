"""The models of what the ingress answers that no other package defines: health, liveness, and
a batch's results line (their JSON Schema goes into the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import JobStatus
from schemas.jobs import JobError


class Health(BaseModel):
    """``GET /health``."""

    ok: bool
    pubsub_ok: bool
    firestore_ok: bool
    service: str


class Liveness(BaseModel):
    """``GET /health/live``."""

    ok: bool
    service: str


class BatchItem(BaseModel):
    """One line of ``GET /v1/batches/ID/results`` (``schemas.chunks.item_line``), also
    ``GET /v1/batches/ID/items/INDEX`` and the data of an ``item`` event."""

    model_config = ConfigDict(title="BatchItem")

    index: int = Field(ge=0)
    status: JobStatus
    result: dict[str, Any] | None = Field(
        default=None, description="Only when succeeded: the task's result."
    )
    error: JobError | None = Field(default=None, description="Only when failed.")
    attempts: int = Field(ge=0, description="Attempts of the chunk that ran it (0: queued).")
