"""``python -m reconciler redrive`` against the emulators and a real worker: failed jobs that the
dead-letter path gave up on are re-queued as new jobs (a dry run first changes nothing), the new
jobs run, and a second run finds nothing left to redrive."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from google.cloud import firestore

from schemas import get_task
from schemas.jobs import new_job_document, new_job_id
from tests.support import python_env, wait_for
from tests.support.stacks import KEYS, Emulators, Service, fresh_tenants

pytestmark = pytest.mark.integration
TIMEOUT = 30


def failed_job(tenant: str, code: str, task: str = "embed", **extra: Any) -> str:
    """A job as the dead-letter function leaves one it gave up on."""
    now = datetime.now(UTC)
    doc = new_job_document(
        tenant=tenant,
        task=task,
        input=get_task("embed").input_to_store({"texts": [f"redrive {code}"]}),
        metadata={"from": "redrive"},
        now=now,
    )
    doc.update(
        status="failed",
        attempts=5,
        finished_at=now,
        error={"code": code, "message": "gave up"},
        in_flight_counted=False,
        **extra,
    )
    job_id = new_job_id()
    firestore.Client().collection("jobs").document(job_id).set(doc, timeout=TIMEOUT)
    return job_id


def redrive(emulators: Emulators, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "redrive", *args],
        env=python_env(**emulators.env()),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_dry_run_then_redrive_then_nothing_left(
    emulators: Emulators, worker: Service, ingress: Service
) -> None:
    tenant = fresh_tenants("redriven")["redriven"]
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    wanted = [failed_job(tenant, "attempts_exhausted") for _ in range(3)]
    other_code = failed_job(tenant, "model_error")
    other_task = failed_job(tenant, "attempts_exhausted", task="similar")
    args = ("--task", "embed", "--since", since, "--tenant", tenant)

    dry = redrive(emulators, *args, "--dry-run")

    assert sorted(line["job_id"] for line in dry[:-1]) == sorted(wanted)
    assert dry[-1] == {"would_redrive": 3}
    jobs = firestore.Client().collection("jobs")
    assert not any(
        (jobs.document(i).get(timeout=TIMEOUT).to_dict() or {}).get("redriven_to") for i in wanted
    )

    done = redrive(emulators, *args)

    assert done[-1] == {"redriven": 3}
    new_ids = {line["job_id"]: line["new_job_id"] for line in done[:-1]}
    assert sorted(new_ids) == sorted(wanted) and all(line["published"] for line in done[:-1])
    for old_id, new_id in new_ids.items():
        old = jobs.document(old_id).get(timeout=TIMEOUT).to_dict() or {}
        assert old["status"] == "failed" and old["redriven_to"] == new_id

        def finished(new_id: str = new_id) -> dict[str, Any] | None:
            doc = jobs.document(new_id).get(timeout=TIMEOUT).to_dict() or {}
            return doc if doc.get("status") == "succeeded" else None

        new = wait_for(finished, 60, f"redriven job {new_id}")
        assert new["retry_of"] == old_id and new["metadata"] == {"from": "redrive"}
        assert new["tenant"] == tenant and new["attempts"] == 1
    for untouched in (other_code, other_task):
        assert not (jobs.document(untouched).get(timeout=TIMEOUT).to_dict() or {}).get(
            "redriven_to"
        )

    assert redrive(emulators, *args) == [{"redriven": 0}]
    with_code = redrive(emulators, *args, "--error", "model_error")
    assert [line["job_id"] for line in with_code[:-1]] == [other_code]


def test_a_redriven_job_is_a_job_its_tenant_reads(
    emulators: Emulators, worker: Service, ingress: Service
) -> None:
    failed = failed_job("tenant-a", "attempts_exhausted")
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    (line, _summary) = redrive(
        emulators, "--task", "embed", "--since", since, "--tenant", "tenant-a"
    )
    url = f"{ingress.url}/v1/jobs/{line['new_job_id']}"
    job = requests.get(
        url, params={"wait": 30}, headers={"X-API-Key": KEYS["tenant-a"]}, timeout=60
    ).json()
    assert job["status"] == "succeeded" and job["retry_of"] == failed
