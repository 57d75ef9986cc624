"""``make deploy ... DRY_RUN=1`` and ``python -m deploy --dry-run`` print the whole plan with no
credentials and no network, and never start gcloud or kubectl; the checks pass on the plan that
``python -m deploy --json`` prints."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.plan import STEPS, Action
from deploy.render import ROOT
from tests.deploy import checks
from tests.support.manifests import kustomize, materialize

RUN_TIMEOUT_S = 120
STAMP = ".venv/.installed-omni"


@pytest.fixture
def offline_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """No credentials (empty HOME and gcloud config), no network (proxies to a closed port), and
    a gcloud and kubectl on PATH that record any call and fail."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("gcloud", "kubectl"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "TMPDIR": str(tmp_path),
    }
    return env, calls


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def test_make_deploy_dry_run_prints_every_step_and_calls_nothing(
    offline_env: tuple[dict[str, str], Path],
) -> None:
    env, calls = offline_env
    # -o: the virtualenv is taken as installed (reinstalling would need the package index).
    done = run(
        ["make", "-s", "-o", STAMP, "deploy", "PROJECT=demo", "REGION=europe-west1", "DRY_RUN=1"],
        env,
    )
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("# step ")]
    assert headers == [f"# step {step}" for step in STEPS]
    assert "gcloud: gcloud builds submit" in done.stdout
    assert "kubectl: kubectl apply -k" in done.stdout
    assert "api: pubsub.converge_subscription" in done.stdout
    assert "api: firestore.update_field" in done.stdout
    assert not calls.exists(), calls.read_text()


def test_python_m_deploy_dry_run_with_a_tag_and_one_step(
    offline_env: tuple[dict[str, str], Path],
) -> None:
    env, calls = offline_env
    argv = [sys.executable, "-m", "deploy", "--project", "demo", "--region", "europe-west1"]
    done = run([*argv, "--tag", "v7", "--dry-run", "--only", "images"], env)
    assert done.returncode == 0, done.stderr
    assert "# step images" in done.stdout and "# step apis" not in done.stdout
    assert "_TAG=v7" in done.stdout
    assert not calls.exists()


def test_the_checks_pass_on_the_plan_the_dry_run_prints(
    offline_env: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, calls = offline_env
    argv = [sys.executable, "-m", "deploy", "--project", "demo", "--region", "europe-west1"]
    done = run([*argv, "--json"], env)
    assert done.returncode == 0, done.stderr
    actions = [Action.from_json(item) for item in json.loads(done.stdout)]
    facts = checks.facts_from_plan(actions, "demo")
    (apply,) = [a for a in actions if a.argv[:3] == ("kubectl", "apply", "-k")]
    materialize(apply.files, apply.argv[3], tmp_path / "k8s")
    manifests = kustomize(tmp_path / "k8s")
    (replace,) = [a for a in actions if a.argv[1:4] == ("run", "services", "replace")]
    service: dict[str, Any] = yaml.safe_load(replace.files[replace.argv[4]])

    problems = [
        *checks.check_images(facts, manifests, service),
        *checks.check_accounts(facts, manifests, service),
        *checks.check_secrets_and_buckets(facts, manifests, service),
        *checks.check_autoscaled_subscriptions(facts, manifests),
        *checks.check_environment(facts, manifests, service),
        *checks.check_scrape_namespace(manifests),
        *checks.check_public_access(facts, service),
        *checks.check_build_identity(facts),
    ]
    assert problems == []
    # The default tag is the commit's short sha, the same on every image.
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    ).stdout.strip()
    assert {image.rpartition(":")[2] for image in facts.pushed} == {sha}
    assert not calls.exists()
    assert os.environ.get("HOME") != env["HOME"]
