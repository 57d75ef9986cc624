"""docker-compose.yml against the Compose specification's own JSON schema (vendored by
check-jsonschema; no Docker engine here), and against what `make run` does."""

from __future__ import annotations

import copy
import importlib.resources
import json
from typing import Any

import jsonschema
import pytest
import yaml

from emulators.localrun import ROOT, StackConfig


def compose_schema() -> dict[str, Any]:
    path = (
        importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    )
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def problems(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert problems(compose) == []


def test_a_broken_file_is_caught() -> None:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken = copy.deepcopy(document)
    broken["services"]["ingress"]["depends_on"]["provision"]["condition"] = "service_done"
    assert problems(broken)
    broken = copy.deepcopy(document)
    broken["services"]["worker"]["healtcheck"] = broken["services"]["worker"].pop("healthcheck")
    assert problems(broken)


def test_every_part_waits_for_what_it_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"pubsub", "firestore", "provision", "ingress", "worker", "webhooks"}
    for name in ("pubsub", "firestore", "ingress", "worker"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    # The webhook sender listens on nothing and needs Firestore only (never Pub/Sub).
    assert services["webhooks"]["depends_on"] == {"firestore": {"condition": "service_healthy"}}
    assert services["provision"]["depends_on"] == {"pubsub": {"condition": "service_healthy"}}
    for name in ("ingress", "worker"):
        depends = services[name]["depends_on"]
        assert depends["provision"] == {"condition": "service_completed_successfully"}
        assert depends["firestore"] == {"condition": "service_healthy"}
    for name in ("provision", "ingress", "worker", "webhooks"):
        dockerfile = services[name]["build"]["dockerfile"]
        assert (ROOT / dockerfile).is_file(), f"{name} builds from a missing {dockerfile}"


def test_the_same_variables_and_defaults_as_make_run(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    defaults = StackConfig()
    for variable, value in [
        ("PORT", defaults.port),
        ("PUBSUB_PORT", defaults.pubsub_port),
        ("FIRESTORE_PORT", defaults.firestore_port),
        ("WORKER_HTTP_PORT", defaults.worker_http_port),
        ("GOOGLE_CLOUD_PROJECT", defaults.project),
        ("API_KEYS", defaults.api_keys),
        ("WEBHOOK_SECRETS", defaults.webhook_secrets),
    ]:
        assert f"${{{variable}:-{value}}}" in text, variable
    ingress = compose["services"]["ingress"]["environment"]
    assert ingress["HOST"] == "0.0.0.0"  # containers bind every interface (the contract)


def test_the_webhook_sender_runs_from_the_ingress_image_with_make_runs_development_settings(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    sender, ingress = services["webhooks"], services["ingress"]
    assert sender["build"] == ingress["build"]
    assert sender["command"] == ["python", "-m", "webhooks"]
    assert "ports" not in sender
    # The ingress refuses a webhook for a tenant the sender could not sign for: both read the same
    # secrets, and both allow private receivers (development only, as under make run).
    for name in ("webhooks", "ingress"):
        env = services[name]["environment"]
        assert env["WEBHOOK_SECRETS"] == "${WEBHOOK_SECRETS:-" + StackConfig().webhook_secrets + "}"
        assert env["WEBHOOK_ALLOW_PRIVATE"] == "1"
        assert env["FIRESTORE_EMULATOR_HOST"] == "firestore:8086"
