"""Regenerate ``monitoring/api_schema.json``: the part of Google's discovery documents for the
Monitoring API that describes a ``Dashboard`` (v1) and an ``AlertPolicy`` (v3), pinned here so the
offline check (``monitoring/validate.py``) needs no network.

The discovery documents ship inside ``google-api-python-client``'s wheel
(``googleapiclient/discovery_cache/documents/monitoring.v1.json`` and ``monitoring.v3.json``)::

    pip download --no-deps google-api-python-client==2.202.0 -d /tmp/gapi
    unzip -o /tmp/gapi/*.whl 'googleapiclient/discovery_cache/documents/monitoring.*' -d /tmp/gapi
    python -m monitoring.pin_schema /tmp/gapi/googleapiclient/discovery_cache/documents

Each kept schema keeps, per field: its type (``type`` or ``$ref``, ``items`` of arrays, the value
type of maps), ``enum``, ``format`` (``google-duration``, ``int32``, ...), and two flags read from
Google's own wording: ``required`` (the description starts with "Required.") and ``output_only``
(``readOnly``, or "Output only."/"Read-only"). Descriptions are dropped. What a discovery document
does not say (the proto ``oneof`` groups) is written by hand in ``validate.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "api_schema.json"
ROOTS = {"v1": "Dashboard", "v3": "AlertPolicy"}
"""The resource each document is read for; every schema reachable from it is kept."""
_OUTPUT_ONLY_PREFIXES = ("Output only", "Read-only", "A read-only")


def _field(spec: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key in ("type", "$ref", "enum", "format"):
        if key in spec:
            kept[key] = spec[key]
    if "items" in spec:
        kept["items"] = _field(spec["items"])
    if isinstance(spec.get("additionalProperties"), dict):
        kept["map_of"] = _field(spec["additionalProperties"])
    description = spec.get("description", "").lstrip()
    if description.startswith("Required."):
        kept["required"] = True
    if spec.get("readOnly") or description.startswith(_OUTPUT_ONLY_PREFIXES):
        kept["output_only"] = True
    return kept


def _refs(field: dict[str, Any]) -> list[str]:
    found = [field["$ref"]] if "$ref" in field else []
    for inner in ("items", "map_of"):
        if inner in field:
            found += _refs(field[inner])
    return found


def reachable(document: dict[str, Any], root: str) -> dict[str, Any]:
    """Every schema of ``document`` reachable from ``root``, reduced as the module says."""
    schemas = document["schemas"]
    kept: dict[str, Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        properties = schemas[name].get("properties", {})
        kept[name] = {field: _field(spec) for field, spec in sorted(properties.items())}
        for spec in kept[name].values():
            todo += _refs(spec)
    return dict(sorted(kept.items()))


def pin(documents: Path) -> dict[str, Any]:
    pinned: dict[str, Any] = {}
    for version, root in ROOTS.items():
        document = json.loads((documents / f"monitoring.{version}.json").read_text())
        pinned[version] = {
            "source": (
                f"{document['rootUrl']}$discovery/rest?version={version} revision "
                f"{document['revision']}, as shipped in google-api-python-client"
            ),
            "root": root,
            "schemas": reachable(document, root),
        }
    return pinned


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.write_text(json.dumps(pin(Path(args[0])), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
