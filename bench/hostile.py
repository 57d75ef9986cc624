"""Hostile bodies: how long the ingress's JSON parsing takes on bodies built to make it
super-linear, at 64 KiB and at 1 MiB (a job body's limit), against the regex pre-scan it replaced
(measured in the same run, each call cut off after ``--cap`` seconds).

In process, no server: ``ingress.http.parsed_json`` (what ``POST /v1/jobs`` and each NDJSON
line go through) on each body, best of ``--repeat``; the baseline is the old ``nesting_depth``
scan (``_OLD_STRUCTURE`` below, kept here only as the baseline) followed by the same parse. The
same bodies over HTTP, against gunicorn, are in ``tests/integration/test_hostile.py``.

    .venv/bin/python -m bench.hostile [--cap 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from bench.common import print_table, save
from ingress.errors import BadRequest
from ingress.http import parsed_json

_OLD_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
"""The pre-scan this bench compares with: quadratic on an unterminated string of escaped quotes."""
SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1024 * 1024 - 16}

BODIES: dict[str, Callable[[int], bytes]] = {
    "escaped quotes, unterminated": lambda n: b'"' + b'\\"' * ((n - 1) // 2),
    "[ repeated": lambda n: b"[" * n,
    "tiny objects, unterminated": lambda n: b"[" + b"{}," * ((n - 1) // 3),
    "backslashes, unterminated": lambda n: b'"' + b"\\" * (n - 1),
    "deep array in an object": lambda n: b'{"texts": ' + b"[" * (n - 10),
}


class _CutOff(Exception):
    pass


def _old_parse(raw: bytes) -> Any:
    depth = deepest = 0
    for match in _OLD_STRUCTURE.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    if deepest > 32:
        raise BadRequest("too deep")
    return parsed_json(raw)


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _CutOff


def seconds(parse: Callable[[bytes], Any], body: bytes, repeat: int, cap_s: int) -> float | None:
    """Best of ``repeat`` calls; None when one ran past ``cap_s`` (the regex checks signals)."""
    best = float("inf")
    for _ in range(repeat):
        signal.alarm(cap_s)
        started = time.perf_counter()
        try:
            parse(body)
        except BadRequest:
            pass
        except _CutOff:
            return None
        finally:
            signal.alarm(0)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=30, help="seconds before a call is cut off")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)

    def ms(value: float | None) -> str:
        return f"> {args.cap * 1000:,}" if value is None else f"{value * 1000:,.1f}"

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for name, build in BODIES.items():
        timings: dict[str, dict[str, float | None]] = {}
        for label, size in SIZES.items():
            body = build(size)
            timings[label] = {
                "old": seconds(_old_parse, body, 1, args.cap),
                "new": seconds(parsed_json, body, args.repeat, args.cap),
            }
        small, large = timings["64 KiB"], timings["1 MiB"]
        growth = (large["new"] or 0) / max(small["new"] or 0, 1e-6)
        rows.append(
            [
                name,
                ms(small["old"]),
                ms(large["old"]),
                ms(small["new"]),
                ms(large["new"]),
                f"{growth:.1f}",
            ]
        )
        results.append({"body": name, **timings})
    print_table(
        "JSON parsing of hostile bodies (ms, in process; old = regex pre-scan + parse)",
        ["body", "old 64 KiB", "old 1 MiB", "new 64 KiB", "new 1 MiB", "new 1 MiB ÷ 64 KiB"],
        rows,
    )
    save("hostile", {"cap_s": args.cap, "results": results})


if __name__ == "__main__":
    main()
