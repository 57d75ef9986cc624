"""The ingress's HTTP contract against real emulators: auth, tenancy, validation, error bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from google.cloud import firestore

from schemas.tasks.embed import MAX_TEXT_CHARS, MAX_TEXTS
from tests.support.stacks import KEYS, Service

pytestmark = pytest.mark.integration
TIMEOUT = 30
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"Authorization": f"Bearer {KEYS['tenant-b']}"}


def submit(ingress: Service, body: Any, headers: dict[str, str] = A) -> requests.Response:
    return requests.post(f"{ingress.url}/v1/jobs", json=body, headers=headers, timeout=TIMEOUT)


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"]
    return problem


def error_locs(problem: dict[str, Any]) -> list[list[str | int]]:
    return [error["loc"] for error in problem["errors"]]


EMBED = {"task": "embed", "input": {"texts": ["hello"]}, "cache": False}
"""Not from the result cache: these tests expect it queued, and an earlier test's run of the same
text may write its entry after this test's clean_firestore."""


# -- authentication ------------------------------------------------------------------------------
def test_no_key_is_401(ingress: Service, clean_firestore: object) -> None:
    response = submit(ingress, EMBED, headers={})
    assert_problem(response, 401)
    assert "WWW-Authenticate" in response.headers


def stored_job_count() -> int:
    return len(list(firestore.Client().collection("jobs").stream(timeout=TIMEOUT)))


def test_wrong_key_is_401_and_creates_nothing(ingress: Service, clean_firestore: object) -> None:
    response = submit(ingress, EMBED, headers={"X-API-Key": "not-a-key"})
    problem = assert_problem(response, 401)
    assert "not-a-key" not in response.text and "not-a-key" not in str(problem)
    assert stored_job_count() == 0
    assert submit(ingress, EMBED).status_code == 202  # the same body with a good key is stored
    assert stored_job_count() == 1


def test_bearer_and_header_keys_are_both_accepted(
    ingress: Service, clean_firestore: object
) -> None:
    assert submit(ingress, EMBED, headers=A).status_code == 202
    assert submit(ingress, EMBED, headers=B).status_code == 202


def test_every_v1_route_needs_a_key(ingress: Service) -> None:
    for method, path in (("GET", "/v1/tasks"), ("GET", "/v1/jobs/" + "0" * 32)):
        assert_problem(requests.request(method, ingress.url + path, timeout=TIMEOUT), 401)


def test_health_needs_no_key(ingress: Service) -> None:
    response = requests.get(f"{ingress.url}/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "pubsub_ok": True,
        "firestore_ok": True,
        "service": "ingress",
    }


# -- tenancy and lookups -------------------------------------------------------------------------
def test_unknown_id_is_404(ingress: Service, clean_firestore: object) -> None:
    for job_id in ("0" * 32, "not-even-an-id"):
        response = requests.get(f"{ingress.url}/v1/jobs/{job_id}", headers=A, timeout=TIMEOUT)
        assert_problem(response, 404)


def test_another_tenants_job_is_404_like_an_unknown_one(
    ingress: Service, clean_firestore: object
) -> None:
    job = submit(ingress, EMBED, headers=A).json()
    theirs = requests.get(f"{ingress.url}/v1/jobs/{job['id']}", headers=B, timeout=TIMEOUT)
    unknown = requests.get(f"{ingress.url}/v1/jobs/{'f' * 32}", headers=B, timeout=TIMEOUT)
    assert_problem(theirs, 404)
    assert theirs.json() == unknown.json()
    mine = requests.get(f"{ingress.url}/v1/jobs/{job['id']}", headers=A, timeout=TIMEOUT)
    assert mine.status_code == 200 and mine.json()["id"] == job["id"]


