"""Every ``/v1`` route, enumerated from the app's own URL map (so a new route cannot be
forgotten): 401 without a key, 404 with another tenant's key on anything that names a resource,
and no key ever echoed back."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from ingress import create_app
from ingress.settings import Settings
from tests.support.stacks import KEYS, Emulators, Service

pytestmark = pytest.mark.integration
A = {"X-API-Key": KEYS["tenant-a"]}
B = {"X-API-Key": KEYS["tenant-b"]}


def v1_routes(emulators: Emulators) -> list[tuple[str, str]]:
    app = create_app(Settings(project=emulators.project, api_keys="x:y"), configure_logs=False)
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                routes.append((method, rule.rule))
    return sorted(routes)


@pytest.fixture(scope="module")
def owned(ingress: Service) -> dict[str, str]:
    """A job and a batch of tenant A's, to name in the routes."""
    job = requests.post(
        f"{ingress.url}/v1/jobs",
        json={"task": "embed", "input": {"texts": ["mine"]}},
        headers=A,
        timeout=30,
    ).json()
    batch = requests.post(
        f"{ingress.url}/v1/batches",
        json={"task": "embed", "items": [{"texts": ["mine too"]}]},
        headers=A,
        timeout=30,
    ).json()
    return {"job_id": job["id"], "batch_id": batch["id"], "index": "0"}


def test_every_v1_route_needs_a_key_and_hides_other_tenants_resources(
    ingress: Service, emulators: Emulators, owned: dict[str, str]
) -> None:
    routes = v1_routes(emulators)
    assert ("POST", "/v1/batches/<batch_id>/retry") in routes and len(routes) >= 10
    for method, rule in routes:
        names = re.findall(r"<(?:[^:>]+:)?([^>]+)>", rule)
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: owned[m.group(1)], rule)
        url = f"{ingress.url}{path}"
        body = json.dumps({}) if method == "POST" else None
        json_headers = {"Content-Type": "application/json"}
        nobody = requests.request(method, url, data=body, headers=json_headers, timeout=30)
        assert nobody.status_code == 401, (method, rule, nobody.status_code)
        wrong = requests.request(
            method, url, data=body, headers={**json_headers, "X-API-Key": "no-such-key"}, timeout=30
        )
        assert wrong.status_code == 401 and "no-such-key" not in wrong.text
        if names:
            theirs = requests.request(
                method, url, data=body, headers={**json_headers, **B}, timeout=30
            )
            assert theirs.status_code == 404, (method, rule, theirs.status_code, theirs.text)
            assert KEYS["tenant-b"] not in theirs.text and KEYS["tenant-a"] not in theirs.text


def test_no_response_ever_carries_the_key(ingress: Service, owned: dict[str, str]) -> None:
    answers: list[requests.Response] = [
        requests.get(f"{ingress.url}/v1/jobs/{owned['job_id']}", headers=A, timeout=30),
        requests.get(f"{ingress.url}/v1/batches/{owned['batch_id']}", headers=A, timeout=30),
        requests.get(f"{ingress.url}/v1/tasks", headers=A, timeout=30),
        requests.post(f"{ingress.url}/v1/jobs", data=b"{", headers=A, timeout=30),
        requests.get(f"{ingress.url}/health", headers=A, timeout=30),
    ]
    for response in answers:
        everything: Any = (response.text, dict(response.headers))
        assert KEYS["tenant-a"] not in str(everything), response.url
