"""LogQL parser stages, ``|>`` pattern filters, ``ip()`` matching and Go-compatible value conversions.

The conformance corpus (shared/conformance/logql) is the acceptance test; the rest pins Go error texts and the
agreement between the fast paths and the step-by-step emulations of Loki's decoders.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscope.query.logql import ast as A
from meshscope.query.logql import parsers as P
from meshscope.query.logql.ipmatch import IPMatcher
from meshscope.query.logql.labels import LabelsBuilder
from meshscope.query.logql.parser import parse_log_selector
from meshscope.query.logql.re2util import compile_re2
from meshscope.query.logql.values import format_float, parse_bytes, parse_float, parse_go_duration

CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "logql"
PIPELINE_CASES = CORPUS_DIR / "pipeline_cases.jsonl"


def _load_cases() -> list[dict]:
    if not PIPELINE_CASES.exists():
        return []
    return [json.loads(line) for line in PIPELINE_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


CASES = _load_cases()
needs_corpus = pytest.mark.skipif(not CASES, reason=f"conformance corpus not found at {CORPUS_DIR}")


class _PatternFilterStage:
    """``|>``/``!>`` with ``or`` terms, as the pipeline builds it (any term matches / no term matches)."""

    def __init__(self, node: A.LineFilter):
        self.filters = [P.PatternLineFilter(t.value) for t in node.terms]
        self.negative = node.op == "!>"

    def process(self, ts, line, lb):
        hit = any(f.matches(line) for f in self.filters)
        return line if hit != self.negative else None


def _build(stage):
    """Our stage for an AST node, or None when the node belongs to someone else's code."""
    if isinstance(stage, A.JSONParser):
        return P.JSONStage(stage.params)
    if isinstance(stage, A.LogfmtParser):
        return P.LogfmtStage(stage.strict, stage.keep_empty, stage.params)
    if isinstance(stage, A.RegexpParser):
        return P.RegexpStage(stage.regex)
    if isinstance(stage, A.PatternParser):
        return P.PatternStage(stage.pattern)
    if isinstance(stage, A.UnpackParser):
        return P.UnpackStage()
    if isinstance(stage, A.LineFilter) and stage.op in ("|>", "!>"):
        return _PatternFilterStage(stage)
    return None


def _own_cases() -> list[tuple[str, dict, list]]:
    out = []
    for i, case in enumerate(CASES):
        try:
            query = parse_log_selector('{x="y"} ' + case["pipeline"])
        except Exception:  # noqa: BLE001 - not ours to judge here (parser tests cover it)
            continue
        if query.stages and all(_build(s) is not None for s in query.stages):
            out.append((f"{i}:{case['source'].split('#')[-1]}", case, query.stages))
    return out


OWN_CASES = _own_cases()


def _run(case: dict, stages) -> tuple[bool, str | None, dict]:
    lb = LabelsBuilder(case["labels"], case.get("structured_metadata"))
    line = case["line"]
    for node in stages:
        line = _build(node).process(case.get("ts", 0), line, lb)
        if line is None:
            return False, None, {}
    return True, line, lb.labels()


def _check(case: dict, stages) -> list[str]:
    keep, line, labels = _run(case, stages)
    problems = []
    if keep != case["keep"]:
        return [f"keep: got {keep}, want {case['keep']}"]
    if not keep:
        return []
    if line != case["out_line"]:
        problems.append(f"line: got {line!r}, want {case['out_line']!r}")
    want = case["out_labels"]
    loose = set(case.get("loose_keys", []))
    if set(labels) != set(want):
        problems.append(f"label names: got {sorted(labels)}, want {sorted(want)}")
    for k, v in want.items():
        if k not in loose and labels.get(k, v) != v:
            problems.append(f"label {k}: got {labels.get(k)!r}, want {v!r}")
    return problems


STRICT_CASES = [c for c in OWN_CASES if not (c[1].get("edge") or c[1].get("unsure"))]
SOFT_CASES = [c for c in OWN_CASES if c[1].get("edge") or c[1].get("unsure")]


