"""cloudrun.yaml's structure: a Knative Service Cloud Run accepts, sized and wired as the ingress
needs, with Managed Service for Prometheus's sidecar scraping the ingress's private metrics port
(parsed, not deployed: nothing here can reach Cloud Run)."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pytest
import yaml

from emulators.localrun import ROOT
from ingress import create_app
from ingress.http import MAX_WAIT_S
from ingress.settings import Settings

REQUIRED = {
    ("apiVersion",): "serving.knative.dev/v1",
    ("kind",): "Service",
}


SIDECAR_IMAGE = (
    "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar"
)
SIDECAR_CONFIG = "/etc/rungmp/config.yaml"
"""Where the sidecar reads its RunMonitoring configuration (GoogleCloudPlatform/run-gmp-sidecar)."""


def service() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "cloudrun.yaml").read_text())
    return document


def containers(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def structure_problems(document: dict[str, Any]) -> list[str]:
    """What Cloud Run would refuse, or what would break the ingress, in a Service document."""
    found = []
    for path, value in REQUIRED.items():
        if document.get(path[0]) != value:
            found.append(f"{path[0]} must be {value}")
    template = document.get("spec", {}).get("template", {})
    spec = template.get("spec", {})
    listed = spec.get("containers") or []
    names = [c.get("name") for c in listed]
    if not listed or None in names or len(set(names)) != len(names):
        found.append("containers, each with a name of its own")
        return found
    # Cloud Run sends requests to the one container with a port (the ingress container).
    serving = [c for c in listed if c.get("ports")]
    if [c["name"] for c in serving] != ["ingress"] or listed[0] is not serving[0]:
        found.append("one container with ports, the first: the ingress")
    elif [p.get("containerPort") for p in serving[0]["ports"]] != [8080]:
        found.append("one containerPort, 8080 (the ingress's PORT)")
    if not isinstance(spec.get("containerConcurrency"), int):
        found.append("containerConcurrency must be an integer")
    if not isinstance(spec.get("timeoutSeconds"), int) or not 0 < spec["timeoutSeconds"] <= 3600:
        found.append("timeoutSeconds must be an integer from 1 to 3600")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    dependencies = json.loads(
        template.get("metadata", {})
        .get("annotations", {})
        .get("run.googleapis.com/container-dependencies", "{}")
    )
    for dependent, needs in dependencies.items():
        if dependent not in names or not set(needs) <= set(names) - {dependent}:
            found.append(f"container-dependencies of {dependent} name unknown containers")
    for container in listed:
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                found.append(f"volumeMount {mount['name']} has no volume")
        for item in container.get("env") or []:
            if item.get("value") is not None and not isinstance(item["value"], str):
                found.append(f"env {item['name']} must be a string")
    return found


def test_cloudrun_yaml_is_a_service_cloud_run_accepts() -> None:
    assert structure_problems(service()) == []


def test_a_broken_service_is_caught() -> None:
    broken = service()
    broken["spec"]["template"]["spec"]["timeoutSeconds"] = 7200
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": 1})
    broken["spec"]["template"]["spec"]["containers"][1]["ports"] = [{"containerPort": 9091}]
    assert len(structure_problems(broken)) == 3


def test_sized_for_event_streams_with_keys_from_secret_manager() -> None:
    template = service()["spec"]["template"]
    annotations, spec = template["metadata"]["annotations"], template["spec"]
    assert spec["timeoutSeconds"] == 3600 >= MAX_WAIT_S  # an hour-long stream, any long poll
    assert spec["containerConcurrency"] >= 1000  # bench/sse_fanout.py: 1,000 streams
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # the listen thread
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert spec["serviceAccountName"].startswith("omni-ingress@")
    env = env_of(containers(service())["ingress"])
    assert env["API_KEYS_FILE"] is not None
    assert secret_file(spec, env["API_KEYS_FILE"]) == ("omni-api-keys", "latest")
    assert "API_KEYS" not in env


def secret_file(
    spec: dict[str, Any], path: str, container_name: str = "ingress"
) -> tuple[str, str]:
    """(secret, version) of the Secret Manager secret mounted as the file ``path``."""
    (container,) = [c for c in spec["containers"] if c["name"] == container_name]
    folder, _, name = path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == name]
    return volume["secret"]["secretName"], item["key"]


def test_webhook_signing_secrets_come_from_secret_manager_and_private_receivers_stay_refused() -> (
    None
):
    spec = service()["spec"]["template"]["spec"]
    container = containers(service())["ingress"]
    env = env_of(container)
    assert env["WEBHOOK_SECRETS_FILE"] is not None
    assert secret_file(spec, env["WEBHOOK_SECRETS_FILE"]) == ("omni-webhook-secrets", "latest")
    assert "WEBHOOK_SECRETS" not in env, "never plain env"
    assert "WEBHOOK_ALLOW_PRIVATE" not in env, "development only"
    # Cloud Run mounts each secret volume at a folder of its own; none may hold another.
    paths = [m["mountPath"].rstrip("/") + "/" for m in container["volumeMounts"]]
    assert not [(a, b) for a in paths for b in paths if a != b and b.startswith(a)]


@pytest.mark.parametrize("name", ["GUNICORN_THREADS", "GUNICORN_WORKER_CLASS"])
def test_the_stream_capacity_settings_are_left_at_their_measured_defaults(name: str) -> None:
    assert name not in env_of(containers(service())["ingress"])


def served_paths() -> set[str]:
    """The GET routes of the ingress as cloudrun.yaml configures it (METRICS_PORT included)."""
    env = env_of(containers(service())["ingress"])
    metrics_port = env["METRICS_PORT"]
    assert metrics_port is not None
    settings = Settings(
        project="omni-cloudrun-test", api_keys="t:k", metrics_port=int(metrics_port)
    )
    app = create_app(settings, configure_logs=False)
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}


def test_probes_start_on_readiness_and_restart_only_on_liveness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # clients built, never called
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    ingress = containers(service())["ingress"]
    startup, liveness = ingress["startupProbe"]["httpGet"], ingress["livenessProbe"]["httpGet"]
    port = ingress["ports"][0]["containerPort"]
    paths = served_paths()

    # Started once Pub/Sub and Firestore answer; restarted only when the process stops answering
    # (a restart cannot bring a backend back, and would cut every open stream).
    assert (startup["path"], startup["port"]) == ("/health", port)
    assert (liveness["path"], liveness["port"]) == ("/health/live", port)
    assert {startup["path"], liveness["path"]} <= paths
    # Cloud Run reserves some paths ending in "z" and advises against them all.
    assert not liveness["path"].endswith("z")
    # A stuck process is restarted no sooner than gunicorn's own worker timeout would act.
    gunicorn = runpy.run_path(str(ROOT / "ingress" / "gunicorn.conf.py"))
    probe = ingress["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= gunicorn["timeout"]
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    # The public port serves no metrics: the collector scrapes METRICS_PORT.
    assert "/metrics" not in paths


def test_the_prometheus_sidecar_scrapes_the_private_metrics_port() -> None:
    document = service()
    template = document["spec"]["template"]
    by_name = containers(document)
    collector, ingress = by_name["collector"], by_name["ingress"]
    assert set(by_name) == {"ingress", "collector"}
    assert collector["image"].rpartition(":")[0] == SIDECAR_IMAGE
    assert collector["image"].rpartition(":")[2][:1].isdigit(), "a pinned version"
    assert "ports" not in collector  # Cloud Run sends requests to the ingress container only
    # The ingress starts (and passes its startup probe) before the collector.
    dependencies = template["metadata"]["annotations"]["run.googleapis.com/container-dependencies"]
    assert json.loads(dependencies) == {"collector": ["ingress"]}

    # The collector's RunMonitoring config is cloudrun-monitoring.yaml, mounted from a secret.
    assert secret_file(template["spec"], SIDECAR_CONFIG, "collector") == (
        "omni-run-gmp-config",
        "latest",
    )
    monitoring = yaml.safe_load((ROOT / "cloudrun-monitoring.yaml").read_text())
    assert monitoring["apiVersion"] == "monitoring.googleapis.com/v1beta"
    assert monitoring["kind"] == "RunMonitoring"
    (endpoint,) = monitoring["spec"]["endpoints"]
    env = env_of(ingress)
    assert str(endpoint["port"]) == env["METRICS_PORT"] != str(ingress["ports"][0]["containerPort"])
    assert endpoint["path"] == "/metrics"
    assert env["PROMETHEUS_MULTIPROC_DIR"]  # the master merges every worker's files


def test_the_default_tenant_limits_cap_streams() -> None:
    limits = json.loads(env_of(containers(service())["ingress"])["TENANT_LIMITS"] or "{}")
    assert limits == {"*": {"rate": 50, "burst": 100, "in_flight": 2000000, "streams": 200}}
