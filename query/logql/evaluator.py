"""LogQL metric evaluator: everything after log entries have become samples.

The storage side (a ``SampleSource``) hands over, per range aggregation, the samples of
every series; this module turns them into Loki's results: range windows, range and
vector aggregations, binary operators with vector matching, ``label_replace``,
``vector()``, literals, Loki's limits and its user-facing error texts.

Contract with the sample source (``SampleSource.samples(node, start_ns, end_ns)``)
--------------------------------------------------------------------------------
* It returns every series whose samples have timestamps in
  ``[start_ns - range - offset, end_ns - offset]`` (ns, both ends inclusive), with
  ``ts`` ascending. Extra samples outside that span are harmless (windows cut them).
* Values: for ``count_over_time``, ``rate`` without unwrap, ``bytes_over_time``,
  ``bytes_rate`` and ``absent_over_time`` a sample is 1 per entry (bytes kinds: the
  line length) and MAY be a pre-aggregated sum of several entries placed at a timestamp
  that falls in exactly the same windows; these functions therefore SUM values, they
  never count samples. With unwrap, a sample is one unwrapped value.
* Labels the source must already have applied: the pipeline, and the unwrap rule for
  the *no-grouping* case (the unwrapped label removed; a failed conversion keeps all
  labels plus ``__error__``). Several source series may carry identical labels; they
  are merged here into one series (as Loki's iterators merge by label string).
* Labels applied HERE: the range aggregation's own ``by (...)`` / ``without (...)``
  (only avg/min/max/stddev/stdvar/quantile/first/last_over_time allow it). ``by`` keeps
  only the listed labels that are present, ``without`` drops the listed ones; series
  that then share a label set are merged (their samples interleaved by timestamp)
  before the window function runs, as Loki's extractor grouping does. A label named in
  ``by`` survives only if the source left it in (so a source wanting Loki's exact
  behaviour for ``by (<unwrapped label>)`` should keep that label in that case).
  Series with a non-empty ``__error__`` label are never grouped: if any of them has a
  sample inside an evaluated window the query fails with Loki's pipeline error, unless
  ``__preserve_error__="true"`` is set.

Semantics follow Loki ``pkg/logql`` (``range_vector.go``, ``evaluator.go``,
``engine.go``, ``syntax.MergeBinOp``): window ``(t - offset - range, t - offset]``,
output timestamp ``t``; a series with nothing in a window emits no point.
``rate_counter`` is Prometheus' extrapolated ``rate`` measured against the window
bounds (Loki >= PR #23684 semantics), 0 when a window holds fewer than two samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from decimal import Decimal
from typing import Protocol, Sequence

import numpy as np
import re2

from . import ast
from .. import vectorops as vo
from ..vectorops import S as _S, key as _key

__all__ = ["Series", "SampleSource", "Matrix", "Vector", "Scalar", "EvalError", "Evaluator",
           "format_value", "labels_string"]

# ---------------------------------------------------------------- public data types


@dataclass
class Series:
    """One series as delivered by the sample source (labels final, see module doc)."""
    labels: dict[str, str]
    ts: Sequence[int]
    values: Sequence[float]


class SampleSource(Protocol):
    def samples(self, node: ast.RangeAggregation, start_ns: int, end_ns: int) -> list[Series]: ...


@dataclass
class Matrix:
    """Range-query result: ``series`` is ``[(labels, [(ts_ns, value), ...]), ...]`` sorted by labels."""
    series: list[tuple[dict[str, str], list[tuple[int, float]]]] = field(default_factory=list)


@dataclass
class Vector:
    """Instant-query result: ``samples`` is ``[(labels, ts_ns, value), ...]``."""
    samples: list[tuple[dict[str, str], int, float]] = field(default_factory=list)


@dataclass
class Scalar:
    ts_ns: int
    value: float


class EvalError(ValueError):
    """A user error with Loki's message text (the HTTP layer turns it into a 400)."""


# Loki's flavour of the operator/aggregation core shared with PromQL (query/vectorops.py).
_SEM = vo.Semantics("loki", EvalError, div_zero_nan=True, drop_name=False, kahan=False)


