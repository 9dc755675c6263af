"""PromQL lexer/parser: precedence, modifiers, type checks and positioned errors (query/promql/parser.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meshscope.query.promql import PromQLError, parse
from meshscope.query.promql import ast as A
from meshscope.query.promql.ast import format_expr


def test_precedence_and_unary_minus():
    e = parse("-1 ^ 2")  # ^ binds tighter than unary minus
    assert isinstance(e, A.UnaryExpr) and isinstance(e.expr, A.BinaryExpr) and e.expr.op == "^"
    e = parse("1 + 2 * 3")
    assert e.op == "+" and e.rhs.op == "*"
    e = parse("2 ^ 3 ^ 2")  # right-associative
    assert e.op == "^" and isinstance(e.rhs, A.BinaryExpr)
    e = parse("a or b and c")
    assert e.op == "or" and e.rhs.op == "and"


def test_selectors_and_modifiers():
    e = parse('rate(foo{a="b", c=~"d.*"} [5m] offset -1m)')
    ms = e.args[0]
    assert isinstance(ms, A.MatrixSelector) and ms.range_ns == 300 * 10**9
    assert ms.vs.offset_ns == -60 * 10**9
    assert [(m.name, m.op, m.value) for m in ms.vs.matchers] == [("__name__", "=", "foo"), ("a", "=", "b"),
                                                                  ("c", "=~", "d.*")]
    sq = parse("max_over_time(x[10m:1m] @ end())").args[0]
    assert isinstance(sq, A.SubqueryExpr) and sq.step_ns == 60 * 10**9 and sq.at_mod == "end"
    assert parse("x @ 100").at_ns == 100 * 10**9
    assert parse('{"metric.name", "a.b"="c"}').name == "metric.name"


def test_keywords_case_insensitive_and_matching():
    e = parse("sum by (le, job) (rate(x[1m])) OR ON (job) y")
    assert e.op == "or"
    e = parse("a * on (job) group_left (team) b")
    assert e.matching.card == "many-to-one" and e.matching.on and e.matching.include == ["team"]
    e = parse("sum(x) without (instance)")
    assert e.without and e.grouping == ["instance"]
    e = parse("x > bool 1")
    assert e.return_bool


@pytest.mark.parametrize("q, msg", [
    ("1 < 2", "comparisons between scalars must use BOOL modifier"),
    ('{__name__=~".*"}', "vector selector must contain at least one non-empty matcher"),
    ("rate(x)", "expected type range vector in call to function \"rate\", got instant vector"),
    ("sum(x[5m])", "expected type instant vector in aggregation expression, got range vector"),
    ("1 and 2", "set operator \"and\" not allowed in binary scalar expression"),
    ("foo(x)", "unknown function with name \"foo\""),
    ("x + ", "unexpected end of input"),
    ("(x + 1)[5m]", "ranges only allowed for vector selectors"),
    ("x + 1 bool", "unexpected"),
    ("label_join(x)", "expected at least 3 argument(s)"),
])
def test_errors_are_positioned_bad_data(q, msg):
    with pytest.raises(PromQLError) as ei:
        parse(q)
    assert ei.value.error_type == "bad_data"
    assert msg in ei.value.message
    assert ": parse error: " in ei.value.message and ei.value.message[0].isdigit()


def test_error_position():
    with pytest.raises(PromQLError) as ei:
        parse("sum(rate(x[5m])) by (a) ) ")
    assert ei.value.message.startswith("1:25: parse error:")


def test_literals_and_durations():
    assert parse("0x1F").value == 31
    assert parse("-Inf").value == float("-inf")
    assert parse("1h").value == 3600.0  # a duration in an expression is seconds
    assert parse("'a\\tb'").value == "a\tb"
    assert parse("`raw\\n`").value == "raw\\n"


def test_format_roundtrip():
    for q in ['sum by (a) (rate(foo{b="c"}[5m] offset 1m))', "a / on (x) group_left (y) b",
              "histogram_quantile(0.9, x_bucket)", "-x", "x[5m:1m]"]:
        assert format_expr(parse(format_expr(parse(q)))) == format_expr(parse(q))


_ALPHABET = st.sampled_from(list("abcxyz_:{}()[],=!~<>+-*/%^@\"'`#.0159 \n\tmshe") +
                            ["sum", "by", "rate", "offset", "bool", "on", "group_left", "or", "5m", "le",
                             "Inf", "NaN", "0x", "without", "topk", "@ start()", "[1m:]"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_fuzz_parser_never_crashes(text):
    try:
        parse(text)
    except PromQLError as err:
        assert err.error_type in ("bad_data", "unsupported")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_parser_arbitrary_text(text):
    try:
        parse(text)
    except PromQLError:
        pass
