"""ingress/pages.py: listing parameters, and page tokens bound to one tenant and one query."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from ingress.errors import BadRequest
from ingress.pages import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    decode_token,
    encode_token,
    limit_param,
    time_param,
)

FILTERS = {"status": "failed", "task": None}
CURSOR = Cursor(datetime(2026, 12, 6, 10, 0, 0, 123456, tzinfo=UTC), "a" * 32)


def test_a_token_reads_back_as_its_cursor_for_its_tenant_and_query() -> None:
    token = encode_token("acme", FILTERS, CURSOR)
    assert decode_token(token, "acme", FILTERS) == CURSOR
    assert decode_token(None, "acme", FILTERS) is None
    assert decode_token("", "acme", FILTERS) is None


def test_another_tenants_token_is_refused() -> None:
    token = encode_token("acme", FILTERS, CURSOR)
    with pytest.raises(BadRequest, match="page_token"):
        decode_token(token, "globex", FILTERS)


def test_a_token_sent_with_other_filters_is_refused() -> None:
    token = encode_token("acme", FILTERS, CURSOR)
    with pytest.raises(BadRequest):
        decode_token(token, "acme", {"status": "succeeded", "task": None})


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "A" * 600,
    ],
)
def test_a_token_this_api_did_not_make_is_refused(token: str) -> None:
    with pytest.raises(BadRequest):
        decode_token(token, "acme", FILTERS)


def test_a_tampered_cursor_id_is_refused_before_it_reaches_a_query() -> None:
    body = json.loads(base64.urlsafe_b64decode(encode_token("acme", FILTERS, CURSOR) + "=="))
    body["i"] = "../other/path"
    token = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(BadRequest):
        decode_token(token, "acme", FILTERS)


def test_limit_defaults_and_bounds() -> None:
    assert limit_param(None) == DEFAULT_LIMIT
    assert limit_param(str(MAX_LIMIT)) == MAX_LIMIT
    for bad in ("0", str(MAX_LIMIT + 1), "-1", "ten", "1.5", ""):
        with pytest.raises(BadRequest):
            limit_param(bad)


def test_times_need_an_offset() -> None:
    assert time_param("created_after", "2026-12-06T10:00:00Z") == datetime(
        2026, 12, 6, 10, tzinfo=UTC
    )
    assert time_param("created_after", None) is None
    for bad in ("2026-12-06T10:00:00", "yesterday", "2026-12-06T10:00:00Z" + "0" * 60):
        with pytest.raises(BadRequest, match="created_after"):
            time_param("created_after", bad)
