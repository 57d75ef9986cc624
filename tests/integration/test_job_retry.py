"""POST /v1/jobs/ID/retry against the emulators, gunicorn and a real worker: a failed job runs
again as a new job that names it, and nothing else can be retried."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from google.cloud import firestore

from schemas import get_task
from schemas.jobs import new_job_document, new_job_id
from tests.support.stacks import KEYS, Service

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}


def stored_job(status: str, tenant: str = "tenant-a", **fields: Any) -> str:
    """An embed job of ``tenant`` written as a worker would have left it."""
    doc = new_job_document(
        tenant=tenant,
        task="embed",
        input=get_task("embed").input_to_store({"texts": ["run me again"]}),
        metadata={"run": "7"},
        now=datetime.now(UTC),
    )
    doc.update(status=status, in_flight_counted=False, **fields)
    job_id = new_job_id()
    firestore.Client().collection("jobs").document(job_id).set(doc, timeout=TIMEOUT)
    return job_id


def retry(ingress: Service, job_id: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{ingress.url}/v1/jobs/{job_id}/retry", headers={**A, **headers}, timeout=TIMEOUT
    )


def test_a_failed_job_runs_again_as_a_new_job_that_names_it(
    ingress: Service, worker: Service, clean_firestore: object
) -> None:
    failed = stored_job("failed", error={"code": "model_error", "message": "it broke"})

    answer = retry(ingress, failed)

    assert answer.status_code == 202, answer.text
    new = answer.json()
    assert new["id"] != failed and new["retry_of"] == failed
    assert answer.headers["Location"] == f"/v1/jobs/{new['id']}"
    assert new["input"] == {"texts": ["run me again"]} and new["metadata"] == {"run": "7"}
    done = requests.get(
        f"{ingress.url}/v1/jobs/{new['id']}", params={"wait": 30}, headers=A, timeout=60
    ).json()
    assert done["status"] == "succeeded", done
    assert len(done["result"]["embeddings"]) == 1
    old = requests.get(f"{ingress.url}/v1/jobs/{failed}", headers=A, timeout=TIMEOUT).json()
    assert old["status"] == "failed" and "retry_of" not in old


def test_only_a_failed_job_of_ones_own_can_be_retried(
    ingress: Service, clean_firestore: object
) -> None:
    for status in ("queued", "succeeded", "cancelled"):
        assert retry(ingress, stored_job(status)).status_code == 409, status
    others = stored_job("failed", tenant="tenant-b")
    assert retry(ingress, others).status_code == 404
    assert retry(ingress, "0" * 32).status_code == 404
    jobs = list(firestore.Client().collection("jobs").stream(timeout=TIMEOUT))
    assert not [s for s in jobs if (s.to_dict() or {}).get("retry_of")]


def test_a_retry_with_an_idempotency_key_answers_the_same_new_job(
    ingress: Service, clean_firestore: object
) -> None:
    failed = stored_job("failed", error={"code": "model_error", "message": "it broke"})

    first = retry(ingress, failed, **{"Idempotency-Key": "retry-once"})
    again = retry(ingress, failed, **{"Idempotency-Key": "retry-once"})

    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