@needs_corpus
@pytest.mark.parametrize("case_id,case,stages", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_corpus_pipeline(case_id, case, stages):
    assert _check(case, stages) == []


@needs_corpus
@pytest.mark.parametrize("case_id,case,stages", SOFT_CASES, ids=[c[0] for c in SOFT_CASES])
def test_corpus_pipeline_edge_or_unsure(case_id, case, stages):
    problems = _check(case, stages)
    if problems and case.get("edge"):
        # Loki emits labels with an EMPTY name for whitespace-only JSON keys; we drop them on purpose
        # (Prometheus rejects empty label names). The corpus marks these as optional behaviour.
        assert all("label names" in p for p in problems)
        assert "" in case["out_labels"]
        pytest.xfail("edge case: label with empty name is dropped by design")
    assert problems == []


@needs_corpus
def test_corpus_covers_every_parser():
    kinds = {type(s).__name__ for _, _, stages in OWN_CASES for s in stages}
    assert {"JSONParser", "LogfmtParser", "RegexpParser", "PatternParser", "UnpackParser", "LineFilter"} <= kinds
    assert len(OWN_CASES) >= 180


# ------------------------------------------------------------------------------------------------ ip()
def _ip_cases():
    out = []
    for case in CASES:
        if "ip_test.go" not in case["source"]:
            continue
        stage = parse_log_selector('{x="y"} ' + case["pipeline"]).stages[0]
        out.append((case, stage))
    return out


IP_CASES = _ip_cases()


@needs_corpus
@pytest.mark.parametrize("case,stage", IP_CASES, ids=[f"{c['pipeline']}|{c['line']}" for c, _ in IP_CASES])
def test_corpus_ip(case, stage):
    if isinstance(stage, A.LineFilter):
        assert len(stage.terms) == 1 and stage.terms[0].ip
        hit = IPMatcher(stage.terms[0].value).matches_line(case["line"])
        assert (hit != (stage.op == "!=")) == case["keep"]
    else:
        flt = stage.filter
        assert isinstance(flt, A.IPLabelFilter)
        value = case["labels"][flt.name]
        hit = IPMatcher(flt.pattern).matches_value(value)
        assert (hit != (flt.op == "!=")) == case["keep"]


@pytest.mark.parametrize("pattern", [
    "192.168.0.1 - 192.189.10.12", "192.168.0.2-1.0.0.0", "abc", "", "1.2.3.4/33", "1.2.3.4/255.255.0.0",
    "1.2.3/8", "192.168.00.1", "::1-1.2.3.4", "1.2.3.4-", "/8",
])
def test_ip_invalid_patterns(pattern):
    with pytest.raises(ValueError, match=r'^ip: invalid pattern: "'):
        IPMatcher(pattern)


@pytest.mark.parametrize("pattern,line,hit", [
    ("10.0.0.0/8", "src=10.1.2.3:443 dst=8.8.8.8", True),
    ("10.0.0.0/8", "addr 10.1.2.3.", False),          # trailing dot is part of the candidate, as in Loki
    ("8.8.8.8", "a8.8.8.8b", True),
    ("2001:db8::/32", "[2001:db8::1]:80", True),
    ("::ffff:1.2.3.4", "x ::ffff:1.2.3.4 y", True),
    ("1.2.3.4", "x ::ffff:1.2.3.4 y", False),          # 4-in-6 is a different address for netip
    ("1.2.3.4-1.2.3.10", "1.2.3.7", True),
    ("1.2.3.4-1.2.3.10", "1.2.3.11", False),
    ("fe80::1", "héllo fe80::1", True),
])
def test_ip_line_scan(pattern, line, hit):
    assert IPMatcher(pattern).matches_line(line) is hit


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("text,value", [
    ("1e3", 1000.0), ("0x1p-2", 0.25), ("0X1.8P1", 3.0), ("inf", math.inf), ("+Inf", math.inf),
    ("-infinity", -math.inf), ("1_000.5", 1000.5), ("0x_1p0", 1.0), (".5", 0.5), ("1.", 1.0), ("+1", 1.0),
    ("-0", -0.0), ("1e-400", 0.0), ("007", 7.0),
])
def test_parse_float_ok(text, value):
    assert parse_float(text) == value


def test_parse_float_nan():
    assert math.isnan(parse_float("NaN")) and math.isnan(parse_float("nan"))


@pytest.mark.parametrize("text,msg", [
    ("abc", 'strconv.ParseFloat: parsing "abc": invalid syntax'),
    ("", 'strconv.ParseFloat: parsing "": invalid syntax'),
    ("+nan", 'strconv.ParseFloat: parsing "+nan": invalid syntax'),
    ("_1", 'strconv.ParseFloat: parsing "_1": invalid syntax'),
    ("1__0", 'strconv.ParseFloat: parsing "1__0": invalid syntax'),
    ("1_", 'strconv.ParseFloat: parsing "1_": invalid syntax'),
    ("0x1", 'strconv.ParseFloat: parsing "0x1": invalid syntax'),
    ("1e", 'strconv.ParseFloat: parsing "1e": invalid syntax'),
    (" 1", 'strconv.ParseFloat: parsing " 1": invalid syntax'),
    ("infin", 'strconv.ParseFloat: parsing "infin": invalid syntax'),
    ("1e400", 'strconv.ParseFloat: parsing "1e400": value out of range'),
    ("-1e400", 'strconv.ParseFloat: parsing "-1e400": value out of range'),
    ("0x1p2000", 'strconv.ParseFloat: parsing "0x1p2000": value out of range'),
    ('a"b\n', 'strconv.ParseFloat: parsing "a\\"b\\n": invalid syntax'),
])
def test_parse_float_errors(text, msg):
    with pytest.raises(ValueError) as exc:
        parse_float(text)
    assert str(exc.value) == msg


@pytest.mark.parametrize("text,ns", [
    ("1h2m3.5s", 3_723_500_000_000), ("300ms", 300_000_000), ("-1.5h", -5_400_000_000_000), ("0", 0),
    ("-0", 0), ("+5s", 5_000_000_000), (".5s", 500_000_000), ("1.s", 1_000_000_000), ("1µs", 1000),
    ("1μs", 1000), ("1us", 1000), ("2ns", 2), ("1h1h", 7_200_000_000_000),
    ("9223372036854775807ns", 9223372036854775807), ("-9223372036854775808ns", -9223372036854775808),
])
def test_parse_go_duration_ok(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text,msg", [
    ("x", 'time: invalid duration "x"'),
    ("", 'time: invalid duration ""'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    ("1", 'time: missing unit in duration "1"'),
    (".s", 'time: invalid duration ".s"'),
    ("1h 2m", 'time: unknown unit "h " in duration "1h 2m"'),
    ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
    ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
])
def test_parse_go_duration_errors(text, msg):
    with pytest.raises(ValueError) as exc:
        parse_go_duration(text)
    assert str(exc.value) == msg


@pytest.mark.parametrize("text,value", [
    ("13 MiB", 13_631_488), ("20KB", 20_000), ("20kb", 20_000), ("1Ki", 1024), ("1k", 1000), ("42", 42),
    ("1,024 B", 1024), ("1.5 GiB", 1_610_612_736), ("5 eb", 5 * 10 ** 18), ("0.5b", 0), ("3 mb ", 3_000_000),
])
def test_parse_bytes_ok(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text,msg", [
    ("abc", 'strconv.ParseFloat: parsing "": invalid syntax'),
    ("-1KB", 'strconv.ParseFloat: parsing "": invalid syntax'),
    (" 3 mb", 'strconv.ParseFloat: parsing "": invalid syntax'),
    ("1 XB", "unhandled size name: xb"),
    ("1e3", "unhandled size name: e3"),
    ("1.2.3kb", 'strconv.ParseFloat: parsing "1.2.3": invalid syntax'),
    ("20 EiB", "too large: 20 EiB"),
])
def test_parse_bytes_errors(text, msg):
    with pytest.raises(ValueError) as exc:
        parse_bytes(text)
    assert str(exc.value) == msg


