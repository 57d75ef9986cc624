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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from common.googleapi import translated
from ingress.errors import BadRequest, StoreUnavailable
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


def limit_param(raw: str | None, most: int = MAX_LIMIT, default: int = DEFAULT_LIMIT) -> int:
    """``?limit=N`` (1..``most``), ``default`` when absent; 400 otherwise."""
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}")
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


@dataclass(frozen=True)
class Listing:
    """A listing request's query parameters, checked: ``status``, ``task``, ``created_after``
    (inclusive), ``created_before`` (exclusive), ``limit``, and the cursor its ``page_token``
    holds. ``filters`` is what a page token is bound to besides the tenant."""

    status: str | None
    task: str | None
    created_after: datetime | None
    created_before: datetime | None
    limit: int
    cursor: Cursor | None

    @property
    def filters(self) -> dict[str, str | None]:
        return _filters(self.status, self.task, self.created_after, self.created_before)

    def next_token(self, tenant: str, cursor: Cursor | None) -> str | None:
        """The ``next_page_token`` of a page that ended at ``cursor`` (None: the last page)."""
        return None if cursor is None else encode_token(tenant, self.filters, cursor)


def _filters(
    status: str | None, task: str | None, after: datetime | None, before: datetime | None
) -> dict[str, str | None]:
    return {
        "status": status,
        "task": task,
        "created_after": after.isoformat() if after else None,
        "created_before": before.isoformat() if before else None,
    }


def listing(
    args: Mapping[str, str],
    tenant: str,
    statuses: Sequence[str],
    tasks: Sequence[str],
    max_limit: int = MAX_LIMIT,
    default_limit: int = DEFAULT_LIMIT,
) -> Listing:
    """The listing ``args`` ask for, each parameter checked (400 for any that is not valid), and
    the page token checked against ``tenant`` and the filters (400 for one made for another)."""
    status, task = args.get("status") or None, args.get("task") or None
    if status is not None and status not in statuses:
        raise BadRequest(f"status must be one of {', '.join(statuses)}")
    if task is not None and task not in tasks:
        raise BadRequest(f"task must be one of {', '.join(tasks)}")
    after = time_param("created_after", args.get("created_after"))
    before = time_param("created_before", args.get("created_before"))
    limit = limit_param(args.get("limit"), max_limit, default_limit)
    cursor = decode_token(args.get("page_token"), tenant, _filters(status, task, after, before))
    return Listing(status, task, after, before, limit, cursor)


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


def newest_first(
    collection: Any,
    tenant: str,
    *,
    limit: int,
    fields: Sequence[str] | None,
    equal: Mapping[str, str | None],
    created_after: datetime | None,
    created_before: datetime | None,
    after: Cursor | None,
    retry: Any,
    timeout_s: float,
) -> tuple[list[tuple[str, dict[str, Any]]], Cursor | None]:
    """A page of ``tenant``'s documents in ``collection`` (their ``fields`` and ``created_at``;
    every field when None), newest first (ties by id), with each ``equal`` field that is not None
    matching, and the cursor of the next page (None on the last). One query of ``limit + 1``
    documents, always on ``tenant`` first; its composite indexes are in firestore.indexes.json."""
    query = collection if fields is None else collection.select([*fields, "created_at"])
    query = query.where(filter=FieldFilter("tenant", "==", tenant))
    for field, value in equal.items():
        if value is not None:
            query = query.where(filter=FieldFilter(field, "==", value))
    if created_after is not None:
        query = query.where(filter=FieldFilter("created_at", ">=", created_after))
    if created_before is not None:
        query = query.where(filter=FieldFilter("created_at", "<", created_before))
    query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
        FieldPath.document_id(), direction=firestore.Query.DESCENDING
    )
    if after is not None:
        query = query.start_after(
            {"created_at": after.created_at, "__name__": collection.document(after.item_id)}
        )
    with translated(StoreUnavailable, "listing"):
        snapshots = list(query.limit(limit + 1).stream(retry=retry, timeout=timeout_s))
    items = [(s.id, s.to_dict() or {}) for s in snapshots[:limit]]
    more = len(snapshots) > limit
    return items, Cursor(items[-1][1]["created_at"], items[-1][0]) if more else None
