"""``firestore.indexes.json`` as Firestore Admin API requests (``firestore_admin_requests``),
which emulators/provision.py sends to a real project and ``python -m deploy --dry-run`` prints.

On a real project provisioning applies ``firestore.indexes.json``: the composite indexes the
queries need, the TTL policies on ``expire_at``, and the single-field index exemptions of its
``fieldOverrides`` (``"indexes": []``): every TTL field (a timestamp that only grows is a write
hotspot when indexed, Firestore's TTL best practice) and the large fields no query reads (a job's
``input``, ``result``, ``events``, ``error``; a chunk's ``inputs``, ``results``, ``errors``,
``items``, ...), whose index entries cost write latency and storage, and for a chunk would pass
Firestore's 40,000 index entries a document. Chunks have a TTL policy of their own: Firestore's TTL
does not delete a batch's subcollections with it. The Firestore emulator has none of these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INDEXES_FILE = Path(__file__).resolve().parent.parent / "firestore.indexes.json"


def firestore_admin_requests(
    project: str, spec: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The Firestore Admin API calls that apply ``firestore.indexes.json`` to ``project``:
    ``("create_index", request)`` per composite index; per field override, ``("update_field",
    request)`` for its TTL policy (``"ttl": true``) and another for its single-field indexes
    (``"indexes": []`` exempts the field: no index at all). One change per request: the Admin API
    runs each as its own long-running operation."""
    parent = f"projects/{project}/databases/(default)/collectionGroups"
    calls: list[tuple[str, dict[str, Any]]] = []
    for index in spec.get("indexes", []):
        fields = [{"field_path": f["fieldPath"], "order": f["order"]} for f in index["fields"]]
        calls.append(
            (
                "create_index",
                {
                    "parent": f"{parent}/{index['collectionGroup']}",
                    "index": {"query_scope": index["queryScope"], "fields": fields},
                },
            )
        )
    for override in spec.get("fieldOverrides", []):
        name = f"{parent}/{override['collectionGroup']}/fields/{override['fieldPath']}"
        if override.get("ttl"):
            calls.append(
                (
                    "update_field",
                    {
                        "field": {"name": name, "ttl_config": {}},
                        "update_mask": {"paths": ["ttl_config"]},
                    },
                )
            )
        if "indexes" in override:
            indexes = [_single_field_index(entry) for entry in override["indexes"]]
            calls.append(
                (
                    "update_field",
                    {
                        "field": {"name": name, "index_config": {"indexes": indexes}},
                        "update_mask": {"paths": ["index_config"]},
                    },
                )
            )
    return calls


def _single_field_index(entry: dict[str, Any]) -> dict[str, Any]:
    """A fieldOverrides index entry (Firebase CLI's format) as an Admin API index."""
    index: dict[str, Any] = {"query_scope": entry.get("queryScope", "COLLECTION")}
    if "order" in entry:
        index["fields"] = [{"field_path": "*", "order": entry["order"]}]
    else:
        index["fields"] = [{"field_path": "*", "array_config": entry["arrayConfig"]}]
    return index


def firestore_spec() -> dict[str, Any]:
    """``firestore.indexes.json``, parsed."""
    spec: dict[str, Any] = json.loads(INDEXES_FILE.read_text())
    return spec
