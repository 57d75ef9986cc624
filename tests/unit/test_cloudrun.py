"""cloudrun.yaml's structure: a Knative Service Cloud Run accepts, sized and wired as the ingress
needs (parsed, not deployed: nothing here can reach Cloud Run)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from emulators.localrun import ROOT
from ingress.events import MAX_WAIT_S

REQUIRED = {
    ("apiVersion",): "serving.knative.dev/v1",
    ("kind",): "Service",
}


def service() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "cloudrun.yaml").read_text())
    return document


def structure_problems(document: dict[str, Any]) -> list[str]:
    """What Cloud Run would refuse, or what would break the ingress, in a Service document."""
    found = []
    for path, value in REQUIRED.items():
        if document.get(path[0]) != value:
            found.append(f"{path[0]} must be {value}")
    template = document.get("spec", {}).get("template", {})
    spec = template.get("spec", {})
    containers = spec.get("containers") or []
    if len(containers) != 1:
        found.append("exactly one container")
        return found
    (container,) = containers
    if not isinstance(spec.get("containerConcurrency"), int):
        found.append("containerConcurrency must be an integer")
    if not isinstance(spec.get("timeoutSeconds"), int) or not 0 < spec["timeoutSeconds"] <= 3600:
        found.append("timeoutSeconds must be an integer from 1 to 3600")
    ports = container.get("ports") or []
    if [p.get("containerPort") for p in ports] != [8080]:
        found.append("one containerPort, 8080 (the ingress's PORT)")
    mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for name in mounts:
        if name not in volumes:
            found.append(f"volumeMount {name} has no volume")
    for name, value in ((e["name"], e.get("value")) for e in container.get("env") or []):
        if value is not None and not isinstance(value, str):
            found.append(f"env {name} must be a string")
    return found


def test_cloudrun_yaml_is_a_service_cloud_run_accepts() -> None:
    assert structure_problems(service()) == []


def test_a_broken_service_is_caught() -> None:
    broken = service()
    broken["spec"]["template"]["spec"]["timeoutSeconds"] = 7200
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": 1})
    assert len(structure_problems(broken)) == 2


def test_sized_for_event_streams_with_keys_from_secret_manager() -> None:
    template = service()["spec"]["template"]
    annotations, spec = template["metadata"]["annotations"], template["spec"]
    assert spec["timeoutSeconds"] == 3600 >= MAX_WAIT_S  # an hour-long stream, any long poll
    assert spec["containerConcurrency"] >= 1000  # bench/sse_fanout.py: 1,000 streams
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # the listen thread
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert spec["serviceAccountName"].startswith("omni-ingress@")
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert secret_file(spec, env["API_KEYS_FILE"]) == ("omni-api-keys", "latest")
    assert "API_KEYS" not in env
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def secret_file(spec: dict[str, Any], path: str) -> tuple[str, str]:
    """(secret, version) of the Secret Manager secret mounted as the file ``path``."""
    (container,) = spec["containers"]
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
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert secret_file(spec, env["WEBHOOK_SECRETS_FILE"]) == ("omni-webhook-secrets", "latest")
    assert "WEBHOOK_SECRETS" not in env, "never plain env"
    assert "WEBHOOK_ALLOW_PRIVATE" not in env, "development only"
    # Cloud Run mounts each secret volume at a folder of its own; none may hold another.
    paths = [m["mountPath"].rstrip("/") + "/" for m in container["volumeMounts"]]
    assert not [(a, b) for a in paths for b in paths if a != b and b.startswith(a)]


@pytest.mark.parametrize("name", ["GUNICORN_THREADS", "GUNICORN_WORKER_CLASS"])
def test_the_stream_capacity_settings_are_left_at_their_measured_defaults(name: str) -> None:
    (container,) = service()["spec"]["template"]["spec"]["containers"]
    assert name not in {e["name"] for e in container["env"]}
