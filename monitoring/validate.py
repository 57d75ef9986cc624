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

This module reads the files and reports; the checks are ``shape.py``'s (the shape),
``rules.py``'s (each document's rules in prose), ``names.py``'s and ``coverage.py``'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from monitoring.coverage import K8S_OVERLAYS, check_coverage, worker_pools
from monitoring.names import WORKER_METRICS, check_filter, check_promql
from monitoring.rules import check_dashboard, check_policy
from monitoring.shape import InvalidConfig, Problem
from schemas.messages import DEFAULT_SUBSCRIPTION_PREFIX

__all__ = [
    "K8S_OVERLAYS",
    "WORKER_METRICS",
    "InvalidConfig",
    "Problem",
    "check_all",
    "check_coverage",
    "check_dashboard",
    "check_filter",
    "check_policy",
    "check_promql",
    "worker_pools",
]

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboard.json"
ALERTS = HERE / "alerts"


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
