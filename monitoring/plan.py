"""The Monitoring API calls that put ``dashboard.json`` and ``alerts/*.json`` into a project, and
the step of ``python -m deploy`` that makes them (``apply``).

Idempotence, and how a resource already there is found:

- **The dashboard** has a name of our choosing, ``projects/PROJECT/dashboards/omni-pipeline``
  (``dashboards.create`` takes the name in the body: its ``parent`` "must match the dashboard
  resource name"). ``apply`` gets it by that name: missing, it is created; present and different,
  it is replaced (``dashboards.patch`` with the etag just read, so a concurrent edit in the
  console fails instead of being lost); present and the same, nothing is sent.
- **An alert policy's** id is assigned by the API, so each file carries
  ``userLabels.omni_policy`` = its file name (``validate.py`` checks it) and ``apply`` lists the
  project's policies and takes the one with that label: none, it is created; one, it is
  replaced (``alertPolicies.patch`` without a mask) only if it differs, keeping its condition
  names where the condition's displayName is unchanged and the notification channels someone
  added in the console when the deploy names none; two or more, ``apply`` stops and names them.

"Differs" compares what the file says with what the API returns, field by field, ignoring what
the API adds (ids, etags, records, defaults) and spacing and ``label``/``labels`` in filters.

``plan()`` is offline and deterministic: it validates the files and returns the calls a project
without them would get, each with the key that ``apply`` looks the resource up by.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from monitoring.validate import ALERTS, DASHBOARD, InvalidConfig, check_all, load, policy_files

SERVICE = "monitoring.googleapis.com"
DASHBOARD_ID = "omni-pipeline"
"""The dashboard's id in every project: ``projects/PROJECT/dashboards/omni-pipeline``."""
POLICY_LABEL = "omni_policy"
"""The user label whose value (the file's name) identifies each deployed alert policy."""
PLACEHOLDER = re.compile(r"\bPROJECT\b")
"""Where a file names the project (k8s/ and cloudrun.yaml use the same word)."""
_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9.:-]*$")
"""Loose on purpose (``demo`` is a fine dry-run project): no slash, space or capital."""


class MonitoringError(RuntimeError):
    """The project's dashboards or policies are not as ``apply`` can safely converge."""


@dataclass(frozen=True)
class ApiCall:
    """One call to the Monitoring API, as its REST method is named in the discovery document."""

    service: str
    method: str  # "projects.dashboards.create", "projects.alertPolicies.create", "...patch"
    parent_or_name: str  # the path parameter: the parent for create, the resource for patch
    body: Mapping[str, Any] = field(hash=False)
    lookup: str = ""  # how apply finds the resource if it exists (a name, or label=value)

    def line(self) -> str:
        """One stable, human-readable line: the call, what it makes, and a digest of the body."""
        digest = hashlib.sha256(
            json.dumps(self.body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:12]
        upsert = f" (patch if {self.lookup} exists)" if self.lookup else ""
        return (
            f"{self.service} {self.method} {self.parent_or_name} "
            f"{json.dumps(self.body.get('displayName', ''), ensure_ascii=False)}"
            f"{upsert} body-sha256:{digest}"
        )


def _substitute(value: Any, project: str) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(project, value)
    if isinstance(value, list):
        return [_substitute(item, project) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, project) for key, item in value.items()}
    return value


def plan(project: str, notification_channels: Sequence[str] = ()) -> list[ApiCall]:
    """The calls that create the dashboard and every alert policy in ``project``: the dashboard
    first, then the policies in file-name order. ``notification_channels`` (full names,
    ``projects/P/notificationChannels/ID``) go on every policy. Raises ``InvalidConfig`` if a file
    fails ``validate.check_all``, and ``ValueError`` for a malformed project id."""
    if not _PROJECT_ID.match(project):
        raise ValueError(f"{project!r} is not a Google Cloud project id")
    problems = check_all()
    if problems:
        raise InvalidConfig(problems)
    parent = f"projects/{project}"
    dashboard_name = f"{parent}/dashboards/{DASHBOARD_ID}"
    dashboard, _ = load(DASHBOARD)
    calls = [
        ApiCall(
            SERVICE,
            "projects.dashboards.create",
            parent,
            {"name": dashboard_name, **_substitute(dashboard, project)},
            lookup=dashboard_name,
        )
    ]
    for path in policy_files(ALERTS):
        policy, _ = load(path)
        body = _substitute(policy, project)
        if notification_channels:
            body["notificationChannels"] = list(notification_channels)
        lookup = f"userLabels.{POLICY_LABEL}={path.stem}"
        calls.append(ApiCall(SERVICE, "projects.alertPolicies.create", parent, body, lookup))
    return calls


def apply(
    project: str, dry_run: bool, out: TextIO, notification_channels: Sequence[str] = ()
) -> list[str]:
    """Make the project's dashboard and alert policies match the files. With ``dry_run``, print
    each call of ``plan`` on one line and touch nothing (no network, no credentials, no Google
    client imported). Otherwise converge each resource as the module says, with Application
    Default Credentials, printing one line per resource: created, updated or unchanged. Returns
    the lines printed."""
    calls = plan(project, notification_channels)
    lines: list[str] = []
    if dry_run:
        for call in calls:
            lines.append(call.line())
            out.write(lines[-1] + "\n")
        return lines
    from monitoring import live  # the Google clients: only for a real run

    converge = live.Converger(project)
    for call in calls:
        lines.append(f"{converge(call)}: {call.line()}")
        out.write(lines[-1] + "\n")
    return lines


_FILTER_SPACING = re.compile(r"\s+|\"")


def _normal(key: str, value: Any) -> Any:
    """What is compared of one value: filters without spacing, quotes or ``labels``/``label``
    differences (the API may store a filter in its own spelling)."""
    if key in ("filter", "denominatorFilter") and isinstance(value, str):
        return _FILTER_SPACING.sub("", value).replace(".labels.", ".label.")
    return value


def contains(current: Any, desired: Any, key: str = "") -> bool:
    """Whether every field ``desired`` sets has the same value in ``current`` (the API's answer,
    which also carries ids, etags and defaults that the files do not set)."""
    if isinstance(desired, dict):
        # proto3 JSON leaves out a field at its default (0, "", false): absent is that default.
        return isinstance(current, dict) and all(
            contains(current.get(name, type(value)()), value, name)
            for name, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(contains(c, d, key) for c, d in zip(current, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(current, bool):
        return current is desired
    if isinstance(desired, int | float):
        try:
            return float(current) == float(desired)  # int64 fields come back as strings
        except (TypeError, ValueError):
            return False
    return bool(_normal(key, current) == _normal(key, desired))
