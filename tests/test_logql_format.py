"""Tests for the Go text/template engine (query/logql/gotemplate.py) and the line_format/label_format stages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshscope.query.logql import ast as A
from meshscope.query.logql import gotemplate as gt
from meshscope.query.logql.formatting import LabelFormatStage, LineFormatStage
from meshscope.query.logql.gotemplate import (GoTime, TemplateExecError, TemplateSyntaxError, compile_template,
                                              format_float, go_sprintf)
from meshscope.query.logql.labels import LabelsBuilder
from meshscope.query.logql.parser import parse_log_selector

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "conformance" / "logql" / "pipeline_cases.jsonl"

DATA = {"a": "1", "b": "hello world", "n": "5", "f": "2.5", "j": '{"x":{"y":[1,2,"z"]},"k":null}'}


def render(text: str, data: dict | None = None, line: str = "L", ts: int = 1656331200000000000) -> str:
    return compile_template(text).execute(DATA if data is None else data, line, ts)


def exec_error(text: str, data: dict | None = None) -> str:
    with pytest.raises(TemplateExecError) as ei:
        render(text, data)
    return str(ei.value)


def syntax_error(text: str) -> str:
    with pytest.raises(TemplateSyntaxError) as ei:
        compile_template(text)
    return str(ei.value)


# ------------------------------------------------------------------------------------------ corpus
def _format_only_cases():
    if not CORPUS.exists():
        return []
    out = []
    for raw in CORPUS.read_text().splitlines():
        case = json.loads(raw)
        if "format" not in case["pipeline"]:
            continue
        q = parse_log_selector('{x="y"} ' + case["pipeline"])
        if q.stages and all(isinstance(s, (A.LineFormat, A.LabelFormat)) for s in q.stages):
            out.append(pytest.param(case, q.stages, id=case["source"].split("#")[-1][:60],
                                    marks=[pytest.mark.xfail(strict=False, reason="unsure/edge case")]
                                    if case.get("unsure") or case.get("edge") else []))
    return out


def _run(case, stages):
    built = [LineFormatStage(s.template) if isinstance(s, A.LineFormat) else LabelFormatStage(s.formats)
             for s in stages]
    lb = LabelsBuilder(case["labels"], case.get("structured_metadata"))
    line = case["line"]
    ts = case.get("ts", 0)
    keep = True
    for st in built:
        line = st.process(ts, line, lb)
        if line is None:
            keep = False
            break
    return keep, line, lb.labels()


@pytest.mark.skipif(not CORPUS.exists(), reason="shared conformance corpus not present")
@pytest.mark.parametrize("case,stages", _format_only_cases())
def test_corpus_format_cases(case, stages):
    keep, line, labels = _run(case, stages)
    assert keep == case["keep"]
    if not case["keep"]:
        return
    assert line == case["out_line"]
    expected = case["out_labels"]
    loose = set(case.get("loose_keys", []))
    assert set(labels) == set(expected)
    for k, v in expected.items():
        if k not in loose:
            assert labels[k] == v, k


@pytest.mark.skipif(not CORPUS.exists(), reason="shared conformance corpus not present")
def test_corpus_has_format_cases():
    assert len(_format_only_cases()) >= 80


# ------------------------------------------------------------------------------------------ lexing
def test_trim_markers_and_comments():
    assert render('x {{- " y " -}} z') == "x y z"
    assert render("a  {{- /* comment */ -}}  b") == "ab"
    assert render("a{{/* c */}}b") == "ab"
    assert render("a\n\t{{- .a }}\n") == "a1\n"
    assert render("{{ .a -}}  \n  x") == "1x"
    assert render("{{-3}}") == "-3"  # "-" not followed by a space is a number sign


def test_literals():
    assert render("{{ 3 }} {{ 1.5 }} {{ 1e3 }} {{ 0x10 }} {{ 'a' }} {{ true }} {{ -3 }} {{ 1_000 }}") == \
        "3 1.5 1000 16 97 true -3 1000"
    assert render('{{ "a\\tb\\u00e9" }}|{{ `raw\\n` }}') == "a\tb\u00e9|raw\\n"


def test_syntax_errors():
    assert syntax_error("{{ foo }}") == 'template: line:1: function "foo" not defined'
    assert syntax_error("{{ .a }") == 'template: line:1: unexpected "}" in operand'
    assert syntax_error("{{ .a") == "template: line:1: unclosed action"
    assert syntax_error("{{ if .a }}x") == "template: line:1: unexpected EOF"
    assert syntax_error("{{ end }}") == "template: line:1: unexpected {{end}}"
    assert syntax_error("{{ else }}") == "template: line:1: unexpected {{else}}"
    assert syntax_error("{{ break }}") == "template: line:1: {{break}} outside {{range}}"
    assert syntax_error("{{ $y }}") == 'template: line:1: undefined variable "$y"'
    assert syntax_error('{{ "a" | "b" }}') == "template: line:1: non executable command in pipeline stage 2"
    assert syntax_error("{{}}") == "template: line:1: missing value for command"
    assert syntax_error("x\n{{ .a\n }}\n{{ end }}") == "template: line:4: unexpected {{end}}"
    assert syntax_error('{{ "abc }}') == "template: line:1: unterminated quoted string"
    assert syntax_error("{{/* x }}") == "template: line:1: unclosed comment"
    assert "bad number syntax" in syntax_error("{{ 3x }}")


def test_template_length_limit():
    with pytest.raises(TemplateSyntaxError):
        compile_template("x" * (gt.MAX_TEMPLATE_LEN + 1))


# -------------------------------------------------------------------------------------- execution
def test_fields_and_missing_keys():
    assert render("{{.a}}{{.missing}}|") == "1|"
    assert render("{{ $ }}", {"b": "2", "a": "1"}) == "map[a:1 b:2]"
    assert exec_error("{{ .a }}{{ .nope.x }}") == \
        'template: line:1:11: executing "line" at <.nope.x>: can\'t evaluate field x in type string'
    assert exec_error('{{.foo Replace "foo"}}', {"foo": "x"}) == \
        'template: line:1:2: executing "line" at <.foo>: foo is not a method but has arguments'


def test_variables():
    assert render('{{ $x := 3 }}{{ $x }}{{ $x = "s" }}{{ $x }}') == "3s"
    assert render("{{ ($x := 5) }}{{ $x }}") == "55"
    assert render("{{ with $v := .a }}{{ $v }}{{ end }}") == "1"


def test_control_flow():
    assert render('{{ if eq .a "1" }}one{{ else if eq .a "2" }}two{{ else }}other{{ end }}') == "one"
    assert render('{{ if eq .a "2" }}two{{ else if eq .a "1" }}one{{ end }}') == "one"
    assert render('{{ if and .a .missing }}y{{ else }}n{{ end }}{{ or .missing "dflt" }}') == "ndflt"
    assert render("{{ with .b }}[{{ . }}]{{ else }}none{{ end }}") == "[hello world]"
    assert render("{{ with .zz }}x{{ else with .a }}a={{.}}{{ end }}") == "a=1"
    assert render("{{ range $i, $v := (fromJson .j).x.y }}{{ $i }}:{{ $v }},{{ end }}") == "0:1,1:2,2:z,"
    assert render("{{ range $k, $v := fromJson .j }}{{ $k }}={{ $v }};{{ end }}") == \
        "k=<no value>;x=map[y:[1 2 z]];"
    assert render("{{ range 5 }}{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}") == "012"
    assert render("{{ range $i := 4 }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ $i }}{{ end }}") == "023"
    assert render('{{ range fromJson "[]" }}x{{ else }}empty{{ end }}') == "empty"
    assert render('{{ template "x" . }}{{ define "x" }}[{{ .a }}]{{ end }}') == "[1]"


def test_truthiness():
    assert render('{{ if "" }}t{{ else }}f{{ end }}{{ if 0 }}t{{ else }}f{{ end }}{{ if 0.0 }}t{{ else }}f{{ end }}'
                  '{{ if fromJson "[]" }}t{{ else }}f{{ end }}{{ if now }}t{{ end }}') == "ffff" + "t"


def test_go_value_printing():
    assert render('{{ fromJson .j }}') == "map[k:<nil> x:map[y:[1 2 z]]]"
    assert render('{{ (fromJson .j).k }}|{{ (fromJson .j).nope }}') == "<no value>|<no value>"
    assert render("{{ (__timestamp__).UTC }}") == "2022-06-27 12:00:00 +0000 UTC"
    assert render("{{ (__timestamp__).Unix }} {{ __line__ }}") == "1656331200 L"


@pytest.mark.parametrize("value,text", [(3e6, "3e+06"), (1.5, "1.5"), (190.0, "190"), (0.003, "0.003"),
                                        (123456.0, "123456"), (1234567.0, "1.234567e+06"), (1e-05, "1e-05"),
                                        (-2.5, "-2.5"), (0.0, "0"), (float("inf"), "+Inf"),
                                        (3.8476190476190477, "3.8476190476190477")])
def test_float_formatting(value, text):
    assert format_float(value) == text


def test_type_errors_match_go():
    assert exec_error('{{ repeat (add 1 2) "x" }}').endswith("wrong type for value; expected int; got int64")
    assert exec_error('{{ repeat .n "x" }}').endswith("wrong type for value; expected int; got string")
    assert exec_error("{{ ToUpper 3 }}").endswith("expected string; found 3")
    assert exec_error("{{ nil }}").endswith("nil is not a command")
    assert exec_error("{{ eq .a 1 }}").endswith("error calling eq: incompatible types for comparison")
    assert exec_error("{{ len 3 }}").endswith("error calling len: len of type int")
    assert exec_error('{{.foo | now}}', {"foo": "x"}) == \
        'template: line:1:9: executing "line" at <now>: wrong number of args for now: want 0 got 1'
    assert exec_error("{{ div 1 0 }}").endswith("error calling div: runtime error: integer divide by zero")


# -------------------------------------------------------------------------------------- functions
def test_string_functions():
    assert render('{{ title "hello wOrld-foo_bar" }}') == "Hello WOrld-Foo_bar"
    assert render('{{ trunc -3 "abcdef" }} {{ trunc 2 "abcdef" }}') == "def ab"
    assert render('{{ substr 1 3 "blip" }}|{{ substr -1 2 "abc" }}|{{ substr 2 -1 "abcdef" }}|{{ substr 4 2 "ab" }}') \
        == "li|ab|cdef|"
    assert render('{{ "blop" | replace "blop" "bar" }} {{ Replace "aaa" "a" "b" 2 }}') == "bar bba"
    assert render('{{ trimAll "xy" "xyaxy" }}|{{ TrimLeft "aab" "a" }}|{{ trim "  x " }}|{{ TrimSpace "\\tx\\n" }}') \
        == "a|b|x|x"
    assert render('{{ "ab" | trimPrefix "a" }}{{ "ab" | trimSuffix "b" }}{{ TrimPrefix "ab" "a" }}') == "bab"
    assert render('{{ indent 2 "a\\nb" }}|{{ nindent 2 "a" }}') == "  a\n  b|\n  a"
    assert render('{{ alignLeft 4 "ab" }}|{{ alignRight 4 "ab" }}|{{ alignLeft 1 "ab" }}') == "ab  |  ab|a"
    assert render('{{ "a" | repeat 3 }}') == "aaa"
    assert render('{{ if contains "p" "blip" }}y{{ end }}{{ if hasPrefix "bl" "blip" }}y{{ end }}') == "yy"
    assert render('{{ upper "aé" }}{{ lower "AÉ" }}{{ ToUpper "x" }}{{ ToLower "X" }}') == "AÉaéXx"


def test_encoding_functions():
    assert render('{{ b64enc "hi" }} {{ b64dec "aGk=" }} {{ b64dec "Zm9vYmE" }}') == "aGk= hi fooba"
    assert render('{{ urlencode "a b&c/" }} {{ urldecode "a+b%26c" }}') == "a+b%26c%2F a b&c"
    assert exec_error('{{ urldecode "%zz" }}').endswith('invalid URL escape "%zz"')
    assert render('{{ html "<a href=\'x\'>&" }}') == "&lt;a href=&#39;x&#39;&gt;&amp;"
    assert render('{{ js "it\'s <b>" }} {{ urlquery "a b" }}') == "it\\'s \\u003Cb\\u003E a+b"


def test_regex_functions_go_semantics():
    assert render('{{ regexReplaceAll "a(?P<x>b*)" "abbcab" "<${x}|$1|$x1|$$>" }}') == "<bb|bb||$>c<b|b||$>"
    assert render('{{ regexReplaceAll "a*" "baaac" "-" }}') == "-b-c-"
    assert render('{{ regexReplaceAllLiteral "(p)" "blip" "${1}" }}') == "bli${1}"
    assert render('{{ count "a*" "baaac" }} {{ count "abc" "abc abc" }} {{ count "x" "" }}') == "3 2 0"
    assert "error parsing regexp" in exec_error('{{ regexReplaceAll "(" "x" "y" }}')


def test_math_functions():
    assert render('{{ add 1 2 3 }} {{ sub 10 3 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ div -7 2 }} {{ mod -7 3 }}') == \
        "6 7 24 3 -3 -1"
    assert render('{{ add "0x10" "010" "2.00" "x" }}') == "26"  # cast.ToInt64: base prefixes, "2.00", junk -> 0
    assert render('{{ round 3.14159 2 }} {{ round "2.5" 0 }} {{ ceil "1.1" }} {{ floor -1.1 }}') == "3.14 3 2 -2"
    assert render('{{ maxf 1 "2.5" }} {{ min 3 "1" 2 }} {{ max 1 9 }} {{ minf 2 1.5 }}') == "2.5 1 9 1.5"
    assert render('{{ addf 0.1 0.2 }} {{ subf 1 0.9 }} {{ divf 1 3 }} {{ mulf 1.1 1.1 }}') == \
        "0.3 0.1 0.3333333333333333 1.21"
    assert render('{{ int "12abc" }} {{ int 3.9 }} {{ float64 "1e3" }} {{ int "-0x1F" }} {{ float64 "x" }}') == \
        "0 3 1000 -31 0"
    assert exec_error("{{ divf 1 0 }}").endswith("decimal division by 0")


def test_conversion_functions():
    assert render('{{ bytes "1KiB" }} {{ bytes "3 kB" }} {{ bytes "3MB" }}') == "1024 3000 3e+06"
    assert render('{{ duration "1h30m" }} {{ duration "-1.5s" }} {{ duration_seconds "3ms" }}') == \
        "5400 -1.5 0.003"
    assert "unknown unit" in exec_error('{{ duration "1d" }}')
    assert "unhandled size name" in exec_error('{{ bytes "3 zz" }}')


def test_default_and_json():
    assert render('{{ default "d" 0 }} {{ default "d" 1 }} {{ default "d" "" }} {{ default "d" }} '
                  '{{ "x" | default "d" }}') == "d 1 d d x"
    assert render('{{ (fromJson "{\\"a\\": 1.50}").a }} {{ fromJson "bad" }}') == "1.5 <no value>"


def test_time_functions():
    utc = GoTime(0, 0, gt._UTC)
    assert utc.format("2006-01-02T15:04:05.000Z07:00 Mon Jan _2 3PM") == "1970-01-01T00:00:00.000Z Thu Jan  1 12AM"
    assert str(GoTime(1673798889, 902000000, gt._UTC)) == "2023-01-15 16:08:09.902 +0000 UTC"
    assert render('{{ toDateInZone "2006-01-02T15:04:05.999999999Z" "UTC" "2023-03-10T01:32:40.340485723Z" '
                  '| unixEpochNanos }}') == "1678411960340485723"
    assert render('{{ toDateInZone "2006-01-02 15:04" "Europe/Paris" "2021-07-01 12:00" }}') == \
        "2021-07-01 12:00:00 +0200 CEST"
    assert render('{{ toDateInZone "2006-01-02T15:04:05Z07:00" "UTC" "2021-03-04T05:06:07+02:00" | unixEpoch }}') \
        == "1614827167"
    assert render('{{ toDate "2006" "bad" | unixEpoch }}') == "-62135596800"  # parse error -> zero time
    assert render('{{ (toDateInZone "2006-01-02" "UTC" "2021-11-02").Format "Jan 2, 2006" }}') == "Nov 2, 2021"
    assert render("{{ div (unixEpoch now) (unixEpoch now) }}") == "1"
    assert "unable to parse time '123'" in exec_error('{{ unixToTime "123" }}')


def test_printf():
    assert render('{{ printf "%s|%d|%5.2f|%q|%v|%x|%-4s|%04d|%t|%T" .b 42 3.14159 "q\\"x" 1.5 "hi" "ab" 7 true '
                  '1.0 }}') == 'hello world|42| 3.14|"q\\"x"|1.5|6869|ab  |0007|true|float64'
    assert go_sprintf("%d %s", ["x", 3]) == "%!d(string=x) %!s(int=3)"
    assert go_sprintf("%d", []) == "%!d(MISSING)"
    assert go_sprintf("%d", [1, 2]) == "1%!(EXTRA int=2)"
    assert go_sprintf("%e|%g|%G|%08.3f|% d|%+d|%c|%U|%x|%o|%b", [1234.5678, 0.000012345, 1e21, -3.14159, 7, 5, 65,
                                                              65, 255, 8, 5]) == \
        "1.234568e+03|1.2345e-05|1E+21|-003.142| 7|+5|A|U+0041|ff|10|101"
    assert render('{{ print 1 2 "a" "b" 3 }}|{{ println 1 "x" }}|') == "1 2ab3|1 x\n|"


# ------------------------------------------------------------------------------------------ limits
def test_output_and_iteration_limits():
    assert "output exceeds" in exec_error('{{ range 2000 }}{{ repeat 1000 "x" }}{{ end }}')
    assert "iterations" in exec_error("{{ range 100 }}{{ range 100 }}{{ range 100 }}{{ end }}{{ end }}{{ end }}")
    assert "too large" in exec_error('{{ repeat 100000000 "x" }}')
    assert exec_error('{{ repeat -1 "x" }}').endswith("strings: negative Repeat count")
    assert "depth" in exec_error('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}')


def test_single_field():
    assert compile_template("{{.foo}}").single_field == "foo"
    assert compile_template("{{ .foo }}").single_field == "foo"
    assert compile_template("{{.foo}} ").single_field is None
    assert compile_template("{{.foo.bar}}").single_field is None
    assert compile_template("{{.foo | lower}}").single_field is None


# ------------------------------------------------------------------------------------------ stages
def test_line_format_stage():
    lb = LabelsBuilder({"app": "x"}, {"trace": "t1"})
    st = LineFormatStage("{{ .app }}-{{ .trace }}-{{ __line__ }}")
    assert st.process(0, "orig", lb) == "x-t1-orig"
    assert LineFormatStage("{{.app}}").process(0, "orig", lb) == "x"
    assert LineFormatStage("{{.nope}}").process(0, "orig", lb) == ""


def test_line_format_error_keeps_line():
    lb = LabelsBuilder({"app": "x"})
    assert LineFormatStage('{{ div 1 0 }}').process(0, "orig", lb) == "orig"
    out = lb.labels()
    assert out["__error__"] == "TemplateFormatErr"
    assert "integer divide by zero" in out["__error_details__"]


def test_line_format_sees_error_label():
    lb = LabelsBuilder({"app": "x"})
    lb.set_error("JSONParserErr")
    assert LineFormatStage("{{ .__error__ }}!").process(0, "l", lb) == "JSONParserErr!"


def test_line_format_syntax_error():
    with pytest.raises(TemplateSyntaxError, match="invalid line template: template: line:1: function"):
        LineFormatStage("{{ nope }}")
    with pytest.raises(ValueError):
        LabelFormatStage([A.LabelFmt("a", "{{ nope }}", False)])


def test_label_format_validation():
    with pytest.raises(ValueError, match="multiple label name 'foo' not allowed in a single format operation"):
        LabelFormatStage([A.LabelFmt("foo", "bar", True), A.LabelFmt("foo", "{{.x}}", False)])
    with pytest.raises(ValueError, match="__error__ cannot be formatted"):
        LabelFormatStage([A.LabelFmt("__error__", "bar", True)])


def test_label_format_semantics():
    lb = LabelsBuilder({"src": "v", "other": "o"}, {"meta": "m"})
    st = LabelFormatStage([A.LabelFmt("dst", "src", True), A.LabelFmt("t", "{{.dst}}/{{.src}}/{{.meta}}", False),
                           A.LabelFmt("u", "{{.t}}", False), A.LabelFmt("gone", "missing", True)])
    assert st.process(0, "line", lb) == "line"
    # the template data is taken once, after the rename, before any template of the stage ran
    assert lb.labels() == {"dst": "v", "other": "o", "meta": "m", "t": "v//m", "u": ""}


def test_label_format_error_continues():
    lb = LabelsBuilder({"a": "1"})
    st = LabelFormatStage([A.LabelFmt("x", "{{ div 1 0 }}", False), A.LabelFmt("y", "{{ .a }}", False)])
    st.process(0, "l", lb)
    out = lb.labels()
    assert out["__error__"] == "TemplateFormatErr"
    assert out["y"] == "1" and "x" not in out
    assert out["__error_details__"].startswith('template: label:1:3: executing "label" at <div>')


def test_label_format_overwrites_stream_label():
    lb = LabelsBuilder({"app": "foo"})
    LabelFormatStage([A.LabelFmt("app", "{{.app}}-suffix", False)]).process(0, "x", lb)
    assert lb.labels() == {"app": "foo-suffix"}


def test_stages_from_parsed_query():
    q = parse_log_selector('{x="y"} | label_format b=a | line_format "{{.b}}!"')
    lb = LabelsBuilder({"a": "1"})
    line = "l"
    for s in q.stages:
        st = LineFormatStage(s.template) if isinstance(s, A.LineFormat) else LabelFormatStage(s.formats)
        line = st.process(0, line, lb)
    assert line == "1!" and lb.labels() == {"b": "1"}
