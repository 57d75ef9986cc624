"""A batch's deadline against the emulators, gunicorn and a real worker: items not started by
then end ``failed`` with code ``deadline_exceeded`` and never run; a batch well within its
deadline runs as any other."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from tests.integration.test_batches import A, finished, results, submit_ndjson
from tests.support.stacks import Service

pytestmark = pytest.mark.integration
TIMEOUT = 30


def test_a_batch_past_its_deadline_ends_its_items_failed_without_running_them(
    ingress: Service, worker: Service
) -> None:
    items = [{"texts": [f"too late {n}"]} for n in range(300)]  # two chunks
    answer = requests.post(
        f"{ingress.url}/v1/batches",
        json={"task": "embed", "items": items},
        headers={**A, "Cancel-After": "0"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 202, answer.text
    assert "deadline" in answer.json()

    batch = finished(ingress, answer.json()["id"], 120)

    assert batch["status"] == "failed"
    assert batch["counts"]["failed"] == batch["counts"]["total"] == 300
    lines = results(ingress, batch["id"])
    assert {line["error"]["code"] for line in lines} == {"deadline_exceeded"}
    assert {line["attempts"] for line in lines} == {0}  # no chunk was ever claimed
    ran = [line for line in worker.log_lines() if line.get("batch_id") == batch["id"]]
    assert not [line for line in ran if "inference_ms" in line], ran


def test_a_batch_within_its_deadline_runs_and_shows_it(ingress: Service, worker: Service) -> None:
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    lines = [json.dumps({"texts": [f"in time {n}"]}) for n in range(5)]
    answer = requests.post(
        f"{ingress.url}/v1/batches",
        params={"task": "embed", "deadline": deadline},
        data="".join(line + "\n" for line in lines).encode(),
        headers={**A, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 202, answer.text
    batch = finished(ingress, answer.json()["id"], 120)
    assert batch["status"] == "succeeded" and batch["deadline"].startswith(deadline[:19])


def test_a_bad_cancel_after_or_deadline_is_400_and_keeps_nothing(ingress: Service) -> None:
    since = datetime.now(UTC)
    answer = submit_ndjson(ingress, "embed", ['{"texts": ["x"]}'], {**A, "Cancel-After": "soon"})
    assert answer.status_code == 400, answer.text
    bad_time = requests.post(
        f"{ingress.url}/v1/batches",
        params={"task": "embed", "deadline": "tomorrow"},
        data=b'{"texts": ["x"]}\n',
        headers={**A, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT,
    )
    assert bad_time.status_code == 400, bad_time.text
    written = (
        firestore.Client()
        .collection("batches")
        .where(filter=FieldFilter("created_at", ">=", since))
        .stream(timeout=TIMEOUT)
    )
    assert [s.id for s in written if (s.to_dict() or {}).get("tenant") == "tenant-a"] == []
