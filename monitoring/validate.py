"""Offline check of ``monitoring/dashboard.json`` and ``monitoring/alerts/*.json``: the shape the
Monitoring API accepts, and names that exist.

    python -m monitoring      # prints each problem, exits 1 if there is one

What is checked, and where each rule comes from:

- **Shape** (``api_schema.json``, pinned from Google's discovery documents by ``pin_schema.py``):
  no unknown field, each value of its type, enum values (``COMPARISON_GT``), durations as the
  API's JSON writes them (``"300s"``), required fields, no output-only field. The proto ``oneof``
  groups (one layout per dashboard, one content per widget, one query per data set, one kind per
  condition) are in ``_ONEOFS``, from google/monitoring/dashboard/v1/*.proto and
  google/monitoring/v3/alert.proto.
- **Rules the API states in prose**: an ``alignmentPeriod`` of at least 60 s (at most 25 h in an
  alert) wherever an aligner is set; a cross-series reducer only after an aligner; a threshold's
  ``duration`` in whole minutes; a PromQL ``evaluationInterval`` in multiples of 30 s;
  ``ALIGN_RATE``/``ALIGN_DELTA`` only on DELTA or CUMULATIVE metrics; tiles inside the mosaic's
  columns and not overlapping; user label keys and values in lowercase letters, digits, ``_``
  and ``-``.
- **Names** (``catalogue.py``): every metric type a filter names is pinned in
  ``google_metrics.json``, with its monitored resource and labels; every PromQL metric is one
  that ``worker/metrics.py`` or ``ingress/metrics.py`` defines (or a pinned Google/GKE one), with
  the labels it has; ``outcome`` values are ``worker.metrics.OUTCOMES``; every subscription is
  ``worker-<task>`` or ``worker-<task>-chunks`` of a task in ``schemas.tasks`` (or the
  dead-letter handler's).
- **Coverage**: one ``backlog-age-<task>`` policy per task on its jobs' subscription, its
  threshold the task's budget (``budgets.py``); the no-ready-worker policy has one condition per
  task, on both its subscriptions, naming the Deployment that serves the task in
  ``k8s/overlays``; each policy's ``userLabels.omni_policy`` is its file's name (``apply`` finds
  the deployed policy by it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from monitoring import budgets, catalogue, promql
from monitoring.shape import Checker, InvalidConfig, Problem, duration_s, walk
from schemas.messages import (
    CHUNK_KIND,
    DEFAULT_DEAD_LETTER_SUBSCRIPTION,
    DEFAULT_SUBSCRIPTION_PREFIX,
    KINDS,
    task_subscription,
)
from schemas.tasks import TASKS

__all__ = ["InvalidConfig", "Problem", "check_all", "check_dashboard", "check_policy"]

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboard.json"
ALERTS = HERE / "alerts"
K8S_OVERLAYS = catalogue.ROOT / "k8s" / "overlays"
WORKER_METRICS = "worker/metrics.py"
_USER_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_USER_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_RATE_ALIGNERS = frozenset({"ALIGN_RATE", "ALIGN_DELTA"})
_MAX_ALERT_ALIGNMENT_S = 90_000
_MOSAIC_MAX_COLUMNS = 48
# filter clauses: metric.type = "x", resource.type = "x", resource.labels.k = "x" / starts_with("x")
_FILTER_TYPE = re.compile(r'\b(metric|resource)\.type\s*=\s*"([^"]+)"')
_FILTER_LABEL = re.compile(
    r'\b(metric|resource)\.labels?\.(?:"([^"]+)"|(\w+))\s*(=|!=)\s*(?:(\w+)\()?"([^"]*)"\)?'
)
_GROUP_BY = re.compile(r'^(metric|resource)\.labels?\.(?:"([^"]+)"|(\w+))$')


# ------------------------------------------------------------------------------------- names


def _subscription_problems(value: str, how: str) -> str | None:
    known = {task_subscription(task, kind) for task in TASKS for kind in KINDS}
    known.add(DEFAULT_DEAD_LETTER_SUBSCRIPTION)
    # A regular expression is checked as a list of alternatives, as the outcomes are.
    for name in value.split("|") if how == "=~" else [value] if how in ("=", "!=") else []:
        if name not in known:
            return f"subscription {name!r} is not provisioned (emulators/provision.py)"
    if how == "starts_with" and not any(name.startswith(value) for name in known):
        return f"no provisioned subscription starts with {value!r}"
    return None


def check_filter(checker: Checker, text: str, where: str, *, alert: bool) -> str | None:
    """Check a Monitoring filter's metric, resource and labels; return its metric type."""
    types: dict[str, str] = dict(_FILTER_TYPE.findall(text))
    metric_type = types.get("metric")
    metrics: dict[str, Any] = catalogue.google()["metrics"]  # type: ignore[assignment]
    resources: dict[str, list[str]] = catalogue.google()["resources"]  # type: ignore[assignment]
    if metric_type is None:
        checker.fail(where, "the filter names no metric.type")
        return None
    spec = metrics.get(metric_type)
    if spec is None:
        checker.fail(where, f"unknown metric type {metric_type!r}: not in google_metrics.json")
        return None
    resource = types.get("resource")
    if alert and resource is None:
        checker.fail(where, "an alert's filter must name resource.type (alert.proto)")
    if resource is not None and resource != spec["resource"]:
        checker.fail(
            where, f"{metric_type} is written for resource {spec['resource']!r}, not {resource!r}"
        )
    for kind, quoted, bare, how, function, value in _FILTER_LABEL.findall(text):
        label = quoted or bare
        allowed = spec["labels"] if kind == "metric" else resources[spec["resource"]]
        if label not in allowed:
            checker.fail(where, f"{kind} label {label!r} does not exist on {metric_type}")
        if label == "subscription_id":
            problem = _subscription_problems(value, function or how)
            if problem:
                checker.fail(where, problem)
    return metric_type


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


