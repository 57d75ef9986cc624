"""What the dashboard and the alert policies may name: our own Prometheus metrics, read from the
source that defines them, and the Google Cloud metrics pinned in ``google_metrics.json``.

Our metrics are read from ``worker/metrics.py`` and ``ingress/metrics.py`` with ``ast``, not
imported: importing would need prometheus-client (an extra the deploy machine may lack) and would
register the metrics in this process. Renaming a metric or a label there makes every query that
uses the old name fail ``monitoring/validate.py``.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRIC_SOURCES = (ROOT / "worker" / "metrics.py", ROOT / "ingress" / "metrics.py")
GOOGLE_METRICS = Path(__file__).resolve().parent / "google_metrics.json"
_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
# What prometheus-client exposes for each kind, after the name (the text format's series).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


@dataclass(frozen=True)
class PromMetric:
    """One exposed series name and the labels it carries (``le`` included for buckets)."""

    name: str
    family: str
    kind: str
    labels: frozenset[str]
    source: str


def _literal_strings(node: ast.expr | None) -> list[str] | None:
    if node is None:
        return []
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _families(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{family name: (kind, labels)}`` for each Counter/Gauge/Histogram/Summary(...) call."""
    found: dict[str, tuple[str, list[str]]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind = _KINDS.get(node.func.id)
        if kind is None or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        labels_node = node.args[2] if len(node.args) > 2 else None
        for keyword in node.keywords:
            if keyword.arg == "labelnames":
                labels_node = keyword.value
        labels = _literal_strings(labels_node)
        if labels is None:
            raise ValueError(f"{path}: labels of {node.args[0].value!r} are not a literal list")
        found[str(node.args[0].value)] = (kind, labels)
    return found


@cache
def prometheus_metrics() -> dict[str, PromMetric]:
    """Every series name our services expose, e.g. ``omni_worker_jobs_total``."""
    metrics: dict[str, PromMetric] = {}
    for path in METRIC_SOURCES:
        for family, (kind, labels) in _families(path).items():
            # prometheus-client drops a counter's own _total and adds it back when exposing.
            base = family.removesuffix("_total") if kind == "counter" else family
            for suffix in _SUFFIXES[kind]:
                extra = {"le"} if suffix == "_bucket" else set()
                metrics[base + suffix] = PromMetric(
                    base + suffix, family, kind, frozenset(labels) | extra, path.name
                )
    return metrics


@cache
def label_values(module: str, constant: str) -> tuple[str, ...]:
    """A tuple of strings assigned at the top of ``worker/metrics.py`` and the like, such as
    ``OUTCOMES``, read without importing the module."""
    path = ROOT / module
    for node in ast.parse(path.read_text(), str(path)).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == constant for t in node.targets)
            and (values := _literal_strings(node.value)) is not None
        ):
            return tuple(values)
    raise LookupError(f"{module} assigns no literal {constant}")


@cache
def google() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(GOOGLE_METRICS.read_text())
    return loaded


def promql_name(metric_type: str) -> str:
    """A Cloud Monitoring metric type's PromQL name: the first ``/`` becomes ``:``, every other
    special character ``_`` (https://cloud.google.com/monitoring/promql/promql-mapping)."""
    domain, _, path = metric_type.partition("/")
    return (
        "".join(c if c.isalnum() or c == "_" else "_" for c in domain)
        + ":"
        + "".join(c if c.isalnum() or c == "_" else "_" for c in path)
    )
