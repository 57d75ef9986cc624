"""monitoring/: the dashboard and alert policies validate offline, a broken one is refused with a
message naming it, plan() is stable, and a dry run prints and touches nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import monitoring
from monitoring import budgets, catalogue, plan, validate
from schemas.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A copy of monitoring/dashboard.json and monitoring/alerts/ to break."""
    shutil.copy(validate.DASHBOARD, tmp_path / "dashboard.json")
    shutil.copytree(validate.ALERTS, tmp_path / "alerts")
    return tmp_path


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _check(root: Path) -> list[str]:
    return [str(p) for p in validate.check_all(root / "dashboard.json", root / "alerts")]


def _tile(doc: Any, widget_id: str) -> Any:
    return next(t["widget"] for t in doc["mosaicLayout"]["tiles"] if t["widget"]["id"] == widget_id)


def test_every_file_validates() -> None:
    assert validate.check_all() == []
    assert len(validate.policy_files()) >= len(TASKS) + 3


def test_the_command_line_check_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitoring"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: dashboard.json and ")


def _threshold(doc: Any) -> Any:
    return doc["conditions"][0]["conditionThreshold"]


def _burn_query(doc: Any) -> Any:
    return doc["conditions"][0]["conditionPrometheusQueryLanguage"]


BROKEN: list[tuple[str, str, Callable[[Any], None], str]] = [
    (
        "wrong enum",
        "alerts/dead-letters.json",
        lambda d: _threshold(d).update(comparison="GREATER_THAN"),
        "dead-letters.json: conditions[0].conditionThreshold.comparison: 'GREATER_THAN' is not "
        "one of COMPARISON_UNSPECIFIED, COMPARISON_GT",
    ),
    (
        "missing required field",
        "alerts/dead-letters.json",
        lambda d: _threshold(d).pop("filter"),
        "dead-letters.json: conditions[0].conditionThreshold: missing required field 'filter'",
    ),
    (
        "unknown field",
        "alerts/backlog-age-embed.json",
        lambda d: _threshold(d).update(thresholdValu=600),
        "backlog-age-embed.json: conditions[0].conditionThreshold.thresholdValu: unknown field",
    ),
    (
        "duration not in the API's form",
        "alerts/backlog-age-embed.json",
        lambda d: _threshold(d).update(duration="1m"),
        "backlog-age-embed.json: conditions[0].conditionThreshold.duration: '1m' is not a duration",
    ),
    (
        "duration not in whole minutes",
        "alerts/backlog-age-embed.json",
        lambda d: _threshold(d).update(duration="90s"),
        "conditionThreshold.duration: must be a whole number of minutes",
    ),
    (
        "alignment period under a minute",
        "alerts/dead-letters.json",
        lambda d: _threshold(d)["aggregations"][0].update(alignmentPeriod="30s"),
        "dead-letters.json: conditions[0].conditionThreshold.aggregations[0]: alignmentPeriod "
        "must be at least 60s",
    ),
    (
        "unknown Pub/Sub metric type",
        "alerts/dead-letters.json",
        lambda d: _threshold(d).update(
            filter=_threshold(d)["filter"].replace("dead_letter_message_count", "dead_letters")
        ),
        "dead-letters.json: conditions[0].conditionThreshold.filter: unknown metric type "
        "'pubsub.googleapis.com/subscription/dead_letters'",
    ),
    (
        "unknown Prometheus metric",
        "alerts/ingress-error-burn.json",
        lambda d: _burn_query(d).update(
            query=_burn_query(d)["query"].replace("omni_ingress_requests_total", "omni_requests")
        ),
        "ingress-error-burn.json: conditions[0].conditionPrometheusQueryLanguage.query: PromQL: "
        "unknown metric 'omni_requests'",
    ),
    (
        "a label the metric does not have",
        "alerts/ingress-error-burn.json",
        lambda d: _burn_query(d).update(
            query=_burn_query(d)["query"].replace("status=~", "code=~")
        ),
        "PromQL: omni_ingress_requests_total has no label 'code'",
    ),
    (
        "a subscription nobody provisions",
        "alerts/backlog-age-embed.json",
        lambda d: _threshold(d).update(
            filter=_threshold(d)["filter"].replace("worker-embed", "jobs-worker-embed")
        ),
        "backlog-age-embed.json: conditions[0].conditionThreshold.filter: subscription "
        "'jobs-worker-embed' is not provisioned",
    ),
    (
        "a threshold that is not the task's budget",
        "alerts/backlog-age-forecast.json",
        lambda d: _threshold(d).update(thresholdValue=600),
        "backlog-age-forecast.json: conditions[0].conditionThreshold.thresholdValue: forecast's "
        "budget is 1800 s",
    ),
    (
        "a label apply cannot find the policy by",
        "alerts/dead-letters.json",
        lambda d: d["userLabels"].update(omni_policy="dead-letter"),
        "dead-letters.json: userLabels.omni_policy: must be 'dead-letters'",
    ),
    (
        "an output-only field",
        "alerts/dead-letters.json",
        lambda d: d.update(creationRecord={"mutatedBy": "me"}),
        "dead-letters.json: creationRecord: 'creationRecord' is output only",
    ),
    (
        "an outcome the worker never counts",
        "dashboard.json",
        lambda d: _tile(d, "job-outcomes")["xyChart"]["dataSets"][0]["timeSeriesQuery"].update(
            prometheusQuery='sum(rate(omni_worker_jobs_total{outcome="done"}[5m]))'
        ),
        "dashboard.json: mosaicLayout.tiles[5].widget.xyChart.dataSets[0].timeSeriesQuery."
        "prometheusQuery: PromQL: outcome 'done' is not one of worker.metrics.OUTCOMES",
    ),
    (
        "a rate of a gauge",
        "dashboard.json",
        lambda d: _tile(d, "backlog")["xyChart"]["dataSets"][0]["timeSeriesQuery"][
            "timeSeriesFilter"
        ]["aggregation"].update(perSeriesAligner="ALIGN_RATE"),
        "ALIGN_RATE applies to DELTA or CUMULATIVE metrics, not a GAUGE",
    ),
    (
        "two contents in one widget",
        "dashboard.json",
        lambda d: _tile(d, "backlog").update(text={"content": "x"}),
        "dashboard.json: mosaicLayout.tiles[1].widget: Widget needs exactly one of xyChart",
    ),
    (
        "overlapping tiles",
        "dashboard.json",
        lambda d: d["mosaicLayout"]["tiles"][2].update(xPos=12),
        "dashboard.json: mosaicLayout.tiles[2]: overlaps tile 1",
    ),
]


