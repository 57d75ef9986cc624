"""Just enough of PromQL to list what a query reads: its selectors (metric name and label
matchers), the labels it groups by, and the functions it calls. Not an evaluator: the Monitoring
API parses the query itself; this finds the names that ``validate.py`` checks against the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FUNCTIONS = frozenset(
    """abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min
    count count_over_time count_values day_of_month day_of_week day_of_year days_in_month delta
    deriv exp floor group histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum hour idelta increase irate label_join
    label_replace last_over_time limitk limit_ratio ln log10 log2 mad_over_time max
    max_over_time min min_over_time minute month predict_linear present_over_time quantile
    quantile_over_time rate resets round scalar sgn sort sort_by_label sort_by_label_desc
    sort_desc sqrt stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time time
    timestamp topk vector year""".split()  # noqa: SIM905
)
"""Prometheus's functions and aggregation operators (prometheus.io/docs/prometheus/latest/
querying/functions/ and operators/)."""
AGGREGATIONS = frozenset({"sum", "avg", "count", "min", "max", "stddev", "stdvar", "group"}) | {
    *("topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio")
}
"""Operators that may take their ``by (...)``/``without (...)`` before the parenthesis."""
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """The query could not be read."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    """``name{matchers}``; ``name`` is empty for a selector that gives none."""

    name: str
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels named in by/without/on/ignoring
    functions: set[str] = field(default_factory=set)
    unknown_functions: set[str] = field(default_factory=set)


def _tokens(query: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None:
            raise PromQLError(f"cannot read {query[position : position + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
        position = match.end()
    return found


def _unquote(text: str) -> str:
    return text[1:-1].encode().decode("unicode_escape") if text[0] != "`" else text[1:-1]


def _matchers(tokens: list[tuple[str, str]], at: int) -> tuple[list[Matcher], int]:
    """Read ``{label op "value", ...}`` from ``tokens[at]`` (the ``{``); return the index after."""
    matchers: list[Matcher] = []
    at += 1
    while tokens[at][1] != "}":
        kind, text = tokens[at]
        if kind == "string" and tokens[at + 1][1] in (",", "}"):  # {"utf8.metric.name"}
            matchers.append(Matcher("__name__", "=", _unquote(text)))
            at += 1
        else:
            label = _unquote(text) if kind == "string" else text
            op_kind, op = tokens[at + 1]
            value_kind, value = tokens[at + 2]
            if op not in ("=", "!=", "=~", "!~") or value_kind != "string":
                raise PromQLError(f"bad label matcher after {label!r}")
            matchers.append(Matcher(label, op, _unquote(value)))
            at += 3
        if tokens[at][1] == ",":
            at += 1
    return matchers, at + 1


def parse(query: str) -> Query:
    """The selectors, grouping labels and functions of ``query``."""
    tokens = _tokens(query) + [("end", "")]
    parsed = Query()
    at = 0
    try:
        while tokens[at][0] != "end":
            kind, text = tokens[at]
            following = tokens[at + 1][1]
            if kind == "ident" and text in GROUPING and following == "(":
                at += 2
                while tokens[at][1] != ")":
                    if tokens[at][0] in ("ident", "string"):
                        parsed.grouping.add(tokens[at][1].strip("\"'"))
                    at += 1
                at += 1
            elif kind == "ident" and text in KEYWORDS:
                at += 1
            elif kind == "ident" and (
                following == "(" or (text in AGGREGATIONS and following in ("by", "without"))
            ):
                (parsed.functions if text in FUNCTIONS else parsed.unknown_functions).add(text)
                at += 1
            elif kind == "ident" or text == "{":
                selector = Selector(text if kind == "ident" else "")
                at += 1 if kind == "ident" else 0
                if tokens[at][1] == "{":
                    selector.matchers, at = _matchers(tokens, at)
                named = [m.value for m in selector.matchers if m.label == "__name__"]
                if not selector.name and named:
                    selector.name = named[0]
                parsed.selectors.append(selector)
            else:
                at += 1
    except IndexError:
        raise PromQLError("the query ends inside a selector or a grouping") from None
    return parsed