# ---------------------------------------------------------------- Loki message texts
STEP_MSG = "zero or negative query resolution step widths are not accepted. Try a positive integer"
END_BEFORE_START_MSG = "end timestamp must not be before or equal to start time"
INSTANT_LOG_MSG = ("log queries are not supported as an instant query type, please change your query to "
                   "a range query type")
MANY_TO_ONE_MSG = "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
GROUPING_UNIQUE_MSG = "multiple matches for labels: grouping labels must ensure unique matches"
DUP_SIDE_MSG = ("found duplicate series on the {side} hand-side;many-to-many matching not allowed: "
                "matching labels must be unique on one side")


def points_msg(max_points: int) -> str:
    return (f"exceeded maximum resolution of {max_points:,} points per time series. "
            f"Try increasing the value of the step parameter")


def series_limit_msg(limit: int) -> str:
    return (f"maximum number of series ({limit}) reached for a single query; consider reducing query "
            f"cardinality by adding more specific stream selectors, reducing the time range, or aggregating "
            f"results with functions like sum(), count() or topk()")


def pipeline_error_msg(labels: dict[str, str]) -> str:
    err = labels.get("__error__", "")
    return (f"pipeline error: '{err}' for series: '{labels_string(labels)}'.\n"
            f"Use a label filter to intentionally skip this error. (e.g | __error__!=\"{err}\").\n"
            "To skip all potential errors you can match empty errors.(e.g __error__=\"\")\n"
            "The label filter can also be specified after unwrap. (e.g | unwrap latency | __error__=\"\" )\n")


# ---------------------------------------------------------------- formatting helpers
def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def labels_string(labels: dict[str, str]) -> str:
    """Prometheus ``labels.String()``: ``{a="b", c="d"}`` sorted by name."""
    return "{" + ", ".join(f"{k}={_go_quote(v)}" for k, v in sorted(labels.items())) + "}"