@pytest.mark.parametrize(
    ("file", "change", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_a_broken_file_is_refused_naming_it(
    files: Path, file: str, change: Callable[[Any], None], expected: str
) -> None:
    _edit(files / file, change)

    problems = _check(files)

    assert any(expected in problem for problem in problems), problems


def test_a_task_without_its_backlog_alert_is_reported(files: Path) -> None:
    (files / "alerts" / "backlog-age-predict.json").unlink()

    expected = "backlog-age-predict.json: (top): missing: task 'predict' has no backlog-age alert"
    assert expected in _check(files)


def test_renaming_a_metric_in_the_worker_breaks_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed = tmp_path / "metrics.py"
    source = (ROOT / "worker" / "metrics.py").read_text()
    renamed.write_text(source.replace('"omni_worker_jobs"', '"omni_worker_job_outcomes"'))
    monkeypatch.setattr(catalogue, "METRIC_SOURCES", (renamed, ROOT / "ingress" / "metrics.py"))
    catalogue.prometheus_metrics.cache_clear()
    try:
        problems = [str(p) for p in validate.check_all()]
    finally:
        catalogue.prometheus_metrics.cache_clear()

    assert any(
        p.startswith("dashboard.json: ") and "unknown metric 'omni_worker_jobs_total'" in p
        for p in problems
    ), problems


def test_the_no_ready_worker_alert_follows_the_pools_in_k8s(tmp_path: Path) -> None:
    overlays = tmp_path / "overlays"
    shutil.copytree(validate.K8S_OVERLAYS, overlays)
    kustomization = overlays / "gpu-embed" / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("nameSuffix: -gpu-embed", "nameSuffix: -gpu")
    )

    assert validate.worker_pools()["similar"] == "omni-worker-gpu-embed"
    problems = [str(p) for p in validate.check_all(overlays=overlays)]
    expected = (
        "no-ready-worker.json: conditions: embed's condition must watch omni-worker-gpu, "
        "the pool serving it in k8s/overlays"
    )
    assert expected in problems


def test_budgets_follow_the_task_time_limits() -> None:
    # 5 attempts of 60 s, 10+20+40+80 s of backoff, 120 s in the queue: 570 s, whole minutes.
    assert budgets.backlog_age_budget_s("embed") == 600
    # forecast's limit is 300 s: 1,500 + 150 + 120 = 1,770 s.
    assert budgets.backlog_age_budget_s("forecast") == 1800


def test_plan_is_stable_with_one_call_per_dashboard_and_policy() -> None:
    first, second = plan("demo"), plan("demo")

    assert first == second
    assert [c.line() for c in first] == [c.line() for c in second]
    assert len(first) == 1 + len(validate.policy_files())
    assert first[0].method == "projects.dashboards.create"
    assert first[0].body["name"] == "projects/demo/dashboards/omni-pipeline"
    assert {c.method for c in first[1:]} == {"projects.alertPolicies.create"}
    assert {c.service for c in first} == {"monitoring.googleapis.com"}
    assert {c.parent_or_name for c in first} == {"projects/demo"}
    stems = sorted(p.stem for p in validate.policy_files())
    assert [c.lookup for c in first[1:]] == [f"userLabels.omni_policy={s}" for s in stems]


def test_plan_puts_the_project_and_channels_in_every_policy() -> None:
    channel = "projects/demo/notificationChannels/42"

    calls = plan("demo", notification_channels=[channel])

    text = json.dumps([c.body for c in calls])
    assert "PROJECT" not in text
    assert "omni-pipeline?project=demo" in text
    assert all(c.body["notificationChannels"] == [channel] for c in calls[1:])
    assert plan("other-project")[1].line() != calls[1].line()


def test_plan_refuses_a_project_id_with_a_slash() -> None:
    with pytest.raises(ValueError, match="not a Google Cloud project id"):
        plan("demo/../x")


def test_dry_run_prints_each_call_and_touches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = io.StringIO()

    lines = monitoring.apply("demo", True, out)

    assert out.getvalue().splitlines() == lines == [c.line() for c in plan("demo")]
    assert lines[0].startswith(
        'monitoring.googleapis.com projects.dashboards.create projects/demo "Omni pipeline" '
        "(patch if projects/demo/dashboards/omni-pipeline exists) body-sha256:"
    )
    assert "monitoring.live" not in sys.modules


def test_dry_run_in_a_fresh_process_needs_no_credentials_nor_clients() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = "/nonexistent/credentials.json"
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise SystemExit('network touched')\n"
        "socket.socket.connect = refuse\n"
        "import monitoring\n"
        "monitoring.apply('demo', True, sys.stdout)\n"
        "loaded = [m for m in sys.modules if m.startswith(('google.cloud.monitoring', "
        "'monitoring.live'))]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + len(validate.policy_files())


def test_contains_ignores_what_the_api_adds_and_sees_what_changed() -> None:
    desired = {"displayName": "x", "thresholdValue": 0, "filter": 'resource.labels.a = "b"'}
    answered = {
        "name": "projects/p/alertPolicies/1",
        "displayName": "x",
        "filter": 'resource.label.a="b"',
        "enabled": True,
    }

    assert plan_contains(answered, desired)
    assert not plan_contains({**answered, "displayName": "y"}, desired)
    assert not plan_contains(answered, {**desired, "thresholdValue": 1})


def plan_contains(current: Any, desired: Any) -> bool:
    from monitoring.plan import contains

    return contains(current, desired)


def test_every_body_parses_as_the_clients_protos() -> None:
    """Runs where google-cloud-monitoring and -dashboards are installed (a real deploy's extra):
    the client's own message types refuse unknown fields and enum values."""
    monitoring_v3 = pytest.importorskip("google.cloud.monitoring_v3")
    dashboards = pytest.importorskip("google.cloud.monitoring_dashboard_v1")
    calls = plan("demo")

    dashboards.Dashboard.from_json(json.dumps(calls[0].body))
    for call in calls[1:]:
        monitoring_v3.AlertPolicy.from_json(json.dumps(call.body))
