"""The dry-run plan of a deploy of project ``demo``, and the manifests it applies, rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import plan
from deploy.plan import Action
from tests.deploy.checks import Facts, facts_from_plan

PROJECT, REGION, TAG = "demo", "europe-west1", "abc1234"
KUBECTL = shutil.which("kubectl")
RENDER_TIMEOUT_S = 60


def kustomize(directory: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomization")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def materialize(files: dict[str, str], old_root: str, new_root: Path) -> None:
    for path, text in files.items():
        target = new_root / Path(path).relative_to(old_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@pytest.fixture(scope="session")
def actions() -> list[Action]:
    return plan.build(PROJECT, REGION, TAG)


@pytest.fixture(scope="session")
def facts(actions: list[Action]) -> Facts:
    return facts_from_plan(actions, PROJECT)


@pytest.fixture(scope="session")
def manifests(
    actions: list[Action], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """What ``kubectl apply -k`` applies: the plan's rendered kustomization, built."""
    (apply,) = [a for a in actions if a.argv[:3] == ("kubectl", "apply", "-k")]
    root = tmp_path_factory.mktemp("k8s")
    materialize(apply.files, apply.argv[3], root)
    return kustomize(root)


@pytest.fixture(scope="session")
def service(actions: list[Action]) -> dict[str, Any]:
    """What ``gcloud run services replace`` applies."""
    (replace,) = [a for a in actions if a.argv[1:4] == ("run", "services", "replace")]
    document: dict[str, Any] = yaml.safe_load(replace.files[replace.argv[4]])
    return document
