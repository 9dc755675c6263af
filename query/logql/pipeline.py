"""Compile a LogQL pipeline (the stages after a selector) into stage objects and run entries through it.

Every stage has one method, ``process(ts, line, labels) -> line | None`` (see ``stage.py``), as in Loki's
``pkg/logql/log``. Line filters additionally expose ``matches(line)`` so that a batch of lines can be filtered
without building label sets, and the planner can tell which of them ClickHouse may run instead
(``pushable_line_filters``): a line filter commutes with every stage that does not rewrite the line, so all
line filters before the first ``line_format``/``unpack``/``decolorize`` can run in SQL.

Label filters, ``drop``/``keep``, ``decolorize`` and the sample extractor (``unwrap``) live here; parsers are in
``parsers.py``, ``line_format``/``label_format`` in ``formatting.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import ast as A
from .labels import (ERROR, ERROR_DETAILS, LABEL_FILTER_ERR, PRESERVE_ERROR, SAMPLE_EXTRACTION_ERR,
                     LabelsBuilder)
from .re2util import compile_re2
from .stage import Stage
from .values import parse_bytes, parse_float, parse_go_duration


class PipelineError(ValueError):
    """A pipeline that parses but cannot be built (bad regex, pattern without captures, ...)."""


# ---------------------------------------------------------------------------------------------- line filters
def _term_matcher(op: str, term: A.LineFilterTerm):
    """A predicate ``line -> bool`` for one positive term (negation is applied by the caller)."""
    if term.ip:
        if op not in ("|=", "!="):
            raise PipelineError(f"ip() filter can only be used with |= or != (got {op})")
        from .ipmatch import IPMatcher
        return IPMatcher(term.value).matches_line
    if op in ("|=", "!="):
        s = term.value
        return lambda line: s in line
    if op in ("|~", "!~"):
        rx = compile_re2(term.value)
        return lambda line: rx.search(line) is not None
    from .parsers import PatternLineFilter
    return PatternLineFilter(term.value).matches


def _is_noop_term(op: str, term: A.LineFilterTerm) -> bool:
    if term.ip:
        return False
    return (op == "|=" and term.value == "") or (op == "|~" and term.value in ("", ".*"))


class LineFilterStage(Stage):
    """``|= "a" or "b"`` keeps a line containing a or b; ``!= "a" or "b"`` keeps lines containing neither."""

    def __init__(self, node: A.LineFilter):
        self.node = node
        self.negative = node.op.startswith("!")
        preds = [_term_matcher(node.op, t) for t in node.terms]
        if len(preds) == 1:
            p = preds[0]
            self.matches = (lambda line: not p(line)) if self.negative else p
        elif self.negative:
            self.matches = lambda line: not any(p(line) for p in preds)
        else:
            self.matches = lambda line: any(p(line) for p in preds)

    def process(self, ts, line, lb):
        return line if self.matches(line) else None


# ---------------------------------------------------------------------------------------------- label filters
_CMP = {
    "==": lambda a, b: a == b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
}


def _plain_get(lb: LabelsBuilder, name: str) -> str | None:
    """Conversion filters do not see the error slot: ``__error__ > 0`` finds no such label."""
    if name in (ERROR, ERROR_DETAILS):
        return None
    return lb.get(name)


class StringFilter:
    """Prometheus matcher semantics; a missing label compares as the empty string."""

    def __init__(self, m: A.Matcher):
        self.name, self.op, self.value = m.name, m.op, m.value
        if m.op in ("=~", "!~"):
            rx = compile_re2(m.value, anchored=True)
            self._test = lambda v: rx.fullmatch(v) is not None
        else:
            value = m.value
            self._test = lambda v: v == value
        self.negative = m.op in ("!=", "!~")

    def test(self, lb: LabelsBuilder) -> bool:
        v = lb.get(self.name)
        hit = self._test("" if v is None else v)
        return not hit if self.negative else hit

    def is_noop(self) -> bool:
        return self.op == "=~" and self.value == ".*"


class ConvertingFilter:
    """Number, duration and bytes filters: missing label drops the line, a bad value keeps it with an error."""

    def __init__(self, name: str, op: str, target, convert):
        self.name, self.target, self.convert = name, target, convert
        self.cmp = _CMP[op]

    def test(self, lb: LabelsBuilder) -> bool:
        v = _plain_get(lb, self.name)
        if v is None:
            return False
        try:
            value = self.convert(v)
        except ValueError as err:
            if lb.error is None:
                lb.set_error(LABEL_FILTER_ERR, str(err))
            return True
        return self.cmp(value, self.target)


class IPFilter:
    def __init__(self, node: A.IPLabelFilter):
        from .ipmatch import IPMatcher
        self.name, self.negative = node.name, node.op == "!="
        self.matcher = IPMatcher(node.pattern)

    def test(self, lb: LabelsBuilder) -> bool:
        v = _plain_get(lb, self.name)
        if v is None:
            return False
        if lb.error is not None:
            return True
        hit = self.matcher.matches_value(v)
        return not hit if self.negative else hit


class BinaryFilter:
    """``or`` short-circuits on a true left side; ``and`` evaluates both so the right side may record an error."""

    def __init__(self, op: str, left, right):
        self.is_and, self.left, self.right = op == "and", left, right

    def test(self, lb: LabelsBuilder) -> bool:
        lok = self.left.test(lb)
        if not self.is_and and lok:
            return True
        rok = self.right.test(lb)
        return (lok and rok) if self.is_and else rok


class TrueFilter:
    def test(self, lb):
        return True


def compile_label_filter(node: A.LabelFilter):
    if isinstance(node, A.StringLabelFilter):
        f = StringFilter(node.matcher)
        return TrueFilter() if f.is_noop() else f
    if isinstance(node, A.NumberLabelFilter):
        return ConvertingFilter(node.name, node.op, node.value, parse_float)
    if isinstance(node, A.DurationLabelFilter):
        return ConvertingFilter(node.name, node.op, node.value_ns, parse_go_duration)
    if isinstance(node, A.BytesLabelFilter):
        return ConvertingFilter(node.name, node.op, node.value, parse_bytes)
    if isinstance(node, A.IPLabelFilter):
        return IPFilter(node)
    if isinstance(node, A.BinaryLabelFilter):
        return BinaryFilter(node.op, compile_label_filter(node.left), compile_label_filter(node.right))
    raise PipelineError(f"unsupported label filter {node!r}")


class LabelFilterStage(Stage):
    def __init__(self, node: A.LabelFilter):
        self.filter = compile_label_filter(node)

    def process(self, ts, line, lb):
        return line if self.filter.test(lb) else None


# ---------------------------------------------------------------------------------------------- drop / keep
class _NamedMatchers:
    def __init__(self, items: list[A.NamedMatcher]):
        self.plain = {it.name for it in items if it.matcher is None}
        self.matched = [(it.name, StringFilter(it.matcher)) for it in items if it.matcher is not None]


class DropStage(Stage):
    """Remove labels by name, or only when their value matches; ``__error__`` and its details independently."""

    def __init__(self, node: A.Drop):
        self.m = _NamedMatchers(node.labels)

    def process(self, ts, line, lb):
        for name in self.m.plain:
            lb.delete(name)
        for name, f in self.m.matched:
            if lb.get(name) is not None and f.test(lb):
                lb.delete(name)
        return line


class KeepStage(Stage):
    """Remove every label not listed; the error labels always survive."""

    _ALWAYS = (ERROR, ERROR_DETAILS, PRESERVE_ERROR)

    def __init__(self, node: A.Keep):
        self.m = _NamedMatchers(node.labels)

    def process(self, ts, line, lb):
        if not self.m.plain and not self.m.matched:
            return line
        for name in list(lb.labels()):
            if name in self._ALWAYS or name in self.m.plain:
                continue
            kept = False
            for mname, f in self.m.matched:
                if mname == name and f.test(lb):
                    kept = True
                    break
            if not kept:
                lb.delete(name)
        return line


# ---------------------------------------------------------------------------------------------- decolorize
_ANSI = re.compile(
    "[\u001b\u009b][\\[\\]()#;?]*(?:(?:(?:[a-zA-Z\\d]*(?:;[a-zA-Z\\d]*)*)?\u0007)"
    "|(?:(?:\\d{1,4}(?:;\\d{0,4})*)?[\\dA-PRZcf-ntqry=><~]))")


class DecolorizeStage(Stage):
    def process(self, ts, line, lb):
        return _ANSI.sub("", line) if ("\u001b" in line or "\u009b" in line) else line


# ---------------------------------------------------------------------------------------------- the pipeline
LINE_MUTATING = (A.LineFormat, A.UnpackParser, A.Decolorize)


def compile_stage(node: A.Stage) -> Stage | None:
    """One AST stage → a stage object, or None when it provably does nothing."""
    try:
        if isinstance(node, A.LineFilter):
            if len(node.terms) == 1 and _is_noop_term(node.op, node.terms[0]):
                return None
            return LineFilterStage(node)
        if isinstance(node, A.LabelFilterStage):
            st = LabelFilterStage(node.filter)
            return None if isinstance(st.filter, TrueFilter) else st
        if isinstance(node, A.Drop):
            return DropStage(node)
        if isinstance(node, A.Keep):
            return KeepStage(node)
        if isinstance(node, A.Decolorize):
            return DecolorizeStage()
        if isinstance(node, (A.LineFormat, A.LabelFormat)):
            from . import formatting
            if isinstance(node, A.LineFormat):
                return formatting.LineFormatStage(node.template)
            return formatting.LabelFormatStage(node.formats)
        from . import parsers
        if isinstance(node, A.JSONParser):
            return parsers.JSONStage(node.params)
        if isinstance(node, A.LogfmtParser):
            return parsers.LogfmtStage(node.strict, node.keep_empty, node.params)
        if isinstance(node, A.RegexpParser):
            return parsers.RegexpStage(node.regex)
        if isinstance(node, A.PatternParser):
            return parsers.PatternStage(node.pattern)
        if isinstance(node, A.UnpackParser):
            return parsers.UnpackStage()
    except PipelineError:
        raise
    except ValueError as err:
        raise PipelineError(str(err)) from err
    raise PipelineError(f"unsupported pipeline stage {node}")


@dataclass
class Entry:
    """One pipeline result: the final line and the merged label set (kept apart by category for the API)."""
    line: str
    labels: LabelsBuilder


class Pipeline:
    """The compiled stages of one log query. Stateless: safe to share between threads."""

    def __init__(self, stages: list[A.Stage]):
        self.nodes = list(stages)
        self.stages: list[Stage] = [s for s in (compile_stage(n) for n in self.nodes) if s is not None]

    @property
    def is_noop(self) -> bool:
        return not self.stages

    @property
    def only_line_filters(self) -> bool:
        return all(isinstance(s, LineFilterStage) for s in self.stages)

    def process(self, ts: int, line: str, stream: dict[str, str],
                metadata: dict[str, str] | None = None) -> Entry | None:
        lb = LabelsBuilder(stream, metadata)
        for st in self.stages:
            line = st.process(ts, line, lb)
            if line is None:
                return None
        return Entry(line, lb)

    def filter_lines(self, lines: list[str]) -> list[bool]:
        """Keep-mask for a batch when the pipeline is only line filters (no label work at all)."""
        preds = [s.matches for s in self.stages]
        return [all(p(line) for p in preds) for line in lines]


def pushable_line_filters(stages: list[A.Stage]) -> list[A.LineFilter]:
    """The line filters that may run before everything else (and so in SQL): those before the first stage that
    rewrites the line. Parsers and label filters only read the line, and filters commute with filters."""
    out = []
    for st in stages:
        if isinstance(st, LINE_MUTATING):
            break
        if isinstance(st, A.LineFilter):
            out.append(st)
    return out


def validate_stages(stages: list[A.Stage]) -> None:
    """Build every stage once so that bad parser regexes, patterns and templates fail at parse time.

    Line filters are left out: Loki accepts ``|~ "error\\"`` or ``|~ ip(...)`` at parse time and fails only when
    the query runs (the corpus has such cases), which is still a 400 for the user."""
    for st in stages:
        if not isinstance(st, A.LineFilter):
            compile_stage(st)


# ---------------------------------------------------------------------------------------------- samples
COUNT_KINDS = {"count_over_time", "rate", "absent_over_time"}
BYTES_KINDS = {"bytes_over_time", "bytes_rate"}

_CONVERT = {
    None: parse_float,
    "duration": lambda s: parse_go_duration(s) / 1e9,
    "duration_seconds": lambda s: parse_go_duration(s) / 1e9,
    "bytes": lambda s: float(parse_bytes(s)),
}


class SampleExtractor:
    """Turns pipeline output into one sample per entry for a range aggregation.

    Without ``unwrap`` the value is 1 (counting) or the line's byte length; with it the label's value converted
    as asked. The unwrapped label leaves the series labels; a conversion failure gives 0 with
    ``__error__=SampleExtractionErr`` (so the query fails unless a post-unwrap filter removes it); an empty or
    missing value yields no sample. Grouping (``by``/``without``) is the evaluator's job.
    """

    def __init__(self, node: A.RangeAggregation):
        self.op = node.op
        r = node.range
        self.pipeline = Pipeline(r.query.stages)
        self.unwrap = r.unwrap
        self.bytes = node.op in BYTES_KINDS
        if self.unwrap is None and node.op not in COUNT_KINDS | BYTES_KINDS:
            raise PipelineError(f"invalid aggregation {node.op} without unwrap")
        self.post = [compile_label_filter(f) for f in (r.unwrap.post_filters if r.unwrap else [])]
        self.convert = _CONVERT[r.unwrap.conversion] if r.unwrap else None

    def extract(self, ts: int, line: str, stream: dict[str, str],
                metadata: dict[str, str] | None = None) -> tuple[dict[str, str], float] | None:
        e = self.pipeline.process(ts, line, stream, metadata)
        if e is None:
            return None
        return self.sample(e)

    def sample(self, e: Entry) -> tuple[dict[str, str], float] | None:
        lb = e.labels
        if self.unwrap is None:
            value = float(len(e.line.encode("utf-8"))) if self.bytes else 1.0
        else:
            raw = lb.get(self.unwrap.label)
            if raw is None or raw == "":
                return None
            try:
                value = self.convert(raw)
            except ValueError as err:
                value = 0.0
                lb.set_error(SAMPLE_EXTRACTION_ERR, str(err))
            for f in self.post:
                if not f.test(lb):
                    return None
            if lb.error is None:
                lb.delete(self.unwrap.label)
        return lb.labels(), value
