"""The coverage check of ``python -m monitoring`` (monitoring/validate.py): one
``backlog-age-<task>`` policy per task on its jobs' subscription, its threshold the task's budget
(``budgets.py``); the no-ready-worker policy with one condition per task, on both its
subscriptions, naming the Deployment that serves the task in ``k8s/overlays``; no two policies
with the same ``displayName``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitoring import budgets, catalogue
from monitoring.shape import Problem
from schemas.messages import CHUNK_KIND, task_subscription
from schemas.tasks import TASKS

K8S_OVERLAYS = catalogue.ROOT / "k8s" / "overlays"


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
