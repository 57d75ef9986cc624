"""Batches against the emulators, the real worker and gunicorn: submit (JSON and NDJSON), exact
counts, ordered results, events, cancel, retry, tenancy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from emulators.process import stop_group
from schemas.batches import item_fields
from schemas.jobs import new_job_document
from tests.conftest import Emulators
from tests.integration.conftest import KEYS, Service, start_ingress
from tests.support import python_env, sse_messages, wait_for

pytestmark = pytest.mark.integration
TIMEOUT = 60
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}
NDJSON = {"Content-Type": "application/x-ndjson"}


def submit_ndjson(
    ingress: Service, task: str, lines: list[str], headers: dict[str, str] = A
) -> requests.Response:
    body = "".join(line + "\n" for line in lines).encode()
    return requests.post(
        f"{ingress.url}/v1/batches",
        params={"task": task},
        data=body,
        headers={**headers, **NDJSON},
        timeout=TIMEOUT,
    )


def get_batch(ingress: Service, batch_id: str, headers: dict[str, str] = A) -> dict[str, Any]:
    response = requests.get(
        f"{ingress.url}/v1/batches/{batch_id}", headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def finished(ingress: Service, batch_id: str, timeout_s: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        batch = get_batch(ingress, batch_id)
        return batch if batch["status"] != "running" else None

    return wait_for(done, timeout_s, f"batch {batch_id} to finish", interval_s=0.5)


def results(ingress: Service, batch_id: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"status": status} if status else {}
    response = requests.get(
        f"{ingress.url}/v1/batches/{batch_id}/results", params=params, headers=A, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def jobs_of(batch_id: str) -> list[tuple[str, dict[str, Any]]]:
    query = (
        firestore.Client().collection("jobs").where(filter=FieldFilter("batch_id", "==", batch_id))
    )
    return [(s.id, s.to_dict() or {}) for s in query.stream(timeout=TIMEOUT)]


def count_sum(counts: dict[str, int]) -> int:
    return sum(counts[s] for s in ("queued", "running", "succeeded", "failed", "cancelled"))


@contextmanager
def paused(worker: Service) -> Iterator[None]:
    """The worker stopped (SIGSTOP): nothing is claimed until the block ends."""
    group = os.getpgid(worker.process.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def test_a_thousand_items_finish_with_exact_counts_and_ordered_results(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"item number {i}"]}) for i in range(1000)]
    response = submit_ndjson(ingress, "embed", lines)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/v1/batches/{batch['id']}"
    assert batch["counts"]["total"] == 1000 and batch["status"] == "running"
    assert count_sum(batch["counts"]) == 1000

    done = finished(ingress, batch["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {
        "total": 1000,
        "queued": 0,
        "running": 0,
        "succeeded": 1000,
        "failed": 0,
        "cancelled": 0,
    }
    assert done["finished_at"] >= done["created_at"]

    lines_out = results(ingress, batch["id"])
    assert [line["index"] for line in lines_out] == list(range(1000))
    stored = dict(jobs_of(batch["id"]))
    assert len(stored) == 1000
    for line in lines_out:
        job = stored[line["job_id"]]
        assert job["batch_index"] == line["index"] and job["status"] == "succeeded"
        assert job["input"]["texts"] == [f"item number {line['index']}"]
        assert len(line["result"]["embeddings"][0]) == 384
    # One line against the job resource itself: the same result, the batch named.
    sample = lines_out[417]
    job = requests.get(f"{ingress.url}/v1/jobs/{sample['job_id']}", headers=A, timeout=TIMEOUT)
    assert job.json()["batch_id"] == batch["id"]
    assert job.json()["result"] == sample["result"]
    # The counters agree with the items themselves (Firestore's count() over the jobs).
    query = (
        firestore.Client()
        .collection("jobs")
        .where(filter=FieldFilter("batch_id", "==", batch["id"]))
        .where(filter=FieldFilter("status", "==", "succeeded"))
    )
    assert query.count().get()[0][0].value == 1000


def test_a_bad_line_rejects_the_batch_naming_the_line_and_creates_nothing(
    ingress: Service, clean_firestore: Emulators
) -> None:
    lines = [
        json.dumps({"texts": ["fine"]}),
        "",  # blank lines carry no item but count as lines
        json.dumps({"texts": [42]}),
        json.dumps({"texts": ["fine too"]}),
        "{not json",
    ]
    response = submit_ndjson(ingress, "embed", lines)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["loc"] == ["body", "line", 3, "texts", 0]
    assert problem["errors"][1]["loc"] == ["body", "line", 5]
    assert "line 3" in problem["detail"] and "2 lines are invalid" in problem["detail"]
    db = firestore.Client()
    assert list(db.collection("jobs").stream(timeout=TIMEOUT)) == []
    assert list(db.collection("batches").stream(timeout=TIMEOUT)) == []


def test_the_json_form_names_the_item_and_checks_the_task(
    ingress: Service, clean_firestore: Emulators
) -> None:
    url = f"{ingress.url}/v1/batches"
    bad = {"task": "embed", "items": [{"texts": ["a"]}, {"text": "b"}]}
    response = requests.post(url, json=bad, headers=A, timeout=TIMEOUT)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:3] == ["body", "items", 1]
    assert "item 2" in response.json()["detail"]
    unknown = requests.post(url, json={"task": "nope", "items": [{}]}, headers=A, timeout=TIMEOUT)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == ["body", "task"]
    no_task = requests.post(url, data=b"{}\n", headers={**A, **NDJSON}, timeout=TIMEOUT)
    assert no_task.status_code == 422 and no_task.json()["errors"][0]["loc"] == ["query", "task"]
    text = requests.post(url, data=b"x", headers={**A, "Content-Type": "text/plain"}, timeout=30)
    assert text.status_code == 415
    empty = requests.post(url, data=b"\n\n", params={"task": "embed"}, headers={**A, **NDJSON})
    assert empty.status_code == 422
    assert list(firestore.Client().collection("jobs").stream(timeout=TIMEOUT)) == []

    good = {"task": "embed", "items": [{"texts": ["a"]}], "metadata": {"run": "7"}}
    response = requests.post(url, json=good, headers=A, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == {"run": "7"}


def test_an_idempotent_batch_is_created_once(ingress: Service, clean_firestore: Emulators) -> None:
    headers = {**A, "Idempotency-Key": "batch-key-1"}
    lines = [json.dumps({"texts": [f"t{i}"]}) for i in range(5)]
    first = submit_ndjson(ingress, "embed", lines, headers)
    again = submit_ndjson(ingress, "embed", lines, headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(jobs_of(first.json()["id"])) == 5
    other = submit_ndjson(ingress, "embed", lines[:4], headers)
    assert other.status_code == 409


def test_cancel_stops_every_item_not_yet_started(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"never {i}"]}) for i in range(300)]
    with paused(worker):
        batch = submit_ndjson(ingress, "embed", lines).json()
        response = requests.post(
            f"{ingress.url}/v1/batches/{batch['id']}/cancel", headers=A, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text

        def swept() -> dict[str, Any] | None:
            current = get_batch(ingress, batch["id"])
            return current if current["counts"]["cancelled"] == 300 else None

        done = wait_for(swept, 60, "the cancel to reach every item")
    assert done["status"] == "cancelled" and done["counts"]["queued"] == 0
    # The worker now receives every message; none of them may start.
    stored = jobs_of(batch["id"])
    ids = {job_id for job_id, _ in stored}
    wait_for(lambda: worker_skipped(worker, ids), 60, "the worker to skip every message")
    stored = jobs_of(batch["id"])
    assert len(stored) == 300
    for _, job in stored:
        assert job["status"] == "cancelled" and job["attempts"] == 0
        # The stored log after the (implicit) creation: the cancel alone, never a claim.
        assert "result" not in job and [e["status"] for e in job["events"]] == ["cancelled"]
    assert {line["status"] for line in results(ingress, batch["id"])} == {"cancelled"}
    again = requests.post(f"{ingress.url}/v1/batches/{batch['id']}/cancel", headers=A, timeout=30)
    assert again.status_code == 409


def worker_skipped(worker: Service, job_ids: set[str]) -> bool:
    """Whether the worker's log shows a skipped delivery of every one of ``job_ids``."""
    seen = {line.get("job_id") for line in worker.log_lines() if "skip" in line}
    return job_ids <= seen


