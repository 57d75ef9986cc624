"""The shape half of the offline check: a JSON document walked against the Monitoring API's
schemas, pinned in ``api_schema.json`` (from Google's discovery documents, ``pin_schema.py``).

Unknown fields, types, enum values, durations in the API's JSON form (``"300s"``), required and
output-only fields (from Google's own "Required."/"Output only" wording), and the proto ``oneof``
groups, which a discovery document does not carry: they are written out in ``ONEOFS`` from
google/monitoring/dashboard/v1/*.proto and google/monitoring/v3/alert.proto.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent / "api_schema.json"
ONEOFS: dict[str, tuple[tuple[str, ...], bool]] = {
    # schema: (fields of one proto oneof, whether exactly one must be set; else at most one)
    "Dashboard": (("gridLayout", "mosaicLayout", "rowLayout", "columnLayout"), True),
    "Widget": (
        (
            "xyChart",
            "scorecard",
            "text",
            "blank",
            "alertChart",
            "timeSeriesTable",
            "collapsibleGroup",
            "logsPanel",
            "incidentList",
            "pieChart",
            "errorReportingPanel",
            "sectionHeader",
            "singleViewGroup",
            "filterControl",
            "treemap",
        ),
        True,
    ),
    "TimeSeriesQuery": (
        (
            "timeSeriesFilter",
            "timeSeriesFilterRatio",
            "timeSeriesQueryLanguage",
            "prometheusQuery",
            "opsAnalyticsQuery",
        ),
        True,
    ),
    "Condition": (
        (
            "conditionThreshold",
            "conditionAbsent",
            "conditionMatchedLog",
            "conditionMonitoringQueryLanguage",
            "conditionPrometheusQueryLanguage",
            "conditionSql",
        ),
        True,
    ),
    "Scorecard": (("gaugeView", "sparkChartView", "blankView"), False),
    "Trigger": (("count", "percent"), False),
}
_DURATION = re.compile(r"^(\d+)(?:\.(\d{1,9}))?s$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file, at a JSON path like ``conditions[0].conditionThreshold``."""

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where or '(top)'}: {self.message}"


class InvalidConfig(ValueError):
    """Some file failed the check; ``problems`` lists why, each naming its file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@cache
def _schemas() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    return loaded


def duration_s(text: str) -> float | None:
    """``"300s"`` -> 300.0; None if ``text`` is not a protobuf Duration's JSON form."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return int(match.group(1)) + (float("0." + match.group(2)) if match.group(2) else 0.0)


# ------------------------------------------------------------------------------------- shape


class Checker:
    """Walks one document against one version's schemas, collecting problems."""

    def __init__(self, file: str, version: str) -> None:
        self.file = file
        self.schemas: dict[str, dict[str, Any]] = _schemas()[version]["schemas"]
        self.problems: list[Problem] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.file, where, message))

    def message(self, value: Any, schema: str, where: str) -> None:
        fields = self.schemas[schema]
        if not isinstance(value, dict):
            self.fail(where, f"expected an object ({schema}), got {type(value).__name__}")
            return
        for key in value:
            if key not in fields:
                self.fail(join(where, key), f"unknown field {key!r}: {schema} has no such field")
        for key, spec in fields.items():
            if spec.get("required") and key not in value:
                self.fail(where, f"missing required field {key!r} of {schema}")
            if spec.get("output_only") and key in value:
                self.fail(join(where, key), f"{key!r} is output only: the API sets it")
        if schema in ONEOFS:
            group, exactly_one = ONEOFS[schema]
            chosen = [key for key in group if key in value]
            if len(chosen) > 1 or (exactly_one and not chosen):
                self.fail(
                    where,
                    f"{schema} needs {'exactly' if exactly_one else 'at most'} one "
                    f"of {', '.join(group)}; has {', '.join(chosen) or 'none'}",
                )
        for key, item in value.items():
            if key in fields:
                self.value(item, fields[key], join(where, key))

    def value(self, value: Any, spec: dict[str, Any], where: str) -> None:
        if "$ref" in spec:
            self.message(value, spec["$ref"], where)
            return
        kind = spec.get("type")
        if kind == "array":
            if not isinstance(value, list):
                self.fail(where, f"expected a list, got {type(value).__name__}")
                return
            for index, item in enumerate(value):
                self.value(item, spec["items"], f"{where}[{index}]")
        elif kind == "object":
            if not isinstance(value, dict):
                self.fail(where, f"expected an object, got {type(value).__name__}")
            elif "map_of" in spec:
                for key, item in value.items():
                    self.value(item, spec["map_of"], join(where, key))
        elif kind == "string":
            self._string(value, spec, where)
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                self.fail(where, f"expected an integer, got {value!r}")
            elif spec.get("format") == "int32" and not -(2**31) <= value < 2**31:
                self.fail(where, f"{value} does not fit an int32")
        elif kind == "number":
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.fail(where, f"expected a number, got {value!r}")
        elif kind == "boolean" and not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")

    def _string(self, value: Any, spec: dict[str, Any], where: str) -> None:
        fmt = spec.get("format")
        if fmt in ("int64", "uint64") and isinstance(value, int) and not isinstance(value, bool):
            return  # the API's JSON takes a 64-bit integer as a number or a string
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {value!r}")
        elif "enum" in spec and value not in spec["enum"]:
            self.fail(where, f"{value!r} is not one of {', '.join(spec['enum'])}")
        elif fmt == "google-duration" and duration_s(value) is None:
            self.fail(where, f'{value!r} is not a duration such as "300s"')


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def walk(value: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) below ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield join(where, key), key, item
            yield from walk(item, join(where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{where}[{index}]")
