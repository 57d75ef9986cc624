"""Listings: their query parameters, and page tokens that are opaque and bound to one tenant and
one query.

A page token carries where the last page ended (the last item's ``created_at`` and id: listings
are newest first, ties broken by id, so no item is skipped or repeated however many share a
timestamp) and two tags: a digest of the tenant and one of the query's filters. A token another
tenant sent, or one sent with other filters, is refused (400) before any read; a token a tenant
forges can only move its cursor within its own items, because every listing query filters on the
caller's tenant first. Nothing secret is needed, so any ingress instance reads any token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ingress.errors import BadRequest
from schemas import JOB_ID_PATTERN

DEFAULT_LIMIT = 50
"""Items on a page when ``limit`` is not given."""
MAX_LIMIT = 200
"""Most items on one page (``limit``): a page is one bounded Firestore query."""
MAX_TOKEN_CHARS = 512
"""Longest page token read; ours are ~150 characters."""
_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last item's creation time and id."""

    created_at: datetime
    item_id: str


def limit_param(raw: str | None) -> int:
    """``?limit=N`` (1..``MAX_LIMIT``), ``DEFAULT_LIMIT`` when absent; 400 otherwise."""
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def time_param(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 time with its offset (``2026-12-06T10:00:00Z``); 400 for anything else."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw[:64].replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or len(raw) > 64:
        raise BadRequest(
            f"{name} must be an RFC 3339 time with an offset, e.g. 2026-12-06T10:00:00Z"
        )
    return value


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _query_tag(filters: Mapping[str, str | None]) -> str:
    return _tag(json.dumps(sorted((k, v) for k, v in filters.items() if v is not None)))


def encode_token(tenant: str, filters: Mapping[str, str | None], cursor: Cursor) -> str:
    """The token of the page after ``cursor``, for ``tenant``'s query with ``filters``."""
    body = {
        "v": _VERSION,
        "t": _tag(tenant),
        "q": _query_tag(filters),
        "c": cursor.created_at.isoformat(),
        "i": cursor.item_id,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(raw: str | None, tenant: str, filters: Mapping[str, str | None]) -> Cursor | None:
    """The cursor in ``raw`` (None when absent); 400 unless this API made it for this tenant and
    these filters."""
    if raw is None or raw == "":
        return None
    refused = BadRequest("page_token is not one this listing gave, for this query and this key")
    if len(raw) > MAX_TOKEN_CHARS:
        raise refused
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        cursor = Cursor(datetime.fromisoformat(body["c"]), str(body["i"]))
        tags = (body["v"], body["t"], body["q"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise refused from None
    if (
        tags != (_VERSION, _tag(tenant), _query_tag(filters))
        or cursor.created_at.tzinfo is None
        or not JOB_ID_PATTERN.fullmatch(cursor.item_id)
    ):
        raise refused
    return cursor