def format_value(v: float) -> str:
    """Go ``strconv.FormatFloat(v, 'f', -1, 64)`` as Loki prints sample values."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    s = repr(float(v))
    if "e" in s or "E" in s:
        s = format(Decimal(s), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


# ---------------------------------------------------------------- internal helpers
@dataclass
class _Ctx:
    start: int
    end: int
    steps: np.ndarray

    @property
    def n(self) -> int:
        return len(self.steps)


def _walk(node):
    yield node
    if is_dataclass(node):
        for f in fields(node):
            val = getattr(node, f.name)
            for item in (val if isinstance(val, list) else [val]):
                if isinstance(item, ast.Node):
                    yield from _walk(item)


def _sortable(expr) -> bool:
    """Loki keeps evaluation order for instant results only if sort/sort_desc appears anywhere."""
    return any(isinstance(n, ast.VectorAggregation) and n.op in ("sort", "sort_desc") for n in _walk(expr))


def _go_seconds(ns: int) -> float:
    # time.Duration.Seconds(): whole seconds plus the fraction, as Go computes it.
    sec, nsec = divmod(ns, 10**9) if ns >= 0 else (-((-ns) // 10**9), -((-ns) % 10**9))
    return float(sec) + float(nsec) / 1e9


def _has_error(labels: dict[str, str]) -> bool:
    return bool(labels.get("__error__")) and labels.get("__preserve_error__") != "true"


def _group_labels(labels: dict[str, str], g: ast.Grouping) -> dict[str, str]:
    if g.without:
        drop = set(g.labels)
        return {k: v for k, v in labels.items() if k not in drop}
    keep = set(g.labels)
    return {k: v for k, v in labels.items() if k in keep}


_CMP = {"==", "!=", ">", ">=", "<", "<="}
_SET = {"and", "or", "unless"}


def _arith(op: str, a, b):
    """Loki MergeBinOp arithmetic/comparison (x/0 → NaN), shared with PromQL in ``vectorops``."""
    return vo.arith(op, a, b, _SEM)


def _scalar_value(expr) -> float | None:
    """Value of a literal-only expression (the parser folds these; kept for hand-built ASTs)."""
    if isinstance(expr, ast.Literal):
        return float(expr.value)
    if isinstance(expr, ast.BinaryOp) and expr.op not in _SET:
        a, b = _scalar_value(expr.left), _scalar_value(expr.right)
        if a is not None and b is not None:
            return float(_arith(expr.op, a, b))
    return None


# ---------------------------------------------------------------- window kernels
_windows, _reduceat, _window_sums, _expand, _quantile = vo.windows, vo.reduceat, vo.window_sums, vo.expand, vo.quantile
_go_expand = vo.go_expand


def _rate_counter(ts: np.ndarray, vals: np.ndarray, los, his, starts, ends, range_s: float) -> np.ndarray:
    """Prometheus extrapolatedRate(isCounter, isRate) against the window bounds; Loki answers 0 below 2 samples."""
    out = vo.extrapolated_rate(ts, vals, los, his, starts, ends, range_s, True, True)
    out[(his - los) < 2] = 0.0
    return out


# ---------------------------------------------------------------- evaluator
_SUM_KINDS = {"count_over_time", "bytes_over_time", "bytes_rate", "sum_over_time", "rate"}


class Evaluator:
    """Evaluates metric expressions over a ``SampleSource``; see the module docstring for the contract."""

    def __init__(self, source: SampleSource, max_series: int = 500, max_points: int = 11000):
        self.source = source
        self.max_series = max_series
        self.max_points = max_points

    # ------------------------------------------------------------ entry points
    def eval_range(self, expr: ast.Expr, start_ns: int, end_ns: int, step_ns: int) -> Matrix:
        if step_ns <= 0:
            raise EvalError(STEP_MSG)
        if end_ns < start_ns:
            raise EvalError(END_BEFORE_START_MSG)
        if (end_ns - start_ns) // step_ns > self.max_points:
            raise EvalError(points_msg(self.max_points))
        if ast.is_log(expr):
            raise EvalError("log queries are not evaluated by the metric evaluator")
        steps = np.arange(start_ns, end_ns + 1, step_ns, dtype=np.int64)
        lit = _scalar_value(expr)
        if lit is not None:  # Loki PopulateMatrixFromScalar: one unlabelled series
            return Matrix([({}, [(int(t), lit) for t in steps])])
        out = self._eval(expr, _Ctx(start_ns, end_ns, steps))
        merged: dict[tuple, tuple[dict, list]] = {}
        for s in out:
            idx = np.nonzero(s.p)[0]
            if len(idx) == 0:
                continue
            ent = merged.setdefault(s.key, (s.labels, []))
            ent[1].extend(zip(steps[idx].tolist(), s.v[idx].tolist()))
            if len(merged) > self.max_series:
                raise EvalError(series_limit_msg(self.max_series))
        result = []
        for k in sorted(merged):
            labels, pts = merged[k]
            pts.sort(key=lambda x: x[0])
            result.append((dict(labels), pts))
        return Matrix(result)

    def eval_instant(self, expr: ast.Expr, time_ns: int) -> Vector | Scalar:
        if ast.is_log(expr):
            raise EvalError(INSTANT_LOG_MSG)
        lit = _scalar_value(expr)
        if lit is not None:
            return Scalar(time_ns, lit)
        out = self._eval(expr, _Ctx(time_ns, time_ns, np.array([time_ns], dtype=np.int64)))
        samples = [(dict(s.labels), time_ns, float(s.v[0])) for s in out if s.p[0]]
        if len(samples) > self.max_series:
            raise EvalError(series_limit_msg(self.max_series))
        if not _sortable(expr):
            samples.sort(key=lambda x: _key(x[0]))
        return Vector(samples)

    # ------------------------------------------------------------ dispatch
    def _eval(self, expr, ctx: _Ctx) -> list[_S]:
        if isinstance(expr, ast.RangeAggregation):
            return self._range_agg(expr, ctx)
        if isinstance(expr, ast.VectorAggregation):
            return self._vector_agg(expr, ctx)
        if isinstance(expr, ast.BinaryOp):
            return self._binop(expr, ctx)
        if isinstance(expr, ast.LabelReplace):
            return self._label_replace(expr, ctx)
        if isinstance(expr, ast.VectorExpr):
            return [_S({}, (), np.full(ctx.n, float(expr.value)), np.ones(ctx.n, dtype=bool))]
        kind = {ast.Literal: "LiteralExpr", ast.Selector: "MatchersExpr", ast.LogQuery: "PipelineExpr"}.get(
            type(expr), type(expr).__name__)
        raise EvalError(f"unexpected expr type (*syntax.{kind}) for Evaluator type (*logql.DefaultEvaluator) ")

    # ------------------------------------------------------------ range aggregations
    def _range_agg(self, node: ast.RangeAggregation, ctx: _Ctx) -> list[_S]:
        rng = node.range
        range_ns, off = int(rng.range_ns), int(rng.offset_ns or 0)
        ends = ctx.steps - off
        starts = ends - range_ns
        raw = self.source.samples(node, ctx.start, ctx.end)

        # merge series by their final label set (grouping applied unless the series is an error)
        parts: dict[tuple, tuple[dict, list]] = {}
        for s in raw:
            ts = np.asarray(s.ts, dtype=np.int64)
            if ts.size == 0:
                continue
            vals = np.asarray(s.values, dtype=np.float64)
            labels = dict(s.labels)
            if node.grouping is not None and not _has_error(labels):
                labels = _group_labels(labels, node.grouping)
            ent = parts.setdefault(_key(labels), (labels, []))
            ent[1].append((_key(dict(s.labels)), ts, vals))
        series = []
        for k, (labels, lst) in parts.items():
            if len(lst) == 1:
                ts, vals = lst[0][1], lst[0][2]
            else:
                lst.sort(key=lambda x: x[0])
                ts = np.concatenate([x[1] for x in lst])
                vals = np.concatenate([x[2] for x in lst])
                order = np.argsort(ts, kind="stable")
                ts, vals = ts[order], vals[order]
            los, his = _windows(ts, starts, ends)
            series.append((k, labels, ts, vals, los, his))
        series.sort(key=lambda x: x[0])

        # Loki fails the whole metric query on the first windowed sample of an error series
        first_err = None
        for k, labels, ts, vals, los, his in series:
            if _has_error(labels):
                hit = np.nonzero(his > los)[0]
                if len(hit) and (first_err is None or (hit[0], k) < first_err[:2]):
                    first_err = (hit[0], k, labels)
        if first_err is not None:
            raise EvalError(pipeline_error_msg(first_err[2]))

        if node.op == "absent_over_time":
            any_p = np.zeros(ctx.n, dtype=bool)
            for *_, los, his in series:
                any_p |= his > los
            if any_p.all():
                return []
            labels = self._absent_labels(node)
            return [_S(labels, _key(labels), np.ones(ctx.n), ~any_p)]

        out = []
        range_s = _go_seconds(range_ns)
        for k, labels, ts, vals, los, his in series:
            p = his > los
            if not p.any():
                continue
            v = np.full(ctx.n, np.nan)
            v[p] = self._window_values(node, ts, vals, los[p], his[p], starts[p], ends[p], range_s)
            out.append(_S(labels, k, v, p))
        return out

    @staticmethod
    def _window_values(node, ts, vals, los, his, starts, ends, range_s) -> np.ndarray:
        op = node.op
        if op in _SUM_KINDS or op == "avg_over_time":
            sums = _window_sums(vals, los, his)
            if op in ("rate", "bytes_rate"):
                return sums / range_s
            if op == "avg_over_time":
                return sums / (his - los)
            return sums
        if op == "max_over_time":
            return _reduceat(np.fmax, vals, los, his, np.nan)  # NaN only wins if all are NaN
        if op == "min_over_time":
            return _reduceat(np.fmin, vals, los, his, np.nan)
        if op == "first_over_time":
            return vals[los]
        if op == "last_over_time":
            return vals[his - 1]
        if op in ("stdvar_over_time", "stddev_over_time"):
            idx, seg, lens = _expand(los, his)
            x = vals[idx]
            with np.errstate(all="ignore"):
                mean = np.add.reduceat(x, seg) / lens
                dev = x - np.repeat(mean, lens)
                var = np.add.reduceat(dev * dev, seg) / lens
                return np.sqrt(var) if op == "stddev_over_time" else var
        if op == "quantile_over_time":
            q = float(node.param)
            return np.array([_quantile(q, vals[lo:hi]) for lo, hi in zip(los.tolist(), his.tolist())])
        if op == "rate_counter":
            return _rate_counter(ts, vals, los, his, starts, ends, range_s)
        raise EvalError(f"unsupported range vector aggregation operation: {op}")

    @staticmethod
    def _absent_labels(node: ast.RangeAggregation) -> dict[str, str]:
        """Loki absentLabels: the selector's `=` matchers; a name used twice or with another op is dropped."""
        out: dict[str, str] = {}
        dropped = []
        for m in node.range.query.selector.matchers:
            if m.name == "__name__":
                continue
            if m.op == "=" and m.name not in out:
                out[m.name] = m.value
            else:
                dropped.append(m.name)
        for name in dropped:
            out.pop(name, None)
        return out

    # ------------------------------------------------------------ vector aggregations
    def _vector_agg(self, node: ast.VectorAggregation, ctx: _Ctx) -> list[_S]:
        inner = self._eval(node.expr, ctx)
        g = node.grouping
        group_of = (lambda labels: {}) if g is None else (lambda labels: _group_labels(labels, g))
        return vo.aggregate(node.op, inner, group_of, _SEM, ctx.n, node.param)

    # ------------------------------------------------------------ binary operators
    def _binop(self, node: ast.BinaryOp, ctx: _Ctx) -> list[_S]:
        op = node.op
        lval, rval = _scalar_value(node.left), _scalar_value(node.right)
        if lval is not None or rval is not None:
            if op in _SET:
                side = "left" if lval is not None else "right"
                lit = lval if lval is not None else rval
                raise EvalError(f"unexpected literal for {side} leg of logical/set binary operation ({op}): "
                                f"{lit:f}")
            vec_expr = node.right if lval is not None else node.left
            return self._scalar_binop(op, lval, rval, self._eval(vec_expr, ctx), node.return_bool)
        lhs = [s for s in self._eval(node.left, ctx) if s.p.any()]
        rhs = [s for s in self._eval(node.right, ctx) if s.p.any()]
        m = node.matching

        def sig(labels):
            if m is None:
                return _key(labels)
            if m.on:
                keep = set(m.labels)
                return _key({k: v for k, v in labels.items() if k in keep})
            drop = set(m.labels)
            return _key({k: v for k, v in labels.items() if k not in drop})

        if op in _SET:
            return self._set_op(op, lhs, rhs, sig, ctx.n)
        return self._vector_binop(node, lhs, rhs, sig, ctx.n)

    @staticmethod
    def _scalar_binop(op, lval, rval, vec: list[_S], return_bool: bool) -> list[_S]:
        return vo.scalar_binop(op, lval, rval, vec, return_bool, _SEM)

    @staticmethod
    def _set_op(op, lhs, rhs, sig, n) -> list[_S]:
        return vo.set_op(op, lhs, rhs, sig, n)

    def _vector_binop(self, node: ast.BinaryOp, lhs, rhs, sig, n) -> list[_S]:
        m = node.matching
        if m is None:
            return vo.vector_binop(node.op, lhs, rhs, sig, n, None, False, [], [], node.return_bool, _SEM,
                                   matched=False)
        return vo.vector_binop(node.op, lhs, rhs, sig, n, m.card, m.on, list(m.labels), list(m.include),
                               node.return_bool, _SEM, matched=True)

    # ------------------------------------------------------------ label_replace
    def _label_replace(self, node: ast.LabelReplace, ctx: _Ctx) -> list[_S]:
        try:
            rx = re2.compile("^(?:" + node.regex + ")$")
        except Exception as err:  # re2.error; parser validates first, this is the backstop
            raise EvalError(f"invalid regex in label_replace: error parsing regexp: {err}") from None
        out = []
        cache: dict[tuple, dict] = {}
        for s in self._eval(node.expr, ctx):
            labels = cache.get(s.key)
            if labels is None:
                labels = s.labels
                mt = rx.search(s.labels.get(node.src, ""))
                if mt is not None:
                    res = _go_expand(node.replacement, mt, rx)
                    labels = {k: v for k, v in s.labels.items() if k != node.dst}
                    if res:
                        labels[node.dst] = res
                cache[s.key] = labels
            out.append(_S(labels, _key(labels), s.v, s.p))
        return out
