"""The dry-run plan of a deploy of project ``demo``, and the manifests it applies, rendered
(tests/support/manifests.py renders them)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deploy import plan
from deploy.plan import Action
from tests.deploy.checks import Facts, facts_from_plan
from tests.support.manifests import PROJECT, REGION, TAG, kustomize, materialize


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
