"""``forecast``: a time series' future, with an uncertainty interval (Prophet)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

DESCRIPTION = (
    "Prophet forecast of a series: horizon future points at the given frequency (H, D, W, M), "
    "each with yhat and an 80% interval."
)

MAX_POINTS = 10_000
MAX_HORIZON = 1_000


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ds: datetime = Field(description="Timestamp, RFC 3339 or a date (YYYY-MM-DD).")
    # Strict: "1.5" or true is not a number here; a non-numeric y is a 422 at submit.
    y: StrictFloat | StrictInt

    @field_validator("y")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("y must be a finite number")
        return value


class ForecastInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: list[Point] = Field(min_length=2, max_length=MAX_POINTS)
    horizon: int = Field(ge=1, le=MAX_HORIZON)
    frequency: Literal["H", "D", "W", "M"]

    @field_validator("series")
    @classmethod
    def _distinct_times(cls, series: list[Point]) -> list[Point]:
        times = [point.ds.replace(tzinfo=None) for point in series]
        if len(set(times)) != len(times):
            raise ValueError("each ds must appear once")
        return series


class ForecastPoint(BaseModel):
    ds: datetime
    yhat: float
    yhat_lower: float
    yhat_upper: float


class ForecastResult(BaseModel):
    forecast: list[ForecastPoint]
