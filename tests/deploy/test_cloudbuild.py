"""cloudbuild.yaml against Cloud Build's own schema (vendored by check-jsonschema), and against
the Dockerfiles it builds."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

import jsonschema
import yaml

from emulators.localrun import ROOT


def problems(document: Any) -> list[str]:
    path = importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/cloudbuild.json"
    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    return document


def test_cloudbuild_yaml_follows_cloud_builds_schema() -> None:
    assert problems(config()) == []


def test_a_broken_config_is_caught() -> None:
    broken = config()
    broken["steps"][0]["args"] = "build -f ingress/Dockerfile ."  # must be a list
    broken["timeout"] = 3600  # must be a duration string
    assert problems(broken)


def test_every_image_is_built_from_a_dockerfile_that_exists_and_pushed() -> None:
    document = config()
    built = []
    for step in document["steps"]:
        args = step["args"]
        dockerfile = args[args.index("-f") + 1]
        assert (ROOT / dockerfile).is_file(), dockerfile
        built.append(args[args.index("-t") + 1])
    assert built == document["images"]
