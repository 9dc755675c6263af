"""Fuzzing the LogQL front end: any text either parses or fails with a positioned syntax error, a parsed query
prints back to text that parses to the same query, and compiled pipelines never raise on any log line."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from meshscope.query.logql import LogQLSyntaxError, parse
from meshscope.query.logql.pipeline import Pipeline

TOKENS = ['{', '}', '(', ')', '[', ']', ',', '=', '!=', '=~', '!~', '|=', '|~', '!>', '|>', '|', '>', '>=', '<',
          '==', '+', '-', '*', '/', '%', '^', ' ', ' ', ' ', 'app', 'foo', '"bar"', '`b.*`', '"<_> x"', '5m', '1h',
          '30s', '10', '2.5', '-1', '20KB', 'json', 'logfmt', '--strict', 'regexp', '"(?P<a>\\\\w+)"', 'pattern',
          '"<a> <_>"', 'unpack', 'line_format', '"{{.a}}"', 'label_format', 'drop', 'keep', 'decolorize', 'unwrap',
          'duration', 'bytes', 'ip', '"10.0.0.0/8"', 'rate', 'count_over_time', 'sum', 'by', 'without', 'topk',
          'offset', 'or', 'and', 'unless', 'bool', 'on', 'ignoring', 'group_left', 'vector', 'label_replace',
          'quantile_over_time', '0.99', '#c\n', '\n', 'absent_over_time', 'sort', '__error__', '""']
QUERIES = [
    '{app="foo"}', '{app="foo"} |= "x"', '{app="foo"} | json | a > 1', 'count_over_time({app="foo"}[5m])',
    'sum by (a) (rate({app="foo"} | logfmt | unwrap b [1m]))', '{app=~"f.*"} | pattern "<a> <_>" | a != ""',
]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=25).map("".join))
def test_token_soup_parses_or_fails_cleanly(text):
    try:
        e = parse(text)
    except LogQLSyntaxError as err:
        assert str(err).startswith("parse error")
        return
    again = parse(str(e))  # what we print parses, to the same canonical text
    assert str(again) == str(e)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(QUERIES), st.integers(min_value=0, max_value=60), st.text(max_size=8))
def test_mutated_queries_never_crash(query, cut, junk):
    text = query[:cut] + junk + query[cut:]
    try:
        parse(text)
    except LogQLSyntaxError:
        pass


PIPELINES = [
    '| json', '| logfmt --strict', '| regexp "(?P<a>[a-z]+)=(?P<b>\\\\d+)"', '| pattern "<a> <b> <_>"', '| unpack',
    '| json | line_format "{{.a | ToUpper}} {{__line__}}" | label_format b="{{.a}}x"', '| decolorize',
    '| logfmt | a > 5 or b=~"x.*" | drop a | keep b', '|= ip("10.0.0.0/8") or "x" !> "<_> y"',
    '| json first="a[0]", second="b.c" | first >= 10KB', '| logfmt | d > 1s',
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PIPELINES), st.text(max_size=120), st.dictionaries(
    st.sampled_from(["a", "b", "app", "level"]), st.text(max_size=6), max_size=3))
def test_pipelines_never_raise_on_any_line(pipeline, line, labels):
    pipe = Pipeline(parse('{x="y"} ' + pipeline).stages)
    e = pipe.process(1_700_000_000_000_000_000, line, labels)
    if e is not None:
        assert isinstance(e.line, str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.labels.labels().items())
