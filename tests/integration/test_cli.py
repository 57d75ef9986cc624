"""The ``omni`` CLI end to end: a subprocess against the running ingress and worker, as a user
runs it from a shell (progress output included)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import python_env
from tests.support.stacks import KEYS, Service

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
    assert all(line["status"] == "succeeded" and "job_id" not in line for line in lines)

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


def embed_lines(count: int, start: int = 0) -> str:
    return "".join(json.dumps({"texts": [f"part item {i}"]}) + "\n" for i in range(start, count))


def test_a_file_over_the_part_limit_goes_in_parts_and_its_results_resume(
    ingress: Service, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(embed_lines(200))

    done = omni(ingress, "batch", "submit", str(items), "--task", "embed", "--part-items", "80")

    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    try:
        assert batch["counts"]["total"] == 200 and batch["open"] is False
        assert done.stderr.splitlines() == [
            "upload part 1/3: 80/200 items accepted",
            "upload part 2/3: 160/200 items accepted",
            "upload part 3/3: 200/200 items accepted",
            f"batch {batch['id']} accepted: 200 items of embed",
        ]
        tail = omni(ingress, "batch", "results", batch["id"], "--after", "149")
        assert tail.returncode == 0, tail.stderr
        assert [json.loads(line)["index"] for line in tail.stdout.splitlines()] == list(
            range(150, 200)
        )

        # A download cut mid-line, run again into the same file: every item once, in order.
        out = tmp_path / "results.jsonl"
        whole = omni(ingress, "batch", "results", batch["id"]).stdout.splitlines()
        out.write_text("\n".join(whole[:120]) + "\n" + whole[120][:15])
        resumed = omni(ingress, "batch", "results", batch["id"], "-o", str(out))
        assert resumed.returncode == 0, resumed.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["index"] for line in lines] == list(range(200))

        item = omni(ingress, "batch", "item", batch["id"], "7")
        assert json.loads(item.stdout)["index"] == 7
    finally:
        omni(ingress, "batch", "cancel", batch["id"])  # no worker needs to run it


def test_a_bad_line_in_a_later_part_names_the_file_s_line_and_cancels_the_batch(
    ingress: Service, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(embed_lines(100) + '{"texts": "not a list"}\n' + embed_lines(130, 101))

    bad = omni(ingress, "batch", "submit", str(items), "--task", "embed", "--part-items", "50")

    assert bad.returncode == 1 and bad.stdout == ""
    assert "422" in bad.stderr and "part 3 of 3 (lines 101-130)" in bad.stderr
    assert "line 101 → texts" in bad.stderr
    batch_id = bad.stderr.split(" was cancelled")[0].rsplit("batch ", 1)[1]
    deadline = time.monotonic() + 60
    while True:  # the cancel's sweep ends the queued items within moments
        status = json.loads(omni(ingress, "batch", "status", batch_id).stdout)
        if status["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["counts"]["total"] == 100  # the two good parts; nothing of the bad one
    assert status["status"] == "cancelled"
