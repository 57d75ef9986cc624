"""Property-based fuzzing of the running ingress from its own ``/openapi.json`` (schemathesis).

Every operation gets up to ``MAX_EXAMPLES`` generated requests, valid and invalid, with a tenant's
key. No answer may be a 5xx, every answer must match the document (status, content type, body
schema), and a request the document calls valid must not be refused as invalid. Any failure is a
bug in the app or in the document; see docs/api.md.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from ingress.http import prefer_wait
from tests.support.stacks import KEYS, Service

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
"""Generated requests per operation (a bound on the run time, not a target)."""
TIMEOUT_S = 20
"""Longest one fuzzed request may take, seconds; event streams of unknown ids answer at once."""
HEADERS = {"X-API-Key": KEYS["tenant-a"]}
BEYOND_JSON_SCHEMA = (
    "each ds must appear once",  # schemas/tasks/forecast.py: unique by a property
    "bytes; at most",  # embed and similar: the texts' total UTF-8 size
    # webhook: the address rules and the tenant's signing secret (schemas/webhooks.py); the
    # session's ingress has no secrets, so every well-formed URL meets one of these.
    "no webhook signing secret",
    "not a public address",
    "not a public host",
    "only https webhook URLs",
    "a webhook URL",  # its form: scheme, host, no credentials or fragment
)
"""422 messages of rules JSON Schema cannot state: a request breaking only these is no false
rejection of valid data."""


# An NDJSON part's body is lines of the task's inputs: schemathesis has no serializer for it, so
# it sends the generated value as text (mostly not valid lines: a 4xx, checked like any other).
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def valid_data_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """``positive_data_acceptance``, except for the rules in ``BEYOND_JSON_SCHEMA``."""
    if response.status_code == 422 and "ndjson" in str(case.media_type):
        return None  # JSON Schema cannot say "each line is one of the task's inputs"
    if response.status_code == 400 and "page_token is not one" in response.text:
        return None  # a page token is valid only if a listing made it: opaque to JSON Schema
    if response.status_code == 422:
        errors = response.json().get("errors") or [{"msg": ""}]
        if all(any(rule in e["msg"] for rule in BEYOND_JSON_SCHEMA) for e in errors):
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    valid_data_accepted,
]

_cases: Counter[str] = Counter()
"""Requests sent, per operation (the closing report prints them)."""


@pytest.fixture(scope="session")
def api_schema(ingress: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{ingress.url}/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    for label, count in sorted(_cases.items()):
        print(f"fuzz: {count:4d} cases  {label}")
    print(f"fuzz: {sum(_cases.values())} cases in all, {len(_cases)} operations")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    database=None,  # no .hypothesis/ in the tree: each run stands alone
    # The same cases on every CI run, so a red build means a change broke something, not that
    # the dice found something old; FUZZ_RANDOM=1 explores new cases (docs/api.md).
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
)
def test_api_conforms_to_its_document(case: schemathesis.Case) -> None:
    # A generated `Prefer: wait=N` would hold each request up to 60 s on a job no worker runs:
    # keep the preference, shorten the wait.
    if case.headers and prefer_wait(case.headers.get("Prefer")) is not None:
        case.headers["Prefer"] = "wait=0.2"
    _cases[case.operation.label] += 1
    case.call_and_validate(headers=HEADERS, checks=CHECKS, timeout=TIMEOUT_S)
