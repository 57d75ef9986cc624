"""The dead-letter function's staged source is complete on its own, and the deploy command is
the one that creates or updates it (nothing is deployed from here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emulators import provision
from emulators.deadletter_deploy import ROOT, deploy, requirements, source_hash, stage


def test_the_staged_source_imports_without_the_rest_of_the_project(tmp_path: Path) -> None:
    stage(tmp_path)
    assert (tmp_path / "main.py").read_text() == (ROOT / "deadletter" / "main.py").read_text()
    pins = (tmp_path / "requirements.txt").read_text().splitlines()
    assert pins == requirements()
    assert any(p.startswith("functions-framework==") for p in pins)
    assert all("==" in p for p in pins), "every requirement pinned"
    # Importing it uses the staged schemas/ and common/ and no other package of ours.
    probe = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import main, schemas, common;"
        "assert schemas.__file__.startswith(sys.path[0]), schemas.__file__;"
        "assert common.__file__.startswith(sys.path[0]), common.__file__;"
        "assert callable(main.on_dead_letter);"
        "ours = ('ingress', 'worker', 'emulators', 'reconciler', 'omniclient', 'deadletter');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ours))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_deploy_command_creates_or_updates_one_function() -> None:
    argv = deploy(
        "proj",
        "europe-west1",
        "jobs-dead",
        "dl@proj.iam.gserviceaccount.com",
        True,
        trigger_service_account="dlt@proj.iam.gserviceaccount.com",
    )
    assert argv[:4] == ["gcloud", "functions", "deploy", "omni-deadletter"]
    assert {
        "--gen2",
        "--project=proj",
        "--region=europe-west1",
        "--entry-point=on_dead_letter",
        "--trigger-topic=jobs-dead",
        "--retry",
        "--service-account=dl@proj.iam.gserviceaccount.com",
        # The trigger's identity is explicit (roles/run.invoker on the function, nothing else),
        # never the Compute Engine default service account.
        "--trigger-service-account=dlt@proj.iam.gserviceaccount.com",
    } <= set(argv)
    # The staged source's hash, so a deploy that would change nothing is skipped.
    (label,) = [a for a in argv if a.startswith("--update-labels=omni-source=")]
    assert len(label.rpartition("=")[2]) == 16


def test_the_source_hash_changes_with_the_source(tmp_path: Path) -> None:
    first = source_hash(stage(tmp_path))
    assert source_hash(tmp_path) == first
    (tmp_path / "main.py").write_text((tmp_path / "main.py").read_text() + "\n# changed\n")
    assert source_hash(tmp_path) != first


def test_deploying_the_function_needs_a_region_and_a_real_project() -> None:
    with pytest.raises(SystemExit):
        provision.main(["--project", "p", "--deploy-deadletter"])
    with pytest.raises(SystemExit):
        provision.main(
            ["--project", "p", "--emulator", "x:1", "--deploy-deadletter", "--region", "r"]
        )
