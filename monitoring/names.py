"""The names check of ``python -m monitoring`` (monitoring/validate.py): every metric type,
monitored resource and label a Monitoring filter names is pinned in ``google_metrics.json``
(``catalogue.py``); every PromQL metric is one that ``worker/metrics.py`` or
``ingress/metrics.py`` defines (or a pinned Google/GKE one), with the labels it has; ``outcome``
values are ``worker.metrics.OUTCOMES``; every subscription is one provisioning creates.
"""

from __future__ import annotations

import re
from typing import Any

from monitoring import catalogue, promql
from monitoring.shape import Checker
from schemas.messages import DEFAULT_DEAD_LETTER_SUBSCRIPTION, KINDS, task_subscription
from schemas.tasks import TASKS

WORKER_METRICS = "worker/metrics.py"
# filter clauses: metric.type = "x", resource.type = "x", resource.labels.k = "x" / starts_with("x")
_FILTER_TYPE = re.compile(r'\b(metric|resource)\.type\s*=\s*"([^"]+)"')
_FILTER_LABEL = re.compile(
    r'\b(metric|resource)\.labels?\.(?:"([^"]+)"|(\w+))\s*(=|!=)\s*(?:(\w+)\()?"([^"]*)"\)?'
)


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