def test_accepted_job_is_queued_with_location(ingress: Service, clean_firestore: object) -> None:
    response = submit(ingress, {**EMBED, "metadata": {"run": "7"}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["task"] == "embed" and job["attempts"] == 0
    assert job["input"] == {"texts": ["hello"]} and job["metadata"] == {"run": "7"}
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "events": f"/v1/jobs/{job['id']}/events",
    }
    assert "result" not in job and "error" not in job and "tenant" not in job


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"task": "paint", "input": {"texts": ["x"]}}, ["body", "task"]),
        ({"task": "embed", "input": {"texts": []}}, ["body", "input", "texts"]),
        (
            {"task": "embed", "input": {"texts": ["x"] * (MAX_TEXTS + 1)}},
            ["body", "input", "texts"],
        ),
        ({"task": "embed", "input": {"texts": "a cat"}}, ["body", "input", "texts"]),
        ({"task": "embed", "input": {"texts": [1, 2]}}, ["body", "input", "texts", 0]),
        (
            {"task": "embed", "input": {"texts": ["x" * (MAX_TEXT_CHARS + 1)]}},
            ["body", "input", "texts", 0],
        ),
        ({"task": "embed", "input": {"texts": ["x"], "extra": 1}}, ["body", "input", "extra"]),
        ({"task": "embed", "input": ["x"]}, ["body", "input"]),
        ({"task": "embed"}, ["body", "input"]),
        ({"task": 7, "input": {"texts": ["x"]}}, ["body", "task"]),
        (
            {"task": "embed", "input": {"texts": ["x"]}, "metadata": {"k": 1}},
            ["body", "metadata", "k"],
        ),
        (
            {"task": "embed", "input": {"texts": ["x"]}, "webhook": "https://example.com/h"},
            ["body", "webhook"],
        ),
        (["not", "an", "object"], ["body"]),
    ],
    ids=[
        "unknown-task",
        "empty-texts",
        "257-texts",
        "texts-not-list",
        "texts-not-strings",
        "text-too-long",
        "unknown-field",
        "input-not-object",
        "no-input",
        "task-not-string",
        "metadata-not-strings",
        "webhook-tenant-without-secret",
        "body-not-object",
    ],
)
def test_invalid_input_is_422_naming_the_field(
    ingress: Service, clean_firestore: object, body: Any, loc: list[str | int]
) -> None:
    problem = assert_problem(submit(ingress, body), 422)
    assert loc in error_locs(problem), problem
    assert all(error["msg"] for error in problem["errors"])


def test_256_texts_are_accepted(ingress: Service, clean_firestore: object) -> None:
    assert (
        submit(ingress, {"task": "embed", "input": {"texts": ["x"] * MAX_TEXTS}}).status_code == 202
    )