def test_a_worker_never_starts_an_item_of_a_cancelled_batch(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    # The cancel recorded, and nothing else: as if the ingress died before its sweep. The
    # worker reads the batch with every claim and ends its items itself.
    lines = [json.dumps({"texts": [f"orphan {i}"]}) for i in range(50)]
    with paused(worker):
        batch = submit_ndjson(ingress, "embed", lines).json()
        firestore.Client().collection("batches").document(batch["id"]).update(
            {"cancel_requested": True}
        )
    done = finished(ingress, batch["id"], 120)
    assert done["status"] == "cancelled" and done["counts"]["cancelled"] == 50
    for _, job in jobs_of(batch["id"]):
        assert job["status"] == "cancelled" and job["finished_by"] == "batch-cancel"
        assert job["attempts"] == 0 and "started_at" not in job


def test_cancel_while_items_run_leaves_exact_counts(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"racing {i}", "two texts"]}) for i in range(400)]
    batch = submit_ndjson(ingress, "embed", lines).json()
    wait_for(
        lambda: get_batch(ingress, batch["id"])["counts"]["succeeded"] > 0, 60, "a first result"
    )
    response = requests.post(
        f"{ingress.url}/v1/batches/{batch['id']}/cancel", headers=A, timeout=30
    )
    assert response.status_code == 200
    done = finished(ingress, batch["id"], 120)
    counts = done["counts"]
    assert done["status"] == "cancelled"
    assert counts["succeeded"] + counts["cancelled"] == 400 and counts["failed"] == 0
    by_status: dict[str, int] = {}
    for _, job in jobs_of(batch["id"]):
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
        if job["status"] == "cancelled":
            assert "result" not in job and "running" not in [e["status"] for e in job["events"]]
    assert by_status == {k: v for k, v in counts.items() if k != "total" and v}


