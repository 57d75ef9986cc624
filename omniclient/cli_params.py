"""How ``omni`` reads its options' values (click callbacks): ``--input`` as a JSON object, inline
or from a file, and ``--metadata`` as ``KEY=VALUE`` pairs; the listing commands' shared filters
and output.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
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


def listing_options(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The filters ``omni jobs`` and ``omni batches`` share (those of ``GET /v1/<kind>``)."""
    options = (
        click.option("--status", help=f"Only {kind} in this status (running, failed, ...)."),
        click.option("--task", "-t", help=f"Only {kind} of this task."),
        click.option(
            "--after", "created_after", metavar="TIME", help="Created at or after (RFC 3339)."
        ),
        click.option(
            "--before", "created_before", metavar="TIME", help="Created before (RFC 3339)."
        ),
        click.option(
            "--limit", "-n", type=click.IntRange(min=1), help=f"Stop after this many {kind}."
        ),
    )

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def echo_lines(items: Iterator[Any], limit: int | None) -> None:
    for item in itertools.islice(items, limit):
        click.echo(json.dumps(item, separators=(",", ":")))