@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (3e6, "3000000"), (1e21, "1000000000000000000000"),
    (1e-7, "0.0000001"), (0.1, "0.1"), (-2.5, "-2.5"), (123.456, "123.456"), (1 / 3, "0.3333333333333333"),
    (float("nan"), "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"),
    (2.0 ** 63, "9223372036854776000"),  # Go pads the shortest digits with zeros in 'f' format
])
def test_format_float(value, text):
    assert format_float(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_float_round_trips(v):
    s = format_float(v)
    assert "e" not in s and float(s) == v


# ------------------------------------------------------------------------------------------------ re2
def test_compile_re2_cache_anchor_and_errors():
    assert compile_re2("a.c") is compile_re2("a.c")
    assert compile_re2("b", anchored=True).search("abc") is None
    assert compile_re2("b", anchored=True).search("b") is not None
    assert compile_re2(r"\pL+").search("héllo") is not None
    with pytest.raises(ValueError, match="error parsing regexp"):
        compile_re2("(abc")
    with pytest.raises(ValueError, match="error parsing regexp"):
        compile_re2("(?=x)")  # no lookaround in RE2
    with pytest.raises(ValueError, match="too large"):
        compile_re2("a" * (17 * 1024))


# ------------------------------------------------------------------------------------------------ construction errors
@pytest.mark.parametrize("regex,msg", [
    ("foo", "at least one named capture must be supplied"),
    ("(foo)", "at least one named capture must be supplied"),
    ("(?P<1a>x)", "invalid extracted label name '1a'"),
    ("(?P<a>x)(?P<a>y)", "duplicate extracted label name 'a'"),
    ("(?P<a>x", "error parsing regexp"),
])
def test_regexp_stage_validation(regex, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        P.RegexpStage(regex)


@pytest.mark.parametrize("pattern,msg", [
    ("foo", "at least one capture is required"),
    ("<_> foo", "at least one capture is required"),
    ("<a><b>", "consecutive capture"),
    ("x <a> <_><b>", "consecutive capture"),
    ("<a> <a>", r"duplicate capture name \(a\)"),
    ("", "at least one capture is required"),
])
def test_pattern_stage_validation(pattern, msg):
    with pytest.raises(ValueError, match=msg):
        P.PatternStage(pattern)


def test_pattern_literals_that_look_like_captures():
    stage = P.PatternStage("<foo > <1_> <> <x>")
    lb = LabelsBuilder({})
    stage.process(0, "<foo > <1_> <> value", lb)
    assert lb.labels() == {"x": "value"}


@pytest.mark.parametrize("pattern", ["<a> foo", "<_><_>", "x<name>"])
def test_pattern_filter_validation(pattern):
    with pytest.raises(ValueError):
        P.PatternLineFilter(pattern)


@pytest.mark.parametrize("pattern,line,hit", [
    ("", "", True), ("", "x", False), ("foo", "xfoo", True), ("foo", "foox", False),
    ("<_>", "", False), ("<_>", "a", True), ("foo <_> bar", "foo x bar", True), ("foo <_> bar", "foo  bar", False),
    ("foo <_> bar", "foo   bar", True),
    ("foo <_> bar", "foo bar", False),
])
def test_pattern_filter(pattern, line, hit):
    assert P.PatternLineFilter(pattern).matches(line) is hit


@pytest.mark.parametrize("expr", ["", "0", ".a", "a..b", "a[", "a[1.5]", "a[x]", "a b", "a[-1]", "a$"])
def test_json_expression_errors(expr):
    with pytest.raises(ValueError, match="cannot parse expression"):
        P.JSONStage([A.Extraction("x", expr)])


def test_json_expression_label_name_checked():
    with pytest.raises(ValueError, match="invalid extracted label name"):
        P.JSONStage([A.Extraction("1x", "a")])


# ------------------------------------------------------------------------------------------------ behaviour details
def _labels(stage, line, stream=None, meta=None):
    lb = LabelsBuilder(stream or {}, meta)
    out = stage.process(0, line, lb)
    return out, lb.labels()


def test_json_flatten_details():
    stage = P.JSONStage()
    line = '  {"a b":{"1c":-01, "d":[{"x":1}], "e":null, "f":true, "g":"\\u00e9\\ud83d\\ude00"}, "h":1.50e3} trailing'
    assert _labels(stage, line)[1] == {"a_b__1c": "-01", "a_b_f": "true", "a_b_g": "é😀", "h": "1.50e3"}


def test_json_errors_keep_earlier_labels():
    stage = P.JSONStage()
    assert _labels(stage, "")[1] == {"__error__": "JSONParserErr",
                                     "__error_details__": "Value looks like object, but can't find closing '}' symbol"}
    _, labels = _labels(stage, '{"a":"b", "c": tru}')
    assert labels == {"a": "b", "__error__": "JSONParserErr", "__error_details__": "Unknown value type"}
    _, labels = _labels(stage, '{"a":"b\\x"}')
    assert labels == {"a": ""}  # an invalid escape empties the value, as jsonparser.Unescape fails
    _, labels = _labels(stage, '{"a":"\\ud800x"}')
    assert labels == {"a": " x"}  # lone surrogate → U+FFFD → space


def test_json_expression_details():
    line = '{"a":{"b":[10, {"c":"x y"}], "o": {"k" : 1}}, "a":{"z":2}, "s":"q\\"r"}'
    stage = P.JSONStage([A.Extraction("c", "a.b[1].c"), A.Extraction("o", 'a["o"]'), A.Extraction("z", "a.z"),
                         A.Extraction("s", "s"), A.Extraction("arr", "a.b"), A.Extraction("m", "a.b[5]")])
    assert _labels(stage, line)[1] == {"c": "x y", "o": '{"k" : 1}', "z": "2", "s": 'q"r',
                                       "arr": '[10, {"c":"x y"}]', "m": ""}
    # the same answers through the streaming scanner (unclosed outer object disables the fast path)
    assert _labels(stage, line[:-1])[1] == _labels(stage, line)[1]


def test_logfmt_strict_error_positions_are_bytes():
    stage = P.LogfmtStage(strict=True)
    _, labels = _labels(stage, 'é=1 a="unterminated')
    assert labels["__error_details__"] == "logfmt syntax error at pos 21 : unterminated quoted value"
    _, labels = _labels(stage, 'a="x\\q"')
    assert labels["__error_details__"] == "logfmt syntax error at pos 8 : invalid quoted value"


def test_logfmt_quirks():
    stage = P.LogfmtStage()
    assert _labels(stage, 'a="b"c=d x="\\u00e9\\t" 1k=v =z w=')[1] == {"a": "b", "c": "d", "x": "é\t", "_1k": "v"}
    keep = P.LogfmtStage(keep_empty=True)
    assert _labels(keep, 'a w= "q"')[1] == {"a": "", "w": ""}


def test_logfmt_expressions_fill_missing_and_respect_stream_labels():
    stage = P.LogfmtStage(params=[A.Extraction("lvl", "level"), A.Extraction("app"), A.Extraction("nope")])
    _, labels = _labels(stage, "level=info app=x", stream={"app": "s"})
    assert labels == {"app": "s", "app_extracted": "x", "lvl": "info", "nope": ""}
    _, labels = _labels(stage, "level=info", stream={"app": "s"})
    assert labels == {"app": "s", "lvl": "info", "nope": ""}


def test_regexp_optional_group_and_utf8():
    stage = P.RegexpStage(r"(?P<a>é+)(?P<b>x)?(?P<c>\pL*)")
    assert _labels(stage, "-ééz")[1] == {"a": "éé", "b": "", "c": "z"}


def test_unpack_details():
    stage = P.UnpackStage()
    line = '{"a":"1","n":2,"_entry":"msg \\"q\\"","o":{"x":"y"},"k-1":"v"}'
    assert _labels(stage, line, stream={"a": "s"}) == ('msg "q"', {"a": "s", "a_extracted": "1", "k_1": "v"})
    out, labels = _labels(stage, '{"a":"1",')
    assert out == '{"a":"1",' and labels["__error__"] == "JSONParserErr" and "a" not in labels
    assert _labels(stage, ' {"_entry":"x"}')[1]["__error_details__"] == "expecting json object(6), but it is not"


def test_parsers_first_value_wins_across_stages():
    lb = LabelsBuilder({})
    P.LogfmtStage().process(0, 'a=1 b=2', lb)
    P.JSONStage([A.Extraction("a", "x")]).process(0, '{"x":"9"}', lb)
    P.PatternStage("<b> <c>").process(0, "8 9", lb)
    assert lb.labels() == {"a": "1", "b": "2", "c": "9"}


# ------------------------------------------------------------------------------------------------ fuzz
_FUZZ_STAGES = [
    P.JSONStage(), P.JSONStage([A.Extraction("a", "a.b[0]"), A.Extraction("c", '["c d"]')]),
    P.LogfmtStage(), P.LogfmtStage(True, True), P.LogfmtStage(True, False, [A.Extraction("k", "a")]),
    P.RegexpStage(r"(?P<x>\w+)=(?P<y>\S*)"), P.PatternStage('<a> "<b>" <_>'), P.UnpackStage(),
]
_FILTERS = [P.PatternLineFilter("<_> x <_>"), P.PatternLineFilter("a"), P.PatternLineFilter("")]
_json_chars = st.sampled_from(list('{}[]":,\\ \t\n=ab01-.etrufnl\u00e9\ufffd\ud800') + ["\\u00", "\\ud83d", "true"])
_noisy_text = st.one_of(st.text(max_size=80), st.lists(_json_chars, max_size=60).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_noisy_text)
def test_stages_never_raise(line):
    for stage in _FUZZ_STAGES:
        lb = LabelsBuilder({"a": "s"}, {"b": "m"})
        out = stage.process(0, line, lb)
        assert isinstance(out, str)
        for k, v in lb.labels().items():
            assert isinstance(k, str) and isinstance(v, str)
            assert "\ufffd" not in v or k == "__error_details__" or isinstance(stage, P.RegexpStage) \
                or isinstance(stage, P.PatternStage) or isinstance(stage, P.UnpackStage)
    for f in _FILTERS:
        assert f.matches(line) in (True, False)
    IPMatcher("10.0.0.0/8").matches_line(line)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.lists(st.tuples(st.text(max_size=5), children), max_size=4)),
    max_leaves=12)


