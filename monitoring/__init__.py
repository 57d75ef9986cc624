"""Omni's Cloud Monitoring dashboard and alert policies, as code.

    dashboard.json          the dashboard (Dashboards API v1 resource)
    alerts/<name>.json      one alert policy each (AlertPolicy, Monitoring API v3)
    plan.py                 plan(project) -> the API calls; apply(project, dry_run, out)
    validate.py             python -m monitoring: the offline check (shape and names)
    rules.py, names.py,     its checks: each document's shape and rules, the names they use,
    coverage.py             the policies every task must have

``python -m deploy`` calls ``apply``; docs/observability.md, "Dashboards and alerts", says what
each tile and policy watches and why each budget is what it is.
"""

from monitoring.plan import ApiCall, MonitoringError, apply, plan
from monitoring.validate import InvalidConfig, Problem, check_all

__all__ = ["ApiCall", "InvalidConfig", "MonitoringError", "Problem", "apply", "check_all", "plan"]