MODEL = """
import sys, keras
keras.utils.set_random_seed(3)
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.save(sys.argv[1] + "/model.keras")
"""


def test_retry_requeues_only_the_failed_items(
    ingress: Service, worker: Service, model_repository: Path, clean_firestore: Emulators
) -> None:
    ready = model_repository / "batch-ready" / "1"
    ready.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", MODEL, str(ready)],
        check=True,
        timeout=120,
        capture_output=True,
        env=python_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    # Even items use a model that exists, odd ones a model published only after they failed.
    lines = [
        json.dumps({"model": "batch-ready" if i % 2 == 0 else "batch-late", "instances": [[i, 1]]})
        for i in range(8)
    ]
    batch = submit_ndjson(ingress, "predict", lines).json()
    first = finished(ingress, batch["id"])
    assert first["status"] == "failed"
    assert (first["counts"]["succeeded"], first["counts"]["failed"]) == (4, 4)
    before = {line["index"]: line for line in results(ingress, batch["id"])}
    failed = results(ingress, batch["id"], status="failed")
    assert [line["index"] for line in failed] == [1, 3, 5, 7]
    assert all(line["error"]["code"] == "unknown_model" for line in failed)
    assert [line["index"] for line in results(ingress, batch["id"], "succeeded")] == [0, 2, 4, 6]

    shutil.copytree(ready.parent, model_repository / "batch-late")
    response = requests.post(f"{ingress.url}/v1/batches/{batch['id']}/retry", headers=A, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running"
    assert response.json()["counts"]["failed"] == 0 and response.json()["counts"]["total"] == 8
    second = finished(ingress, batch["id"])
    assert second["status"] == "succeeded" and second["counts"]["succeeded"] == 8
    after = {line["index"]: line for line in results(ingress, batch["id"])}
    for index in range(8):
        if index % 2 == 0:
            assert after[index]["job_id"] == before[index]["job_id"]  # not run again
        else:
            assert after[index]["job_id"] != before[index]["job_id"]
            old = requests.get(
                f"{ingress.url}/v1/jobs/{before[index]['job_id']}", headers=A, timeout=30
            )
            assert old.json()["status"] == "failed"  # terminal states never change
    assert len(jobs_of(batch["id"])) == 12
    again = requests.post(f"{ingress.url}/v1/batches/{batch['id']}/retry", headers=A, timeout=60)
    assert again.status_code == 200 and len(jobs_of(batch["id"])) == 12  # nothing failed now


def test_the_event_stream_shows_progress_items_and_done(
    ingress: Service, worker: Service, clean_firestore: Emulators
) -> None:
    lines = [json.dumps({"texts": [f"streamed {i}"]}) for i in range(60)]
    with paused(worker):
        batch = submit_ndjson(ingress, "embed", lines).json()
        response = requests.get(
            f"{ingress.url}/v1/batches/{batch['id']}/events", headers=A, stream=True, timeout=120
        )
        assert response.headers["Content-Type"].startswith("text/event-stream")
        messages = sse_messages(response.iter_lines(decode_unicode=True))
        first = next(messages)
        assert first["event"] == "progress" and first["data"]["counts"]["queued"] == 60
    events = [m for m in messages if "event" in m]
    kinds = [m["event"] for m in events]
    assert kinds[-1] == "done" and events[-1]["data"]["status"] == "succeeded"
    items = [m["data"] for m in events if m["event"] == "item"]
    assert sorted(item["index"] for item in items) == list(range(60))
    assert all(item["status"] == "succeeded" and "result" not in item for item in items)
    assert "progress" in kinds[:-1]
    # A stream opened on a finished batch: its state, then done.
    again = requests.get(f"{ingress.url}/v1/batches/{batch['id']}/events", headers=A, timeout=30)
    assert [m["event"] for m in sse_messages(again.text.splitlines())] == ["progress", "done"]


def test_another_tenant_gets_404_on_every_batch_route(
    ingress: Service, clean_firestore: Emulators
) -> None:
    batch = submit_ndjson(ingress, "embed", [json.dumps({"texts": ["mine"]})]).json()
    base = f"{ingress.url}/v1/batches/{batch['id']}"
    for method, url in [
        ("GET", base),
        ("GET", base + "/results"),
        ("GET", base + "/events"),
        ("POST", base + "/cancel"),
        ("POST", base + "/retry"),
    ]:
        theirs = requests.request(method, url, headers=B, timeout=30)
        unknown = requests.request(
            method, url.replace(batch["id"], "0" * 32), headers=A, timeout=30
        )
        assert theirs.status_code == unknown.status_code == 404, (method, url)
        assert theirs.json()["detail"] == unknown.json()["detail"]
        assert requests.request(method, url, timeout=30).status_code == 401
    bad = requests.get(base + "/results", params={"status": "done"}, headers=A, timeout=30)
    assert bad.status_code == 400


@pytest.mark.slow
def test_a_hundred_thousand_item_batch_is_accepted(
    emulators: Emulators, log_dir: Path, clean_firestore: Emulators
) -> None:
    # An ingress whose topic no subscription reads: the test measures acceptance, and the
    # session's worker is not handed 100,000 jobs to run afterwards.
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=publisher.topic_path(emulators.project, "batch-sink"))
    sink = start_ingress(emulators, log_dir, "ingress-sink", JOBS_TOPIC="batch-sink")
    try:
        body = b"".join(b'{"texts": ["item %d of a large batch"]}\n' % i for i in range(100_000))
        response = requests.post(
            f"{sink.url}/v1/batches",
            params={"task": "embed"},
            data=body,
            headers={**A, **NDJSON},
            timeout=300,
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["counts"]["total"] == batch["counts"]["queued"] == 100_000
        query = (
            firestore.Client()
            .collection("jobs")
            .where(filter=FieldFilter("batch_id", "==", batch["id"]))
        )
        assert query.count().get()[0][0].value == 100_000
        # Item documents are built as protobufs directly: each must read back exactly as the
        # one definition of a job document (new_job_document) makes it.
        first_item = next(iter(query.where(filter=FieldFilter("batch_index", "==", 7)).stream()))
        stored = first_item.to_dict() or {}
        expected = new_job_document(
            tenant="tenant-a",
            task="embed",
            input={"texts": ["item 7 of a large batch"]},
            metadata=None,
            now=stored["created_at"],
        )
        expected.update(item_fields(batch["id"], f"batches/{batch['id']}", 7))
        expected["trace_id"] = stored["trace_id"]  # the batch request's trace, every item alike
        assert len(stored["trace_id"]) == 32
        assert stored == expected
        lines = requests.get(
            f"{sink.url}/v1/batches/{batch['id']}/results", headers=A, stream=True, timeout=300
        )
        first = [json.loads(line) for _, line in zip(range(3), lines.iter_lines(), strict=False)]
        assert [line["index"] for line in first] == [0, 1, 2]
        lines.close()
    finally:
        stop_group(sink.process, 30)


def test_a_batch_whose_request_died_is_abandoned_on_an_idempotent_retry(
    ingress: Service, clean_firestore: Emulators
) -> None:
    # As if an ingress had died while accepting: the key reserved, the batch still "creating"
    # ten minutes later. The client's retry with the key must not wait forever on it.
    from datetime import UTC, datetime, timedelta

    from ingress.idempotency import IdempotencyStore

    body = json.dumps({"texts": ["lost"]}) + "\n"
    batch_id = "d" * 32
    started = datetime.now(UTC) - timedelta(minutes=10)
    db = firestore.Client()
    digest = hashlib.sha256(b"/v1/batches\x00embed\x00" + body.encode()).hexdigest()
    db.collection("idempotency").document(IdempotencyStore._doc_id("tenant-a", "died")).set(
        {
            "tenant": "tenant-a",
            "fingerprint": digest,
            "resource_id": batch_id,
            "created_at": started,
            "expire_at": started + timedelta(hours=24),
        }
    )
    batch_doc = {"tenant": "tenant-a", "task": "embed", "state": "creating", "created_at": started}
    db.collection("batches").document(batch_id).set(batch_doc)
    retry = submit_ndjson(ingress, "embed", [body.strip()], {**A, "Idempotency-Key": "died"})
    assert retry.status_code == 409 and "use a new key" in retry.json()["detail"]
    stored = db.collection("batches").document(batch_id).get().to_dict() or {}
    assert stored["state"] == "abandoned" and stored["cancel_requested"] is True
    fresh = submit_ndjson(ingress, "embed", [body.strip()], {**A, "Idempotency-Key": "anew"})
    assert fresh.status_code == 202


def test_a_line_nested_too_deeply_is_named(ingress: Service, clean_firestore: Emulators) -> None:
    lines = [json.dumps({"texts": ["fine"]}), "[" * 50_000]
    response = submit_ndjson(ingress, "embed", lines)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "line", 2]
    assert "nested deeper" in response.json()["errors"][0]["msg"]
