"""ingress/meta/openapi.py: the generated OpenAPI 3.1 document covers every /v1 route and is
valid."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from ingress import create_app
from ingress.meta import openapi
from ingress.settings import Settings
from schemas import TASKS
from schemas.chunks import event_id
from schemas.webhooks import MAX_URL_CHARS

IGNORED = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Flask:
    # The clients are built but never called: nothing listens on these ports.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    settings = Settings(project="omni-openapi-test", api_keys="t:k-0123456789")
    return create_app(settings, configure_logs=False)


@pytest.fixture
def served(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def test_is_served_without_a_key_and_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    assert served["openapi"] == "3.1.0"
    validate(served)


def test_every_v1_route_and_method_is_documented(app: Flask, served: dict[str, Any]) -> None:
    routes = {
        (openapi.openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/") or rule.rule == "/v1"
        for method in (rule.methods or set()) - IGNORED
    }
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert routes, "the app has /v1 routes"
    assert routes - documented == set()


def test_the_table_names_no_route_the_app_lacks(app: Flask) -> None:
    rules = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IGNORED
    }
    assert openapi.documented_rules() - rules == set()


def test_v1_operations_need_a_key_and_errors_are_problems(served: dict[str, Any]) -> None:
    schemes = served["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, item in served["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            if path.startswith("/v1/"):
                assert "security" not in operation, where  # the document-wide key applies
                assert "401" in operation["responses"], where
            else:
                assert operation["security"] == [], where
            for status, response in operation["responses"].items():
                # /health's 503 is its own body (the contract's), telling which dependency is down.
                if int(status) >= 400 and path != "/health":
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], where
                    assert content["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }


def test_models_and_every_task_are_components(served: dict[str, Any]) -> None:
    schemas = served["components"]["schemas"]
    for name in ("Job", "JobRequest", "Batch", "BatchRequest", "Problem", "JobStatus"):
        assert name in schemas
    for spec in TASKS.values():
        assert spec.input_model.__name__ in schemas
        assert spec.output_model.__name__ in schemas
    variants = schemas["JobSubmission"]["allOf"][1]["oneOf"]
    assert [v["properties"]["task"]["const"] for v in variants] == list(TASKS)


def test_streams_and_ndjson_are_described(served: dict[str, Any]) -> None:
    paths = served["paths"]
    assert (
        "text/event-stream"
        in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    )
    assert "application/x-ndjson" in paths["/v1/batches"]["post"]["requestBody"]["content"]
    results = paths["/v1/batches/{batch_id}/results"]["get"]["responses"]["200"]
    assert "application/x-ndjson" in results["content"]


def test_paths_use_openapi_templates() -> None:
    assert openapi.openapi_path("/v1/jobs/<job_id>/events") == "/v1/jobs/{job_id}/events"
    assert openapi.openapi_path("/x/<path:rest>") == "/x/{rest}"


def test_liveness_is_public_and_touches_no_backend(served: dict[str, Any]) -> None:
    live = served["paths"]["/health/live"]["get"]
    assert live["security"] == []
    assert live["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Liveness"
    }
    assert set(served["components"]["schemas"]["Liveness"]["properties"]) == {"ok", "service"}


def test_an_ndjson_batch_takes_its_webhook_url_from_a_header_or_the_query(
    served: dict[str, Any],
) -> None:
    parameters = served["paths"]["/v1/batches"]["post"]["parameters"]
    by_place = {(p["in"], p["name"]): p for p in parameters}
    header = by_place[("header", "Webhook-URL")]
    assert ("query", "webhook") in by_place  # kept, beside the header
    assert header["required"] is False
    assert header["schema"]["maxLength"] == MAX_URL_CHARS
    assert "400" in served["paths"]["/v1/batches"]["post"]["responses"]  # both, and different


def test_metrics_are_left_out_where_a_private_port_serves_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    settings = Settings(project="omni-openapi-test", api_keys="t:k-0123456789", metrics_port=9091)
    client = create_app(settings, configure_logs=False).test_client()

    document = client.get("/openapi.json").get_json()

    assert "/metrics" not in document["paths"]
    assert client.get("/metrics").status_code == 404


def test_batch_parts_results_and_events_are_described(served: dict[str, Any]) -> None:
    paths = served["paths"]
    schemas = served["components"]["schemas"]
    create = {p["name"]: p for p in paths["/v1/batches"]["post"]["parameters"]}
    assert create["open"]["in"] == "query"
    part = paths["/v1/batches/{batch_id}/items"]["post"]
    assert list(part["requestBody"]["content"]) == ["application/x-ndjson"]
    assert [p["name"] for p in part["parameters"]] == ["batch_id", "Idempotency-Key"]
    assert {"202", "409", "413", "422"} <= set(part["responses"])
    assert "409" in paths["/v1/batches/{batch_id}/close"]["post"]["responses"]

    results = {p["name"]: p for p in paths["/v1/batches/{batch_id}/results"]["get"]["parameters"]}
    assert results["after"]["schema"]["pattern"] == "^[0-9]{1,12}$"
    item = paths["/v1/batches/{batch_id}/items/{index}"]["get"]
    index = {p["name"]: p for p in item["parameters"]}["index"]
    assert index["schema"]["pattern"] == "^[0-9]{1,12}$"
    assert item["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchItem"
    }
    events = {p["name"]: p for p in paths["/v1/batches/{batch_id}/events"]["get"]["parameters"]}
    assert events["Last-Event-ID"]["in"] == "header"
    documented = re.compile(events["Last-Event-ID"]["schema"]["pattern"])
    assert documented.match(event_id(datetime(2026, 12, 5, tzinfo=UTC), "r" + "0" * 32, 12))
    assert documented.match(event_id(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), "0000000004", 0))
    assert not documented.match("7")  # what the route answers 400 to, the document calls invalid

    line = schemas["BatchItem"]
    assert set(line["properties"]) == {"index", "status", "result", "error", "attempts"}
    assert set(line["required"]) == {"index", "status", "attempts"}  # no job_id any more
    assert "open" in schemas["BatchStatus"]["enum"]
    assert {"open", "open_expires_at", "closed_at"} <= set(schemas["Batch"]["properties"])
