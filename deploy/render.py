"""The deployment files with their placeholders filled in, as the deploy applies them.

The files in the repository carry three placeholders, whole words only: ``PROJECT``, ``REGION`` and
``TAG`` (``GOOGLE_CLOUD_PROJECT`` contains ``PROJECT`` but not as a word). ``TAG`` is the one tag
Cloud Build pushed every image with: Cloud Run's image names it, and the kustomization the deploy
writes beside a copy of k8s/ sets it as ``newTag`` for every image a pod pulls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from deploy.identities import REPOSITORY

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CLOUDRUN = ROOT / "cloudrun.yaml"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
PLACEHOLDER = re.compile(r"\b(PROJECT|REGION|TAG)\b")


def fill(text: str, project: str, region: str, tag: str) -> str:
    """``text`` with every whole-word placeholder replaced."""
    values = {"PROJECT": project, "REGION": region, "TAG": tag}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def registry(project: str, region: str) -> str:
    """Where the images live: ``REGION-docker.pkg.dev/PROJECT/omni``."""
    return f"{region}-docker.pkg.dev/{project}/{REPOSITORY}"


def built_images(project: str, region: str, tag: str) -> list[str]:
    """The images cloudbuild.yaml pushes, with its substitutions as the deploy passes them."""
    config = yaml.safe_load(CLOUDBUILD.read_text())
    values = {
        **config.get("substitutions", {}),
        "_REGION": region,
        "_TAG": tag,
        "PROJECT_ID": project,
    }
    return [
        re.sub(r"\$\{(\w+)\}", lambda match: str(values[match.group(1)]), image)
        for image in config["images"]
    ]


def cloud_run_service(project: str, region: str, tag: str) -> str:
    """cloudrun.yaml as ``gcloud run services replace`` takes it: placeholders filled."""
    document = yaml.safe_load(CLOUDRUN.read_text())
    text: str = yaml.safe_dump(_fill_values(document, project, region, tag), sort_keys=False)
    return text


def _fill_values(value: Any, project: str, region: str, tag: str) -> Any:
    if isinstance(value, str):
        return fill(value, project, region, tag)
    if isinstance(value, list):
        return [_fill_values(item, project, region, tag) for item in value]
    if isinstance(value, dict):
        return {key: _fill_values(item, project, region, tag) for key, item in value.items()}
    return value


class _Quoted(str):
    """A string written quoted: a tag such as the commit ``5594e13`` is a number to kustomize's
    YAML 1.2 parser, though PyYAML (YAML 1.1) would write it bare."""


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    pass


_Dumper.add_representer(
    _Quoted, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, "'")
)


def kustomization(project: str, region: str, tag: str) -> dict[str, str]:
    """A copy of k8s/ (relative path -> text) with the placeholders filled, whose top
    kustomization also pins every image the build pushes to ``tag`` (kustomize ``images:``)."""
    files = {
        path.relative_to(K8S).as_posix(): fill(path.read_text(), project, region, tag)
        for path in sorted(K8S.rglob("*.yaml"))
    }
    top = yaml.safe_load(files["kustomization.yaml"])
    top["images"] = [
        {"name": image.rpartition(":")[0], "newTag": _Quoted(tag)}
        for image in built_images(project, region, tag)
    ]
    files["kustomization.yaml"] = (
        "# Written by python -m deploy: k8s/kustomization.yaml, every image at the built tag.\n"
        + yaml.dump(top, Dumper=_Dumper, sort_keys=False)
    )
    return files
