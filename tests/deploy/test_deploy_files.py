"""The deployment files agree with the code they deploy (parsed, not applied: no cluster here)."""

from __future__ import annotations

from typing import Any

import yaml

from emulators.localrun import ROOT
from worker.settings import GRACE_S


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def test_cloudrun_service_binds_all_interfaces_and_probes_health() -> None:
    service = load("cloudrun.yaml")
    assert service["kind"] == "Service"
    container = service["spec"]["template"]["spec"]["containers"][0]  # then the sidecar
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["HOST"] == "0.0.0.0"
    assert "API_KEYS" not in env, "keys come from a mounted secret file, never plain env"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_worker_deployment_probes_match_the_worker() -> None:
    # The pool template every overlay builds on; tests/deploy/test_k8s.py checks the rendered pools.
    deployment = load("k8s/base/deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    (port,) = container["ports"]
    assert int(env["WORKER_HTTP_PORT"]) == port["containerPort"]
    assert env["WORKER_HTTP_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > GRACE_S
    assert load("k8s/base/kustomization.yaml")["resources"] == [
        "deployment.yaml",
        "hpa.yaml",
        "pdb.yaml",
    ]


def test_reconciler_cronjob_sweeps_once_per_run_without_overlap() -> None:
    cronjob = load("k8s/shared/reconciler.yaml")
    assert cronjob["kind"] == "CronJob"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "reconciler", "--once"]
    assert "reconciler.yaml" in load("k8s/shared/kustomization.yaml")["resources"]


def test_compose_runs_both_emulators_on_make_runs_port_variables() -> None:
    services = load("docker-compose.yml")["services"]
    assert "${PUBSUB_PORT:-8085}" in services["pubsub"]["ports"][0]
    assert "${FIRESTORE_PORT:-8086}" in services["firestore"]["ports"][0]
    # Every published port binds loopback only (a one-shot service may publish none).
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in published)
