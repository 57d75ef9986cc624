"""Rendering the deployment's manifests offline: ``kubectl kustomize`` of a kustomization (the
test is skipped where kubectl is missing), and the files of a plan's action written out; the
project, region and tag the deploy tests plan for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def materialize(files: dict[str, str], old_root: str, new_root: Path) -> None:
    for path, text in files.items():
        target = new_root / Path(path).relative_to(old_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
