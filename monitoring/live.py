"""The real run of ``monitoring.apply``: Google's clients, imported only here and only then.

Needs ``google-cloud-monitoring`` (alert policies, v3) and ``google-cloud-monitoring-dashboards``
(dashboards, v1), and Application Default Credentials with ``roles/monitoring.editor`` on the
project. How each resource is found and when it is left alone: ``monitoring/plan.py``.
"""

from __future__ import annotations

import json
from typing import Any

from google.cloud import (  # type: ignore[attr-defined,unused-ignore]
    monitoring_dashboard_v1,
    monitoring_v3,
)

from common.googleapi import Missing, translated
from monitoring.plan import POLICY_LABEL, ApiCall, MonitoringError, contains


def _as_dict(message: Any) -> dict[str, Any]:
    text = type(message).to_json(message, use_integers_for_enums=False)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


class Converger:
    """Applies one ``ApiCall`` of ``plan`` at a time; returns what it did."""

    def __init__(self, project: str) -> None:
        self.project = project
        self._dashboards = monitoring_dashboard_v1.DashboardsServiceClient()
        self._policies = monitoring_v3.AlertPolicyServiceClient()

    def __call__(self, call: ApiCall) -> str:
        if call.method == "projects.dashboards.create":
            return self._dashboard(call)
        if call.method == "projects.alertPolicies.create":
            return self._policy(call)
        raise MonitoringError(f"no way to apply {call.method}")

    def _dashboard(self, call: ApiCall) -> str:
        desired = monitoring_dashboard_v1.Dashboard.from_json(json.dumps(call.body))
        try:
            with translated(MonitoringError, "dashboard read", "Cloud Monitoring"):
                existing = self._dashboards.get_dashboard(name=call.lookup)
        except Missing:
            created = self._dashboards.create_dashboard(
                parent=call.parent_or_name, dashboard=desired
            )
            if created.name != call.lookup:
                raise MonitoringError(
                    f"the API named the new dashboard {created.name}, not {call.lookup}: the next "
                    "run would not find it; delete it and report this"
                ) from None
            return "created"
        if contains(_as_dict(existing), call.body):
            return "unchanged"
        desired.etag = existing.etag  # a concurrent edit makes this fail instead of being lost
        self._dashboards.update_dashboard(dashboard=desired)
        return "updated"

    def _policy(self, call: ApiCall) -> str:
        key = call.lookup.partition("=")[2]
        found = [
            policy
            for policy in self._policies.list_alert_policies(name=call.parent_or_name)
            if policy.user_labels.get(POLICY_LABEL) == key
        ]
        if len(found) > 1:
            names = ", ".join(policy.name for policy in found)
            raise MonitoringError(f"{len(found)} policies carry {call.lookup}: {names}; keep one")
        desired = monitoring_v3.AlertPolicy.from_json(json.dumps(call.body))
        if not found:
            self._policies.create_alert_policy(name=call.parent_or_name, alert_policy=desired)
            return "created"
        existing = found[0]
        if contains(_as_dict(existing), call.body):
            return "unchanged"
        desired.name = existing.name
        # A condition whose displayName is unchanged keeps its name (alert.proto's advice: its
        # open incidents stay attached); one without a name is added, the rest deleted.
        by_title = {condition.display_name: condition.name for condition in existing.conditions}
        for condition in desired.conditions:
            condition.name = by_title.get(condition.display_name, "")
        if not call.body.get("notificationChannels"):
            desired.notification_channels = list(existing.notification_channels)
        self._policies.update_alert_policy(alert_policy=desired)
        return "updated"