def _dump(v, sep: str) -> str:
    """JSON text with objects given as pair lists (so duplicate keys are possible)."""
    if isinstance(v, list) and all(isinstance(x, tuple) for x in v) and v:
        return "{" + sep.join(json.dumps(k) + ":" + _dump(x, sep) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + sep.join(_dump(x, sep) for x in v) + "]"
    return json.dumps(v)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=5), _json_values), max_size=5), st.sampled_from([",", ", ", " ,\n"]))
def test_json_fast_path_matches_emulation(pairs, sep):
    line = "{" + sep.join(json.dumps(k) + ":" + _dump(v, sep) for k, v in pairs) + "}"
    fast = LabelsBuilder({"a": "s"})
    P.JSONStage().process(0, line, fast)
    slow = LabelsBuilder({"a": "s"})
    P.JSONStage()._slow_flat(line, slow)
    assert fast.labels() == slow.labels()
    unpack_fast, unpack_slow = LabelsBuilder({}), LabelsBuilder({})
    stage = P.UnpackStage()
    out_fast = stage.process(0, line, unpack_fast)
    out_slow = stage._slow(line, unpack_slow)
    assert out_fast == out_slow and unpack_fast.labels() == unpack_slow.labels()


_logfmt_alphabet = st.sampled_from(list('ab=" \\\tn\u00e9\ufffd') + ['\\"', "x=y", 'k="v w"'])


@settings(max_examples=400, deadline=None)
@given(st.lists(_logfmt_alphabet, max_size=40).map("".join), st.booleans())
def test_logfmt_fast_path_matches_decoder_emulation(line, strict):
    fast = list(P._logfmt_pairs(line, strict))
    slow = []
    pos = 0
    while pos < len(line):
        ok, key, value, pos, err = P._logfmt_scan(line, pos)
        if ok:
            slow.append((key, value))
        elif strict:
            if err is not None:
                slow.append((None, err))
            break
    assert fast == slow