def test_malformed_json_is_400(ingress: Service) -> None:
    response = requests.post(
        f"{ingress.url}/v1/jobs",
        data='{"task": "embed", "input": ',
        headers={**A, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert "malformed JSON" in assert_problem(response, 400)["detail"]


def test_unpaired_surrogate_escape_is_400_not_500(
    ingress: Service, clean_firestore: object
) -> None:
    body = '{"task": "embed", "input": {"texts": ["ok"]}, "metadata": {"k": "\\ud800"}}'
    response = requests.post(
        f"{ingress.url}/v1/jobs",
        data=body,
        headers={**A, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert "surrogate" in assert_problem(response, 400)["detail"]
    assert stored_job_count() == 0


def test_invalid_utf8_is_400(ingress: Service) -> None:
    response = requests.post(
        f"{ingress.url}/v1/jobs",
        data=b'{"task": "\xff"}',
        headers={**A, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_problem(response, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_body_is_415(ingress: Service, content_type: str | None) -> None:
    headers = {**A, **({"Content-Type": content_type} if content_type else {})}
    response = requests.post(
        f"{ingress.url}/v1/jobs", data=b"task=embed", headers=headers, timeout=TIMEOUT
    )
    assert_problem(response, 415)


def test_body_over_the_limit_is_413(ingress: Service, clean_firestore: object) -> None:
    texts = ["y" * 1000] * 1100  # ~1.1 MB of JSON: over the 1 MiB job limit
    response = submit(ingress, {"task": "embed", "input": {"texts": texts}})
    assert_problem(response, 413)


def test_wrong_method_is_405_with_allow(ingress: Service) -> None:
    response = requests.delete(f"{ingress.url}/v1/jobs", headers=A, timeout=TIMEOUT)
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_unknown_route_is_404_problem(ingress: Service) -> None:
    assert_problem(requests.get(f"{ingress.url}/nothing-here", timeout=TIMEOUT), 404)


def test_tasks_lists_embed_with_its_json_schemas(ingress: Service) -> None:
    response = requests.get(f"{ingress.url}/v1/tasks", headers=A, timeout=TIMEOUT)
    assert response.status_code == 200
    (embed,) = [t for t in response.json()["tasks"] if t["name"] == "embed"]
    texts = embed["input_schema"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, MAX_TEXTS)
    assert texts["items"]["maxLength"] == MAX_TEXT_CHARS
    assert "embeddings" in embed["output_schema"]["properties"]
    assert embed["description"]


def test_no_key_appears_in_the_ingress_logs(ingress: Service) -> None:
    submit(ingress, EMBED, headers={"X-API-Key": "secret-wrong-key-xyz"})
    requests.get(f"{ingress.url}/v1/tasks", headers=B, timeout=TIMEOUT)
    text = ingress.log_path.read_text()
    for key in (*KEYS.values(), "secret-wrong-key-xyz"):
        assert key not in text
    assert ingress.log_lines()  # every line parses as a JSON object


# -- cancel and Idempotency-Key across tenants ---------------------------------------------------
def test_another_tenants_job_cannot_be_cancelled(ingress: Service, clean_firestore: object) -> None:
    job_id = submit(ingress, EMBED).json()["id"]
    url = f"{ingress.url}/v1/jobs/{job_id}/cancel"
    other = requests.post(url, headers=B, timeout=TIMEOUT)
    unknown = requests.post(f"{ingress.url}/v1/jobs/{'0' * 32}/cancel", headers=B, timeout=TIMEOUT)
    assert assert_problem(other, 404) == assert_problem(unknown, 404)
    assert requests.post(url, headers={}, timeout=TIMEOUT).status_code == 401


def test_idempotency_keys_belong_to_their_tenant(ingress: Service, clean_firestore: object) -> None:
    key = {"Idempotency-Key": "shared-key-1"}
    mine = submit(ingress, EMBED, headers={**A, **key}).json()["id"]
    theirs = submit(ingress, EMBED, headers={**B, **key}).json()["id"]
    assert mine != theirs
    assert submit(ingress, EMBED, headers={**A, **key}).json()["id"] == mine


def test_an_idempotent_replay_ignores_key_order_and_whitespace(
    ingress: Service, clean_firestore: object
) -> None:
    key = {"Idempotency-Key": "order-insensitive", "Content-Type": "application/json"}
    url = f"{ingress.url}/v1/jobs"
    one = '{"task": "embed", "input": {"texts": ["a"]}, "metadata": {"k": "v"}}'
    two = '{"metadata":{"k":"v"},"input":{"texts":["a"]},"task":"embed"}'
    first = requests.post(url, data=one, headers={**A, **key}, timeout=TIMEOUT)
    second = requests.post(url, data=two, headers={**A, **key}, timeout=TIMEOUT)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"


def test_a_body_nested_too_deeply_is_400_not_a_crash(
    ingress: Service, clean_firestore: object
) -> None:
    # Python's JSON parser overflows its stack on a few thousand "[": found before parsing.
    deep = requests.post(
        f"{ingress.url}/v1/jobs",
        data=b"[" * 100_000,
        headers={**A, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_problem(deep, 400)
    assert "nested deeper" in deep.json()["detail"]
    nested: Any = {"texts": ["x"]}
    for _ in range(40):
        nested = {"n": nested}
    assert_problem(submit(ingress, {"task": "embed", "input": nested}), 400)
    assert stored_job_count() == 0


def test_an_integer_beyond_64_bits_is_422_not_500(
    ingress: Service, clean_firestore: object
) -> None:
    # Found by the fuzzer (tests/integration/test_fuzz.py): JSON allows any integer, Firestore
    # stores 64 bits, and the failed write of predict's version 2**70 answered 500. The schema
    # bounds it now; predict's instances (stored as JSON text) may still hold any number.
    body = {"task": "predict", "input": {"model": "m", "version": 2**70, "instances": [[1.0]]}}
    problem = assert_problem(submit(ingress, body), 422)
    assert error_locs(problem) == [["body", "input", "version"]]
    line = json.dumps(body["input"]).encode() + b"\n"
    response = requests.post(
        f"{ingress.url}/v1/batches?task=predict",
        data=line,
        headers={**A, "Content-Type": "application/x-ndjson"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "line", 1, "version"]
    big = {"task": "predict", "input": {"model": "m", "instances": [[2**70, 1]]}}
    assert submit(ingress, big).status_code == 202  # stored as text: any number is fine there
