"""Tests for the LogQL lexer/parser in meshscope.query.logql."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from meshscope.query.logql import (LogQLSyntaxError, ast as A, parse, parse_log_selector, parse_matchers,
                                   parse_sample_expr, tokenize)
from meshscope.query.conformance import parse_by_mode
from meshscope.query.logql.lexer import is_function_lookahead, parse_prom_duration

CORPUS = Path(__file__).parents[1] / ".." / "shared" / "conformance" / "logql"
# measured valid-case pass rate was 376/376 = 100%; floor = rounded down to 5%
VALID_PASS_FLOOR = 1.00


# ---------------------------------------------------------------- selectors
def test_selector_all_ops():
    e = parse('{a="1", b!="2", c=~"3.+", d!~"4"}')
    assert isinstance(e, A.LogQuery) and not e.stages
    assert [(m.name, m.op, m.value) for m in e.selector.matchers] == [
        ("a", "=", "1"), ("b", "!=", "2"), ("c", "=~", "3.+"), ("d", "!~", "4")]


def test_raw_and_escaped_strings():
    e = parse('{a=`x\\y`, b="q\\"t\\n"}')
    assert e.selector.matchers[0].value == "x\\y"
    assert e.selector.matchers[1].value == 'q"t\n'


def test_function_names_usable_as_labels():
    e = parse('{rate="a", variants="b", of="c"} | bytes > 1B | duration > 1s | ip="x"')
    assert [m.name for m in e.selector.matchers] == ["rate", "variants", "of"]


def test_keyword_label_is_error():
    with pytest.raises(LogQLSyntaxError):
        parse('{json="x"}')


def test_empty_compatible_selector_rejected():
    for q in ('{foo!="bar"}', '{app=~".*"}', '{a=""}', "{}"):
        with pytest.raises(LogQLSyntaxError, match="empty-compatible"):
            parse(q)


# ---------------------------------------------------------------- line filters
def test_line_filters_and_or_chains():
    e = parse('{a="b"} |= "x" or "y" != "z" |~ "r" !~ "s" |> "<_> p" !> "q <_>" |= ip("10.0.0.0/8") or "t"')
    ops = [(s.op, [(t.value, t.ip) for t in s.terms]) for s in e.stages]
    assert ops == [("|=", [("x", False), ("y", False)]), ("!=", [("z", False)]), ("|~", [("r", False)]),
                   ("!~", [("s", False)]), ("|>", [("<_> p", False)]), ("!>", [("q <_>", False)]),
                   ("|=", [("10.0.0.0/8", True), ("t", False)])]


def test_negative_or_chain_renders_as_separate_filters():
    assert str(parse('{app="foo"} != "foo" or "bar"')) == '{app="foo"} != "foo" != "bar"'


# ---------------------------------------------------------------- parser stages
def test_parser_stages():
    e = parse('{a="b"} | json | json x="a.b", y | logfmt --strict --keep-empty z, w="k" '
              '| regexp "(?P<n>\\\\w+)" | pattern "<ip> <_>" | unpack')
    s = e.stages
    assert isinstance(s[0], A.JSONParser) and s[0].params == []
    assert s[1].params == [A.Extraction("x", "a.b"), A.Extraction("y")]
    assert isinstance(s[2], A.LogfmtParser) and s[2].strict and s[2].keep_empty
    assert s[2].params == [A.Extraction("z"), A.Extraction("w", "k")]
    assert s[3] == A.RegexpParser("(?P<n>\\w+)")
    assert s[4] == A.PatternParser("<ip> <_>")
    assert isinstance(s[5], A.UnpackParser)


def test_format_drop_keep_decolorize():
    e = parse('{a="b"} | line_format "{{.a}} x" | label_format dst=src, t="{{.b}}" '
              '| drop a, b="v", c=~"re" | keep d | decolorize')
    lf, lbf, dr, kp, dc = e.stages
    assert lf == A.LineFormat("{{.a}} x")
    assert lbf.formats == [A.LabelFmt("dst", "src", True), A.LabelFmt("t", "{{.b}}", False)]
    assert [n.name for n in dr.labels] == ["a", "b", "c"] and dr.labels[2].matcher.op == "=~"
    assert isinstance(kp, A.Keep) and kp.labels[0].matcher is None
    assert isinstance(dc, A.Decolorize)


# ---------------------------------------------------------------- label filters
def test_label_filter_kinds():
    e = parse('{a="b"} | logfmt | s="x" | n>=-1.5 | d<250ms | b>10KiB | i=ip("1.2.3.4") | r=~"a.*"')
    kinds = [type(s.filter) for s in e.stages[1:]]
    assert kinds == [A.StringLabelFilter, A.NumberLabelFilter, A.DurationLabelFilter, A.BytesLabelFilter,
                     A.IPLabelFilter, A.StringLabelFilter]
    assert e.stages[2].filter.value == -1.5
    assert e.stages[3].filter.value_ns == 250_000_000
    assert e.stages[4].filter.value == 10 * 1024


def test_label_filter_precedence():
    # foo AND (buzz AND (blop OR fuzz))
    f = parse('{a="b"} | foo="bar" buzz!="blip", blop=~"boop" or fuzz==5').stages[0].filter
    assert f.op == "and" and f.left.matcher.name == "foo"
    assert f.right.op == "and" and f.right.left.matcher.name == "buzz"
    assert f.right.right.op == "or"
    # `and` binds tighter than `or`
    g = parse('{a="b"} | x="1" or y="2" and z="3"').stages[0].filter
    assert g.op == "or" and g.right.op == "and"
    h = parse('{a="b"} | (x="1" or y="2") and z="3"').stages[0].filter
    assert h.op == "and" and h.left.op == "or"


def test_ip_label_filter_only_eq():
    with pytest.raises(LogQLSyntaxError, match="unexpected ip"):
        parse('{ foo = "bar" }|logfmt|addr>=ip("1.2.3.4")')


def test_hex_literal_rejected():
    with pytest.raises(LogQLSyntaxError, match="unable to parse literal as a float"):
        parse('{app="foo"} | logfmt | status_code > 0x10')


# ---------------------------------------------------------------- range aggregations
@pytest.mark.parametrize("q", [
    'count_over_time({a="b"}[5m])', 'rate({a="b"} |= "x" [1h])', 'bytes_over_time({a="b"}[5m] |= "x")',
    'bytes_rate(({a="b"} | json)[5m])', 'absent_over_time({a="b"}[1d])',
    'sum_over_time({a="b"} | unwrap x [5m])', 'avg_over_time({a="b"} | unwrap duration(x) [5m]) by (a)',
    'max_over_time({a="b"} | unwrap bytes(x) | __error__="" [5m]) without (a)',
    'quantile_over_time(0.99, {a="b"} | json | unwrap x [5m]) by (a)',
    'first_over_time({a="b"} | unwrap x [5m])', 'last_over_time({a="b"} | unwrap x [5m])',
    'stddev_over_time({a="b"} | unwrap x [5m])', 'stdvar_over_time({a="b"} | unwrap x [5m])',
    'min_over_time({a="b"} | unwrap duration_seconds(x) [5m])', 'rate_counter({a="b"} | unwrap x [5m])',
])
def test_range_aggregations(q):
    e = parse(q)
    assert isinstance(e, A.RangeAggregation)
    assert parse(str(e)) == e  # round trip


def test_range_and_offset():
    e = parse('count_over_time({a="b"}[1h30m] offset -5m)')
    assert e.range.range_ns == 5400 * 10**9 and e.range.offset_ns == -300 * 10**9
    assert str(e) == 'count_over_time({a="b"}[1h30m] offset -5m)'


@pytest.mark.parametrize("q,msg", [
    ('count_over_time({a="b"} | unwrap x [5m])', "with unwrap"),
    ('sum_over_time({a="b"}[5m])', "without unwrap"),
    ('rate({a="b"}[5m]) by (a)', "grouping not allowed"),
    ('quantile_over_time({a="b"} | unwrap x [5m])', "parameter required"),
    ('sum_over_time(50, {a="b"} | unwrap x [5m])', "parameter 50 not supported"),
    ('rate({ foo = "bar" }[5minutes])', 'unknown unit "minutes"'),
    ('rate({ foo = "bar" }[5)', "missing closing ']'"),
])
def test_range_aggregation_errors(q, msg):
    with pytest.raises(LogQLSyntaxError, match=msg):
        parse(q)


# ---------------------------------------------------------------- vector aggregations
@pytest.mark.parametrize("op", ["sum", "avg", "min", "max", "count", "stddev", "stdvar"])
def test_vector_aggregations_grouping_either_side(op):
    a = parse(f'{op} by (x) (rate({{a="b"}}[5m]))')
    b = parse(f'{op}(rate({{a="b"}}[5m])) by (x)')
    assert a == b and a.grouping == A.Grouping(False, ["x"])
    assert parse(f'{op} without (y) (rate({{a="b"}}[5m]))').grouping.without


def test_topk_sort():
    e = parse('topk(3, sum(rate({a="b"}[5m])) by (x))')
    assert e.op == "topk" and e.param == 3
    assert parse('bottomk by (x) (2, rate({a="b"}[5m]))').param == 2
    assert parse('sort(rate({a="b"}[5m]))').op == "sort"
    assert parse('sort_desc(rate({a="b"}[5m]))').op == "sort_desc"


@pytest.mark.parametrize("q,msg", [
    ('topk(count_over_time({ foo = "bar" }[5h]))', "parameter required"),
    ('bottomk(1.2,count_over_time({ foo = "bar" }[5h]))', "invalid parameter"),
    ('topk(0, rate({a="b"}[5m]))', "greater than 0"),
    ('sum(3 ,count_over_time({ foo = "bar" }[5h]))', "unsupported parameter"),
    ('sort(rate({a="b"}[5m])) by (x)', "doesn't allow grouping"),
    ('min({ foo = "bar" }[5m])', "unexpected RANGE"),
    ('sum by (a) (rate({a="b"}[5m])) by (a)', "syntax error"),
])
def test_vector_aggregation_errors(q, msg):
    with pytest.raises(LogQLSyntaxError, match=msg):
        parse(q)


# ---------------------------------------------------------------- binary operators
def test_binary_precedence():
    r = 'rate({a="b"}[5m])'
    e = parse(f"{r} + {r} * {r}")
    assert e.op == "+" and e.right.op == "*"
    e = parse(f"{r} or {r} and {r} unless {r}")
    assert e.op == "or" and e.right.op == "unless" and e.right.left.op == "and"
    e = parse(f"{r} > bool {r} + {r}")
    assert e.op == ">" and e.return_bool and e.right.op == "+"
    e = parse(f"{r} ^ {r} ^ {r}")
    assert e.op == "^" and e.right.op == "^"  # right associative
    e = parse(f"{r} / {r} / {r}")
    assert e.op == "/" and e.left.op == "/"  # left associative
    e = parse(f"{r} ^ {r} / {r}")
    assert e.op == "/" and e.left.op == "^"


def test_vector_matching():
    r = 'rate({a="b"}[5m])'
    e = parse(f"{r} * on(a, b) group_left(c) {r}")
    assert e.matching == A.VectorMatching(True, ["a", "b"], "group_left", ["c"])
    e = parse(f"{r} == bool ignoring(a) group_right {r}")
    assert e.return_bool and e.matching == A.VectorMatching(False, ["a"], "group_right", [])


def test_literal_folding():
    assert parse("1 + 1 - -1") == A.Literal(3)
    assert parse("1 > 1 > 1") == A.Literal(0)
    assert parse("2 ^ 3 ^ 2") == A.Literal(512)
    assert math.isnan(parse("1 / 0").value)
    e = parse('sum(rate({a="b"}[5m])) + 1 / 2')
    assert e.right == A.Literal(0.5)


@pytest.mark.parametrize("q,msg", [
    ('{foo="bar"} + {foo="bar"}', "left leg of binary operation"),
    ('sum(rate({a="b"}[5m])) or 1', "unexpected literal for right leg"),
    ('bool 1 > 1', "unexpected bool"),
])
def test_binary_errors(q, msg):
    with pytest.raises(LogQLSyntaxError, match=msg):
        parse(q)


# ---------------------------------------------------------------- misc
def test_label_replace_and_vector():
    e = parse('label_replace(rate({a="b"}[5m]), "dst", "$1", "src", "(.*)")')
    assert isinstance(e, A.LabelReplace) and e.regex == "(.*)"
    assert parse("vector(1)") == A.VectorExpr(1.0)
    assert parse("vector(1) + vector(1)").op == "+"
    with pytest.raises(LogQLSyntaxError, match="invalid regex"):
        parse('label_replace(rate({a="b"}[5m]), "d", "$1", "s", "(")')


def test_case_insensitive_keywords_and_comments():
    e = parse('SUM(Count_Over_Time({foo="bar"}[5m])) BY (foo) # trailing comment\n')
    assert e.op == "sum" and e.grouping.labels == ["foo"]
    assert parse('{app="foo"} # |= "bar" | json') == parse('{app="foo"}')
    assert parse('{foo="#"}').selector.matchers[0].value == "#"


def test_modes():
    assert isinstance(parse_sample_expr("vector(1)"), A.VectorExpr)
    with pytest.raises(LogQLSyntaxError):
        parse_sample_expr('{a="b"}')
    with pytest.raises(LogQLSyntaxError):
        parse_log_selector("vector(1)")
    assert [m.name for m in parse_matchers('{a="b", c=~".+"}')] == ["a", "c"]
    with pytest.raises(LogQLSyntaxError):
        parse_matchers('{a="b"} |= "x"')


def test_lexer_units():
    kinds = [t.kind for t in tokenize("250ms 1h15m30.5s -5m 42KiB 20B 1.5 .5 1e3 [5m] --strict")]
    assert kinds == ["DURATION", "DURATION", "DURATION", "BYTES", "BYTES", "NUMBER", "NUMBER", "NUMBER",
                     "RANGE", "FLAG", "EOF"]
    assert is_function_lookahead(" by (") and not is_function_lookahead("byfoo")
    assert parse_prom_duration("1d") == 86400 * 10**9


# ---------------------------------------------------------------- error positions
@pytest.mark.parametrize("q,line,col,msg", [
    ('unk({ foo = "bar" }[5m])', 1, 1, "syntax error: unexpected IDENTIFIER"),
    ('count without (rate({namespace="apps"}[15s]))', 1, 16, "unexpected RATE, expecting IDENTIFIER or )"),
    ('{foo="bar"', 1, 11, "unexpected $end, expecting } or ,"),
    ('{foo="bar"} |~', 1, 15, "unexpected $end, expecting STRING or ip"),
    ('{foo="bar"}\n  | json\n  | x >', 3, 8, "syntax error"),
    ('{foo="bar}', 1, 6, "literal not terminated"),
])
def test_error_positions(q, line, col, msg):
    with pytest.raises(LogQLSyntaxError) as ei:
        parse(q)
    assert str(ei.value).startswith(f"parse error at line {line}, col {col}: ")
    assert msg in str(ei.value)


# ---------------------------------------------------------------- conformance corpus
def test_parse_corpus():
    path = CORPUS / "parse_cases.jsonl"
    if not path.exists():
        pytest.skip(f"LogQL conformance corpus not found at {path}")
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    valid_ok = valid = canon_ok = canon = 0
    missed_errors, failures = [], []
    for d in cases:
        if not d["ok"]:
            try:
                parse_by_mode(d)
            except LogQLSyntaxError as e:
                if d.get("error_line"):
                    assert (e.line, e.col) == (d["error_line"], d["error_col"]), d["query"]
            else:
                missed_errors.append(d["query"])
            continue
        valid += 1
        try:
            e = parse_by_mode(d)
        except LogQLSyntaxError as err:
            failures.append((d["query"], str(err)))
            continue
        valid_ok += 1
        if "canonical" in d:
            canon += 1
            canon_ok += str(e) == d["canonical"]
    rate = valid_ok / valid
    print(f"\nLogQL corpus: valid {valid_ok}/{valid} = {rate:.1%}; canonical String() {canon_ok}/{canon}; "
          f"error cases {len(cases) - valid - len(missed_errors)}/{len(cases) - valid} rejected")
    assert not missed_errors, missed_errors
    assert rate >= VALID_PASS_FLOOR, failures[:10]


def test_lex_corpus():
    path = CORPUS / "lex_cases.jsonl"
    if not path.exists():
        pytest.skip(f"LogQL conformance corpus not found at {path}")
    names = {"{": "OPEN_BRACE", "}": "CLOSE_BRACE", "(": "OPEN_PARENTHESIS", ")": "CLOSE_PARENTHESIS",
             ",": "COMMA", "=": "EQ", "!=": "NEQ", "=~": "RE", "!~": "NRE", "|=": "PIPE_EXACT",
             "|~": "PIPE_MATCH", "|>": "PIPE_PATTERN", "!>": "NPA", "|": "PIPE", ">": "GT", ">=": "GTE",
             "<": "LT", "<=": "LTE", "==": "CMP_EQ", "+": "ADD", "-": "SUB", "*": "MUL", "/": "DIV", "%": "MOD",
             "^": "POW"}

    def name(t):
        if t.kind == "OP":
            return names[t.value]
        if t.kind in ("FUNC", "KEYWORD"):
            return t.value.upper()
        return {"IDENT": "IDENTIFIER", "FLAG": "FUNCTION_FLAG"}.get(t.kind, t.kind)

    for line in path.read_text().splitlines():
        d = json.loads(line)
        if "input" in d:  # Loki's lexer stops at an unterminated string: compare up to there
            assert [name(t) for t in tokenize(d["input"], lenient=True)[:-1]] == d["tokens"], d["input"]
        elif "next" in d:
            assert is_function_lookahead(d["next"]) == d["is_function"], d["next"]
        else:
            assert parse_prom_duration(d["duration"]) == d["nanoseconds"], d["duration"]
