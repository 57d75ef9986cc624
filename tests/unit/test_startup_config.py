"""A bad environment stops each service at once with one JSON line that says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emulators.localrun import ROOT
from emulators.process import free_port
from tests.support import python_env


def run(argv: list[str], **env: str) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run(
        argv, env=python_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line]
    return done.returncode, lines


GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]


@pytest.mark.parametrize(
    ("api_keys", "says"),
    [("", "set API_KEYS"), ("no-colon-secret", "entry 1 is not tenant:key")],
)
def test_ingress_refuses_to_start_without_valid_keys(api_keys: str, says: str) -> None:
    code, lines = run(GUNICORN, API_KEYS=api_keys, PORT=str(free_port()))
    assert code == 3
    errors = [line for line in lines if line["severity"] == "ERROR"]
    assert errors and says in str(errors[0]["message"])
    assert "secret" not in json.dumps(lines)


def test_worker_refuses_a_bad_device() -> None:
    code, lines = run([sys.executable, "-m", "worker"], WORKER_DEVICE="tpu")
    assert code == 2
    assert lines[-1]["severity"] == "ERROR" and "WORKER_DEVICE" in str(lines[-1]["message"])
