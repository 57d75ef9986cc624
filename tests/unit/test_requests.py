"""ingress/http.py: parsing a JSON body in one linear pass, with a 400 for each kind of bad
body (not UTF-8, malformed, too deep) and no recursion or backtracking over the input."""

from __future__ import annotations

import json
import time

import pytest

from ingress.errors import BadRequest
from ingress.http import (
    MAX_JSON_DEPTH,
    has_lone_surrogate,
    may_hold_surrogate,
    nesting_depth,
    parsed_json,
)


def test_nesting_depth_counts_containers_of_a_parsed_value() -> None:
    assert nesting_depth(json.loads('{"a": [1, {"b": "x[[[[{"}]}')) == 3
    assert nesting_depth(json.loads('"\\"[[" ')) == 0
    assert nesting_depth({}) == 1 and nesting_depth(7) == 0 and nesting_depth(None) == 0
    deep: list[object] = []
    node = deep
    for _ in range(5000):  # deeper than Python's recursion limit: found without recursion
        child: list[object] = []
        node.append(child)
        node = child
    assert nesting_depth(deep) == 5001


def test_depth_at_the_limit_parses_and_one_more_is_refused() -> None:
    assert parsed_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(BadRequest, match="nested deeper than"):
        parsed_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 1_000_000, "nested deeper than"),  # the parser's RecursionError, as a 400
        (b'{"a": [1, 2', "malformed JSON"),
        (b'"' + b'\\"' * 50_000, "malformed JSON: Unterminated string"),
        (b'"' + b"\\" * 100_001, "malformed JSON"),
        (b"[" + b"{}," * 100_000, "malformed JSON"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
    ],
)
def test_each_bad_body_gets_the_400_that_names_it(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parsed_json(body)


def test_unterminated_escaped_quotes_parse_in_linear_time() -> None:
    """The old pre-scan (a regex skipping strings) took 0.3 s at 8 KiB and 5.7 s at 32 KiB on this
    body; a linear parse grows with the body. Compared as a ratio of two sizes, not a limit."""

    def seconds(n: int) -> float:
        body = b'"' + b'\\"' * n
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(BadRequest):
                parsed_json(body)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = seconds(32 * 1024), seconds(512 * 1024)  # 16× the size
    assert large < 40 * max(small, 1e-4), (small, large)


def test_a_surrogate_escape_is_spotted_in_the_text_before_walking_the_value() -> None:
    assert may_hold_surrogate(b'"\\ud800"') and may_hold_surrogate(b'"\\uDE00"')
    assert not may_hold_surrogate(b'"\\u0041 plain"')
    assert has_lone_surrogate(json.loads(b'{"a": ["\\ud800"]}'))
    assert not has_lone_surrogate(json.loads(b'{"a": ["\\ud83d\\ude00"]}'))  # a pair is fine