def check_promql(checker: Checker, query: str, where: str) -> None:
    try:
        parsed = promql.parse(query)
    except promql.PromQLError as exc:
        checker.fail(where, f"PromQL: {exc}")
        return
    for name in sorted(parsed.unknown_functions):
        checker.fail(where, f"PromQL: unknown function {name}()")
    ours = catalogue.prometheus_metrics()
    google: dict[str, Any] = catalogue.google()
    ksm: dict[str, list[str]] = google["kube_state_metrics"]
    targets = set(google["prometheus_target_labels"])
    by_promql = {catalogue.promql_name(t): (t, s) for t, s in google["metrics"].items()}
    outcomes = catalogue.label_values(WORKER_METRICS, "OUTCOMES")
    available: set[str] = set(targets)
    for selector in parsed.selectors:
        name = selector.name
        if name in ours:
            labels = set(ours[name].labels) | targets
        elif name in ksm:
            labels = set(ksm[name]) | targets
        elif name in by_promql:
            metric_type, spec = by_promql[name]
            labels = set(spec["labels"]) | set(google["resources"][spec["resource"]])
            labels.add("monitored_resource")
        else:
            checker.fail(
                where,
                f"PromQL: unknown metric {name or '(unnamed)'!r}: not defined in "
                "worker/metrics.py or ingress/metrics.py, nor pinned in "
                "google_metrics.json",
            )
            continue
        available |= labels
        for matcher in selector.matchers:
            if matcher.label == "__name__":
                continue
            if matcher.label not in labels:
                checker.fail(where, f"PromQL: {name} has no label {matcher.label!r}")
            if matcher.label == "outcome" and name.startswith("omni_worker_jobs"):
                for value in matcher.value.split("|") if "=~" in matcher.op else [matcher.value]:
                    if value not in outcomes:
                        checker.fail(
                            where,
                            f"PromQL: outcome {value!r} is not one of worker.metrics.OUTCOMES",
                        )
            if matcher.label == "subscription_id":
                problem = _subscription_problems(matcher.value, matcher.op)
                if problem:
                    checker.fail(where, problem)
            if matcher.label == "monitored_resource" and name in by_promql:
                wanted = by_promql[name][1]["resource"]
                if matcher.value != wanted:
                    checker.fail(where, f"PromQL: {name} is on {wanted!r}, not {matcher.value!r}")
    for label in sorted(parsed.grouping - available):
        checker.fail(where, f"PromQL: no metric in the query has the label {label!r}")


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


# -------------------------------------------------------------------------------- coverage


def worker_pools(overlays: Path = K8S_OVERLAYS) -> dict[str, str]:
    """``{task: Deployment name}`` from ``k8s/overlays``: each pool's ``WORKER_TASKS`` and the
    ``nameSuffix`` its kustomization puts on ``omni-worker``."""
    import yaml  # only here: the rest of the check reads JSON

    pools: dict[str, str] = {}
    for kustomization in sorted(overlays.glob("*/kustomization.yaml")):
        suffix = yaml.safe_load(kustomization.read_text()).get("nameSuffix", "")
        deployment = yaml.safe_load((kustomization.parent / "deployment.yaml").read_text())
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env.get("name") == "WORKER_TASKS":
                    for task in str(env["value"]).split(","):
                        pools[task.strip()] = f"omni-worker{suffix}"
    return pools


