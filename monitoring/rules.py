"""The shape and prose rules of ``python -m monitoring`` (monitoring/validate.py) for one
document: the dashboard (``check_dashboard``) or one alert policy (``check_policy``). The shape
is ``Checker``'s (monitoring/shape.py); the names in filters and queries are checked by
monitoring/names.py; the rules the API states in prose are here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from monitoring import catalogue
from monitoring.names import check_filter, check_promql
from monitoring.shape import Checker, Problem, duration_s, walk

_USER_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_USER_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_RATE_ALIGNERS = frozenset({"ALIGN_RATE", "ALIGN_DELTA"})
_MAX_ALERT_ALIGNMENT_S = 90_000
_MOSAIC_MAX_COLUMNS = 48
_GROUP_BY = re.compile(r'^(metric|resource)\.labels?\.(?:"([^"]+)"|(\w+))$')


def _aggregation(
    checker: Checker, agg: dict[str, Any], where: str, kind: str | None, *, alert: bool
) -> None:
    aligner = agg.get("perSeriesAligner", "ALIGN_NONE")
    period = duration_s(agg.get("alignmentPeriod", "")) if "alignmentPeriod" in agg else None
    if aligner != "ALIGN_NONE":
        if period is None:
            checker.fail(where, f"{aligner} needs an alignmentPeriod")
        elif period < 60:
            checker.fail(where, "alignmentPeriod must be at least 60s")
        elif alert and period > _MAX_ALERT_ALIGNMENT_S:
            checker.fail(where, f"an alert's alignmentPeriod is at most {_MAX_ALERT_ALIGNMENT_S}s")
    if agg.get("crossSeriesReducer", "REDUCE_NONE") != "REDUCE_NONE" and aligner == "ALIGN_NONE":
        checker.fail(where, "a crossSeriesReducer needs a perSeriesAligner other than ALIGN_NONE")
    if aligner in _RATE_ALIGNERS and kind == "GAUGE":
        checker.fail(where, f"{aligner} applies to DELTA or CUMULATIVE metrics, not a GAUGE")
    for index, field in enumerate(agg.get("groupByFields", [])):
        if not _GROUP_BY.match(field):
            checker.fail(f"{where}.groupByFields[{index}]", f"cannot group by {field!r}")


# -------------------------------------------------------------------------------- documents


def check_dashboard(doc: Any, file: str = "dashboard.json") -> list[Problem]:
    checker = Checker(file, "v1")
    checker.message(doc, "Dashboard", "")
    if checker.problems:
        return checker.problems  # names and layout only make sense on the right shape
    mosaic = doc.get("mosaicLayout")
    if mosaic is not None:
        _mosaic(checker, mosaic)
    for where, key, value in walk(doc):
        if key == "timeSeriesFilter":
            kind = _filter_and_kind(checker, value.get("filter", ""), f"{where}.filter", False)
            for agg_key in ("aggregation", "secondaryAggregation"):
                if agg_key in value:
                    _aggregation(
                        checker,
                        value[agg_key],
                        f"{where}.{agg_key}",
                        kind if agg_key == "aggregation" else None,
                        alert=False,
                    )
        elif key == "prometheusQuery":
            check_promql(checker, value, where)
        elif key == "xyChart":
            for index, threshold in enumerate(value.get("thresholds", [])):
                for banned in ("color", "direction"):
                    if banned in threshold:
                        checker.fail(
                            f"{where}.thresholds[{index}]",
                            f"{banned} is not allowed in an XyChart threshold",
                        )
        elif key == "scorecard":
            for index, threshold in enumerate(value.get("thresholds", [])):
                if "targetAxis" in threshold:
                    checker.fail(
                        f"{where}.thresholds[{index}]",
                        "targetAxis is not allowed in a Scorecard threshold",
                    )
    return checker.problems


def _filter_and_kind(checker: Checker, text: str, where: str, alert: bool) -> str | None:
    metric_type = check_filter(checker, text, where, alert=alert)
    if metric_type is None:
        return None
    kind: str = catalogue.google()["metrics"][metric_type]["kind"]  # type: ignore[index]
    return kind


def _mosaic(checker: Checker, mosaic: dict[str, Any]) -> None:
    columns = mosaic.get("columns", _MOSAIC_MAX_COLUMNS)
    if not 1 <= columns <= _MOSAIC_MAX_COLUMNS:
        checker.fail("mosaicLayout.columns", f"must be 1..{_MOSAIC_MAX_COLUMNS}")
    taken: dict[tuple[int, int], int] = {}
    for index, tile in enumerate(mosaic.get("tiles", [])):
        where = f"mosaicLayout.tiles[{index}]"
        x, y = tile.get("xPos", 0), tile.get("yPos", 0)
        width, height = tile.get("width", 0), tile.get("height", 0)
        if width < 1 or height < 1 or x < 0 or y < 0 or x + width > columns:
            checker.fail(where, f"tile at x={x} width={width} does not fit {columns} columns")
            continue
        for cell in ((cx, cy) for cx in range(x, x + width) for cy in range(y, y + height)):
            if cell in taken:
                checker.fail(where, f"overlaps tile {taken[cell]}")
                break
            taken[cell] = index


def check_policy(doc: Any, file: str) -> list[Problem]:
    checker = Checker(file, "v3")
    checker.message(doc, "AlertPolicy", "")
    if checker.problems:
        return checker.problems
    stem = Path(file).stem
    if "name" in doc:
        checker.fail("name", "a policy file names no policy: the API assigns the id")
    for key in ("displayName", "documentation", "conditions"):
        if not doc.get(key):
            checker.fail("", f"a policy needs {key}")
    if doc.get("combiner", "COMBINE_UNSPECIFIED") == "COMBINE_UNSPECIFIED":
        checker.fail("combiner", "say how conditions combine (OR, AND)")
    labels = doc.get("userLabels", {})
    for key, value in labels.items():
        if not _USER_LABEL_KEY.match(key) or not _USER_LABEL_VALUE.match(value):
            checker.fail(f"userLabels.{key}", "keys and values: lowercase letters, digits, _ and -")
    if labels.get("omni_policy") != stem:
        checker.fail(
            "userLabels.omni_policy",
            f"must be {stem!r}, the file's name: apply finds the deployed policy by it",
        )
    documentation = doc.get("documentation", {})
    if documentation.get("mimeType") != "text/markdown":
        checker.fail("documentation.mimeType", 'must be "text/markdown" (the only one supported)')
    if len(documentation.get("content", "")) > 8192:
        checker.fail("documentation.content", "longer than 8,192 characters")
    for index, condition in enumerate(doc.get("conditions", [])):
        _condition(checker, condition, f"conditions[{index}]")
    return checker.problems


def _condition(checker: Checker, condition: dict[str, Any], where: str) -> None:
    if not condition.get("displayName"):
        checker.fail(where, "a condition needs a displayName")
    if "name" in condition:
        checker.fail(f"{where}.name", "the API assigns condition names")
    threshold = condition.get("conditionThreshold")
    if threshold is not None:
        here = f"{where}.conditionThreshold"
        kind = _filter_and_kind(checker, threshold["filter"], f"{here}.filter", True)
        for index, agg in enumerate(threshold.get("aggregations", [])):
            _aggregation(
                checker,
                agg,
                f"{here}.aggregations[{index}]",
                kind if index == 0 else None,
                alert=True,
            )
        if "denominatorFilter" in threshold:
            _filter_and_kind(
                checker, threshold["denominatorFilter"], f"{here}.denominatorFilter", True
            )
        if threshold.get("comparison", "COMPARISON_UNSPECIFIED") == "COMPARISON_UNSPECIFIED":
            checker.fail(f"{here}.comparison", "a threshold needs a comparison")
        seconds = duration_s(threshold["duration"])
        if seconds is not None and seconds % 60:
            checker.fail(f"{here}.duration", "must be a whole number of minutes (alert.proto)")
    prom = condition.get("conditionPrometheusQueryLanguage")
    if prom is not None:
        here = f"{where}.conditionPrometheusQueryLanguage"
        check_promql(checker, prom["query"], f"{here}.query")
        interval = duration_s(prom.get("evaluationInterval", "30s"))
        if interval is not None and (interval <= 0 or interval % 30):
            checker.fail(f"{here}.evaluationInterval", "must be a positive multiple of 30s")
        if "alertRule" in prom and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", prom["alertRule"]):
            checker.fail(f"{here}.alertRule", "must be a valid Prometheus label name")
