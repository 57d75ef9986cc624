"""The ``omni`` CLI end to end: a subprocess against the running ingress and worker, as a user
runs it from a shell (progress output included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import KEYS, Service
from tests.support import python_env

pytestmark = pytest.mark.integration
OMNI = str(Path(sys.executable).parent / "omni")


def omni(
    ingress: Service, *args: str, key: str | None = KEYS["tenant-a"]
) -> subprocess.CompletedProcess[str]:
    env = python_env(OMNI_URL=ingress.url)
    env.pop("OMNI_API_KEY", None)
    if key is not None:
        env["OMNI_API_KEY"] = key
    return subprocess.run(
        [OMNI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_submit_and_wait_prints_the_finished_job(ingress: Service, worker: Service) -> None:
    done = omni(ingress, "submit", "embed", "--input", '{"texts": ["from the shell"]}', "--wait")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and len(job["result"]["embeddings"][0]) == 384
    assert "succeeded" in done.stderr  # the status changes, followed on the event stream

    watched = omni(ingress, "watch", job["id"])
    assert watched.returncode == 0 and json.loads(watched.stdout)["id"] == job["id"]


def test_a_failed_job_exits_non_zero(ingress: Service, worker: Service) -> None:
    task_input = '{"model": "no-such-model", "instances": [[1.0]]}'
    done = omni(ingress, "submit", "predict", "--input", task_input, "--wait")
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "unknown_model"


def test_batch_submit_wait_shows_progress_then_results_come_back_in_order(
    ingress: Service, worker: Service, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"texts": [f"cli item {i}"]}) + "\n" for i in range(200)))
    done = omni(ingress, "batch", "submit", str(items), "--task", "embed", "--wait")
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    assert batch["status"] == "succeeded" and batch["counts"]["succeeded"] == 200
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress ")]
    assert progress, done.stderr
    assert progress[-1].startswith("progress 200/200 succeeded=200 failed=0 cancelled=0")
    assert "rate=" in progress[-1]

    results = omni(ingress, "batch", "results", batch["id"])
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(200))
    assert all(line["status"] == "succeeded" for line in lines)

    status = omni(ingress, "batch", "status", batch["id"])
    assert json.loads(status.stdout)["counts"]["total"] == 200
    cancel = omni(ingress, "batch", "cancel", batch["id"])
    assert cancel.returncode == 1 and "409" in cancel.stderr  # a finished batch


def test_errors_are_readable_and_exit_non_zero(
    ingress: Service, worker: Service, tmp_path: Path
) -> None:
    items = tmp_path / "bad.jsonl"
    items.write_text('{"texts": ["fine"]}\n{"texts": "not a list"}\n')
    bad = omni(ingress, "batch", "submit", str(items), "--task", "embed")
    assert bad.returncode == 1 and bad.stdout == ""
    assert "422" in bad.stderr and "line 2" in bad.stderr

    unknown = omni(ingress, "batch", "status", "0" * 32)
    assert unknown.returncode == 1 and "404" in unknown.stderr

    wrong_key = omni(ingress, "batch", "status", "0" * 32, key="not-a-key")
    assert wrong_key.returncode == 1 and "401" in wrong_key.stderr
    assert "not-a-key" not in wrong_key.stderr

    no_key = omni(ingress, "get", "0" * 32, key=None)
    assert no_key.returncode == 2 and "OMNI_API_KEY" in no_key.stderr