def check_coverage(policies: dict[str, Any], pools: dict[str, str] | None) -> list[Problem]:
    """The policies that must exist for every task, with the task's budget and pool."""
    problems: list[Problem] = []
    for task, budget in budgets.budgets().items():
        file = f"backlog-age-{task}.json"
        policy = policies.get(file)
        if policy is None:
            problems.append(Problem(file, "", f"missing: task {task!r} has no backlog-age alert"))
            continue
        subscription = task_subscription(task)
        for index, condition in enumerate(policy.get("conditions", [])):
            threshold = condition.get("conditionThreshold", {})
            where = f"conditions[{index}].conditionThreshold"
            if f'"{subscription}"' not in threshold.get("filter", ""):
                problems.append(Problem(file, f"{where}.filter", f"must watch {subscription}"))
            if threshold.get("thresholdValue") != budget:
                problems.append(
                    Problem(
                        file,
                        f"{where}.thresholdValue",
                        f"{task}'s budget is "
                        f"{budget} s (monitoring/budgets.py), not "
                        f"{threshold.get('thresholdValue')}",
                    )
                )
    for file in policies:
        if file.startswith("backlog-age-") and file[len("backlog-age-") : -5] not in TASKS:
            problems.append(Problem(file, "", "names no task in schemas.tasks"))
    problems += _no_ready_coverage(policies.get("no-ready-worker.json"), pools)
    names: dict[str, str] = {}
    for file, policy in sorted(policies.items()):
        name = policy.get("displayName", "")
        if name in names:
            problems.append(Problem(file, "displayName", f"the same as {names[name]}'s"))
        names[name] = file
    return problems


def _no_ready_coverage(policy: Any, pools: dict[str, str] | None) -> list[Problem]:
    file = "no-ready-worker.json"
    if policy is None:
        return [Problem(file, "", "missing: no alert for a backlog no worker can take")]
    problems: list[Problem] = []
    queries = [
        c.get("conditionPrometheusQueryLanguage", {}).get("query", "")
        for c in policy.get("conditions", [])
    ]
    for task in TASKS:
        # Jobs or chunks waiting: either backlog needs a pod.
        subscription = f"{task_subscription(task)}|{task_subscription(task, CHUNK_KIND)}"
        mine = [q for q in queries if f'subscription_id=~"{subscription}"' in q]
        if len(mine) != 1:
            problems.append(Problem(file, "conditions", f"needs one condition on {subscription}"))
        elif pools is not None and f'deployment="{pools.get(task)}"' not in mine[0]:
            problems.append(
                Problem(
                    file,
                    "conditions",
                    f"{task}'s condition must watch "
                    f"{pools.get(task)}, the pool serving it in k8s/overlays",
                )
            )
    return problems


# ------------------------------------------------------------------------------------ files


def load(path: Path) -> tuple[Any, list[Problem]]:
    try:
        return json.loads(path.read_text()), []
    except (OSError, json.JSONDecodeError) as exc:
        return None, [Problem(path.name, "", f"not readable JSON: {exc}")]


def policy_files(alerts: Path = ALERTS) -> list[Path]:
    return sorted(alerts.glob("*.json"))


def check_all(
    dashboard: Path = DASHBOARD, alerts: Path = ALERTS, overlays: Path | None = K8S_OVERLAYS
) -> list[Problem]:
    """Every problem in the dashboard and the policies; [] when all is well."""
    doc, problems = load(dashboard)
    if doc is not None:
        problems += check_dashboard(doc, dashboard.name)
    policies: dict[str, Any] = {}
    for path in policy_files(alerts):
        policy, unreadable = load(path)
        problems += unreadable
        if policy is not None:
            problems += check_policy(policy, path.name)
            policies[path.name] = policy
    pools = worker_pools(overlays) if overlays is not None else None
    return problems + check_coverage(policies, pools)


def main() -> int:
    problems = check_all()
    for problem in problems:
        print(problem)
    if not problems:
        count = len(policy_files())
        print(f"ok: dashboard.json and {count} alert policies ({DEFAULT_SUBSCRIPTION_PREFIX}-*)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
