"""How ``omni`` reads its options' values (click callbacks): ``--input`` as a JSON object, inline
or from a file, and ``--metadata`` as ``KEY=VALUE`` pairs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def json_object(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, Any]:
    """``--input``: a JSON object inline, or ``@file.json`` (``@-``: stdin)."""
    text = value
    if value.startswith("@"):
        try:
            with click.open_file(value[1:], encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object")
    return data


def key_value_pairs(
    ctx: click.Context, param: click.Parameter, value: Sequence[str]
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for pair in value:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        pairs[key] = val
    return pairs
