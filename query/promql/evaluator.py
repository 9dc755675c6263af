"""PromQL evaluator: Prometheus 3 semantics over step-aligned numpy arrays.

Every expression is evaluated for all steps at once. An instant vector is a list of ``vectorops.S`` (one value
slot per step plus a presence mask), a scalar is one array of values, a range vector (only ever a function
argument or a top-level result) is raw samples plus the window end of every step. Aggregation and binary
operators are the ones LogQL uses (``query/vectorops.py``) with Prometheus' ``Semantics``.

Windows are left-open, right-closed (Prometheus >= 3.0): an instant selector at ``t`` takes the newest sample in
``(t - lookback, t]`` unless it is a stale marker; ``x[r]`` at ``t`` takes the samples in ``(t - r, t]`` with
stale markers removed; ``offset`` and ``@`` move ``t``.

Pushdown seam: before reading raw samples for ``f(selector[r])`` the evaluator offers the call to the source as
``source.range_function(f, matchers, r, window_ends)``; for a plain instant selector it offers
``source.last_grid(matchers, lookback, times)``. A source that returns ``GridSeries`` (labels as stored, one value
per requested time, a presence mask) has done the per-series work (e.g. ClickHouse ``timeSeriesRateToGrid``);
``None`` means "read raw samples instead". Name dropping and duplicate checks happen here either way. For
``sum``/``count`` of such a call the evaluator first offers the whole aggregation,
``source.aggregate_range_function(op, f, matchers, r, group_of, window_ends)``: grids per output group.
"""
from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .. import vectorops as vo
from ..logql.values import format_float, go_quote
from ..vectorops import S, key
from . import ast as A
from .errors import PromQLError
from .matchers import matches
from .parser import is_valid_label_name
from .source import GridSeries, SeriesSource, is_stale

__all__ = ["Evaluator", "PROM", "labels_string", "RangeValue", "Scalar", "StringValue"]

MS = 10**6
DUP_LABELSET = "vector cannot contain metrics with the same labelset"


def prom_quote(s: str) -> str:
    """Go %q, with invalid UTF-8 bytes (kept as surrogate escapes by the lexer) printed as ``\\xNN``."""
    if not any(0xDC80 <= ord(c) <= 0xDCFF for c in s):
        return go_quote(s)
    parts = []
    for c in s:
        if 0xDC80 <= ord(c) <= 0xDCFF:
            parts.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            parts.append(go_quote(c)[1:-1])
    return '"' + "".join(parts) + '"'


def labels_string(labels: dict) -> str:
    """Prometheus ``labels.String()``: ``{a="b", c="d"}`` sorted by name (``__name__`` first as a name)."""
    items = sorted(labels.items())
    return "{" + ", ".join(f"{k}={go_quote(v)}" for k, v in items) + "}"


def _prom_dup(side: str, sig_labels: dict, a: dict, b: dict) -> str:
    return (f"found duplicate series for the match group {labels_string(sig_labels)} on the {side} hand-side of "
            f"the operation: [{labels_string(a)}, {labels_string(b)}];many-to-many matching not allowed: "
            f"matching labels must be unique on one side")


PROM = vo.Semantics("prometheus", PromQLError, div_zero_nan=False, drop_name=True, kahan=True, dup_msg=_prom_dup,
                    stdvar_nonfinite_nan=True)


@dataclass
class Scalar:
    v: np.ndarray


@dataclass
class StringValue:
    value: str


@dataclass
class RangeValue:
    """Raw samples per series and, for every step, the window ``(ends - range, ends]``."""
    series: list[tuple[dict, np.ndarray, np.ndarray]]
    ends: np.ndarray
    range_ns: int
    node: A.Expr


_KEEP_NAME = {"last_over_time", "first_over_time", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc",
              "label_replace", "label_join"}
_MATH = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "exp": np.exp, "sqrt": np.sqrt, "ln": np.log,
    "log2": np.log2, "log10": np.log10, "sgn": np.sign, "acos": np.arccos, "acosh": np.arccosh,
    "asin": np.arcsin, "asinh": np.arcsinh, "atan": np.arctan, "atanh": np.arctanh, "cos": np.cos,
    "cosh": np.cosh, "sin": np.sin, "sinh": np.sinh, "tan": np.tan, "tanh": np.tanh,
    "deg": lambda v: v * 180 / math.pi, "rad": lambda v: v * math.pi / 180,
}
_PUSHABLE = {"rate", "increase", "delta", "irate", "idelta", "sum_over_time", "avg_over_time", "min_over_time",
             "max_over_time", "count_over_time", "last_over_time", "changes", "resets", "deriv",
             "present_over_time"}


def _trunc_div(a: int, b: int) -> int:
    """Go integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


class Evaluator:
    """Evaluates one parsed query over ``steps`` (ns). ``start_ns``/``end_ns`` are the query's bounds (for
    ``@ start()``/``@ end()``)."""

    def __init__(self, source: SeriesSource, start_ns: int, end_ns: int, lookback_ns: int = 300 * 10**9,
                 max_samples: int = 50_000_000, subquery_step_ns: int = 60 * 10**9, step_ns: int = 0):
        self.source = source
        self.step_ns = step_ns
        self.start_ns, self.end_ns = start_ns, end_ns
        self.lookback = lookback_ns
        self.max_samples = max_samples
        self.subquery_step = subquery_step_ns
        self.samples = 0

    # ------------------------------------------------------------ helpers
    def _count(self, n: int) -> None:
        self.samples += n
        if self.samples > self.max_samples:
            raise PromQLError("query processing would load too many samples into memory in query execution",
                              "execution")

    def _times(self, steps: np.ndarray, node) -> np.ndarray:
        """Evaluation times after ``@`` and ``offset``."""
        if node.at_mod == "start":
            t = np.full(len(steps), self.start_ns, dtype=np.int64)
        elif node.at_mod == "end":
            t = np.full(len(steps), self.end_ns, dtype=np.int64)
        elif node.at_ns is not None:
            t = np.full(len(steps), node.at_ns, dtype=np.int64)
        else:
            t = steps
        return t - node.offset_ns

    @staticmethod
    def check_dups(series: list[S], whole_range: bool = False) -> list[S]:
        """Prometheus refuses a vector holding one label set twice at the same step (whole range for range
        functions, whose output matrix is checked at once)."""
        seen: dict[tuple, np.ndarray] = {}
        for s in series:
            if not s.p.any():
                continue
            prev = seen.get(s.key)
            if prev is not None:
                if whole_range or (prev & s.p).any():
                    raise PromQLError(DUP_LABELSET, "execution")
                seen[s.key] = prev | s.p
            else:
                seen[s.key] = s.p
        return series

    # ------------------------------------------------------------ dispatch
    def eval(self, node: A.Expr, steps: np.ndarray):
        n = len(steps)
        if isinstance(node, A.NumberLiteral):
            return Scalar(np.full(n, node.value))
        if isinstance(node, A.StringLiteral):
            return StringValue(node.value)
        if isinstance(node, A.ParenExpr):
            return self.eval(node.expr, steps)
        if isinstance(node, A.VectorSelector):
            return self.vector_selector(node, steps)
        if isinstance(node, A.MatrixSelector):
            return self.matrix_selector(node, steps)
        if isinstance(node, A.SubqueryExpr):
            return self.subquery(node, steps)
        if isinstance(node, A.UnaryExpr):
            v = self.eval(node.expr, steps)
            if node.op == "+":
                return v
            if isinstance(v, Scalar):
                return Scalar(-v.v)
            out = []
            for s in v:
                labels = {k: x for k, x in s.labels.items() if k != "__name__"}
                out.append(S(labels, key(labels), -s.v, s.p))
            return self.check_dups(out)
        if isinstance(node, A.BinaryExpr):
            return self.binary(node, steps)
        if isinstance(node, A.AggregateExpr):
            return self.aggregate(node, steps)
        if isinstance(node, A.Call):
            return self.call(node, steps)
        raise PromQLError(f"unsupported expression {type(node).__name__}", "unsupported")

    # ------------------------------------------------------------ selectors
    def vector_selector(self, node: A.VectorSelector, steps: np.ndarray) -> list[S]:
        times = self._times(steps, node)
        if len(times) == 0:
            return []
        hook = getattr(self.source, "last_grid", None)
        if hook is not None:
            grid = hook(node.matchers, self.lookback, times)
            if grid is not None:
                return [S(dict(g.labels), key(g.labels), np.asarray(g.values, dtype=np.float64),
                          np.asarray(g.present, dtype=bool)) for g in grid]
        raw = self.source.select(node.matchers, int(times.min()) - self.lookback + 1, int(times.max()))
        out = []
        for r in raw:
            ts = np.asarray(r.ts, dtype=np.int64)
            vals = np.asarray(r.values, dtype=np.float64)
            if ts.size == 0:
                continue
            self._count(ts.size)
            idx = np.searchsorted(ts, times, side="right") - 1
            ok = idx >= 0
            ci = np.where(ok, idx, 0)
            ok &= ts[ci] > times - self.lookback
            ok &= ~is_stale(vals[ci])
            if not ok.any():
                continue
            labels = dict(r.labels)
            out.append(S(labels, key(labels), np.where(ok, vals[ci], np.nan), ok, np.where(ok, ts[ci], 0)))
        return out

    def matrix_selector(self, node: A.MatrixSelector, steps: np.ndarray) -> RangeValue:
        vs = node.vs
        ends = self._times(steps, vs)
        series = []
        if len(ends):
            raw = self.source.select(vs.matchers, int(ends.min()) - node.range_ns + 1, int(ends.max()))
            for r in raw:
                ts = np.asarray(r.ts, dtype=np.int64)
                vals = np.asarray(r.values, dtype=np.float64)
                keep = ~is_stale(vals)
                ts, vals = ts[keep], vals[keep]
                if ts.size:
                    self._count(ts.size)
                    series.append((dict(r.labels), ts, vals))
        return RangeValue(series, ends, node.range_ns, node)

    def subquery(self, node: A.SubqueryExpr, steps: np.ndarray) -> RangeValue:
        ends = self._times(steps, node)
        if len(ends) == 0:
            return RangeValue([], ends, node.range_ns, node)
        step = node.step_ns or self.subquery_step
        lo_ms = (int(ends.min()) - node.range_ns) // MS
        step_ms = max(step // MS, 1)
        start_ms = step_ms * _trunc_div(lo_ms, step_ms)
        if start_ms <= lo_ms:
            start_ms += step_ms
        end_ms = int(ends.max()) // MS
        if end_ms >= start_ms and (end_ms - start_ms) // step_ms + 1 > 11000 * 100:  # before allocating the grid
            raise PromQLError("subquery would evaluate too many steps", "execution")
        if end_ms < start_ms:
            grid = np.zeros(0, dtype=np.int64)
        else:
            grid = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64) * MS
        inner = self.eval(node.expr, grid) if len(grid) else []
        series = []
        for s in inner:
            idx = np.nonzero(s.p)[0]
            if len(idx):
                series.append((s.labels, grid[idx], s.v[idx]))
        return RangeValue(series, ends, node.range_ns, node)

    # ------------------------------------------------------------ binary operators
    def binary(self, node: A.BinaryExpr, steps: np.ndarray):
        lhs = self.eval(node.lhs, steps)
        rhs = self.eval(node.rhs, steps)
        op = node.op
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            res = vo.arith(op, lhs.v, rhs.v, PROM)
            return Scalar(res.astype(np.float64))
        if isinstance(lhs, Scalar):
            return self.check_dups(vo.scalar_binop(op, lhs.v, None, rhs, node.return_bool, PROM))
        if isinstance(rhs, Scalar):
            return self.check_dups(vo.scalar_binop(op, None, rhs.v, lhs, node.return_bool, PROM))
        m = node.matching or A.VectorMatching()
        lhs = [s for s in lhs if s.p.any()]
        rhs = [s for s in rhs if s.p.any()]
        if m.on:
            keep = set(m.labels)

            def sig_labels(labels):
                return {k: v for k, v in labels.items() if k in keep}
        else:
            drop = set(m.labels) | {"__name__"}

            def sig_labels(labels):
                return {k: v for k, v in labels.items() if k not in drop}

        def sig(labels):
            return key(sig_labels(labels))

        n = len(steps)
        if op in vo.SET:
            return vo.set_op(op, lhs, rhs, sig, n)
        card = {"many-to-one": "group_left", "one-to-many": "group_right"}.get(m.card)
        return vo.vector_binop(op, lhs, rhs, sig, n, card, m.on, list(m.labels), list(m.include),
                               node.return_bool, PROM, matched=True, sig_labels=sig_labels)

    # ------------------------------------------------------------ aggregation
    def aggregate(self, node: A.AggregateExpr, steps: np.ndarray) -> list[S]:
        n = len(steps)
        op = node.op
        param = None
        if node.param is not None:
            pv = self.eval(node.param, steps)
            param = pv.value if isinstance(pv, StringValue) else pv.v
        if op in ("topk", "bottomk", "limitk") and np.isnan(param).any():
            raise PromQLError("Parameter value is NaN", "execution")
        if op == "limit_ratio" and np.isnan(param).any():
            raise PromQLError("Ratio value is NaN", "execution")
        if op == "count_values" and not is_valid_label_name(param):
            raise PromQLError(f"invalid label name {prom_quote(param)}", "execution")
        if node.without:
            drop = set(node.grouping) | {"__name__"}

            def group_of(labels):
                return {k: v for k, v in labels.items() if k not in drop}
        else:
            keep = set(node.grouping)

            def group_of(labels):
                return {k: v for k, v in labels.items() if k in keep}
        pushed = self._try_aggregate_pushdown(op, node, group_of, steps) if param is None else None
        if pushed is not None:
            return [S(dict(g.labels), key(g.labels), np.asarray(g.values, dtype=np.float64),
                      np.asarray(g.present, dtype=bool)) for g in pushed]
        inner = self.eval(node.expr, steps)
        if op in ("topk", "bottomk"):
            k = np.clip(np.nan_to_num(param, nan=0.0), -2.0**62, 2.0**62).astype(np.int64)
            return vo.aggregate(op, inner, group_of, PROM, n, k)
        if op == "limitk":
            return self._limitk(inner, group_of, param, n)
        if op == "limit_ratio":
            raise PromQLError("limit_ratio is not supported", "unsupported")
        if op == "count_values":
            return self._count_values(inner, group_of, param, n)
        return vo.aggregate(op, inner, group_of, PROM, n, param)

    @staticmethod
    def _limitk(inner, group_of, param, n) -> list[S]:
        k = np.clip(param, -2.0**62, 2.0**62).astype(np.int64)
        groups: dict[tuple, list[S]] = {}
        for s in sorted((s for s in inner if s.p.any()), key=lambda s: s.key):
            groups.setdefault(key(group_of(s.labels)), []).append(s)
        out = []
        for members in groups.values():
            rank = np.zeros(n, dtype=np.int64)
            for s in members:
                keep = s.p & (rank < k)
                rank += s.p
                out.append(S(s.labels, s.key, s.v, keep))
        return out

    @staticmethod
    def _count_values(inner, group_of, label, n) -> list[S]:
        acc: dict[tuple, tuple[dict, np.ndarray]] = {}
        for s in inner:
            g = group_of(s.labels)
            idx = np.nonzero(s.p)[0]
            if not len(idx):
                continue
            vals = s.v[idx]
            for u in np.unique(vals.view(np.uint64)):
                fv = float(np.array([u], dtype=np.uint64).view(np.float64)[0])
                hit = idx[vals.view(np.uint64) == u]
                labels = dict(g)
                labels[label] = format_float(fv)
                k = key(labels)
                if k not in acc:
                    acc[k] = (labels, np.zeros(n))
                acc[k][1][hit] += 1
        return [S(labels, k, cnt, cnt > 0) for k, (labels, cnt) in acc.items()]

    # ------------------------------------------------------------ functions
    def call(self, node: A.Call, steps: np.ndarray):
        fn = node.func
        n = len(steps)
        if fn == "time":
            return Scalar(steps.astype(np.float64) / 1e9)
        if fn == "pi":
            return Scalar(np.full(n, math.pi))
        if fn == "step":
            return Scalar(np.full(n, self.step_ns / 1e9))
        if fn == "range":
            return Scalar(np.full(n, (self.end_ns - self.start_ns) / 1e9))
        if fn == "start":
            return Scalar(np.full(n, self.start_ns / 1e9))
        if fn == "end":
            return Scalar(np.full(n, self.end_ns / 1e9))
        if fn in ("min_of", "max_of"):
            a, b = (self.eval(x, steps).v for x in node.args)
            return Scalar(np.minimum(a, b) if fn == "min_of" else np.maximum(a, b))
        if fn in _RANGE_FUNCS:
            return self.range_call(node, steps)
        if fn == "vector":
            v = self.eval(node.args[0], steps).v
            return [S({}, (), v.copy(), np.ones(n, dtype=bool))]
        if fn == "scalar":
            vec = self.eval(node.args[0], steps)
            cnt = np.zeros(n, dtype=np.int64)
            val = np.full(n, np.nan)
            for s in vec:
                cnt += s.p
                val = np.where(s.p, s.v, val)
            return Scalar(np.where(cnt == 1, val, np.nan))
        if fn in ("days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month",
                  "year"):
            if node.args:
                vec = self.eval(node.args[0], steps)
            else:
                vec = [S({}, (), steps.astype(np.float64) / 1e9, np.ones(n, dtype=bool))]
            return self.check_dups([self._named(s, _date_fn(fn, s.v, s.p), drop=True) for s in vec])
        if fn == "absent":
            vec = self.eval(node.args[0], steps)
            anyp = np.zeros(n, dtype=bool)
            for s in vec:
                anyp |= s.p
            labels = _absent_labels(node.args[0])
            return [S(labels, key(labels), np.ones(n), ~anyp)]
        if fn == "histogram_quantile":
            q = self.eval(node.args[0], steps).v
            return self.histogram_quantile(q, self.eval(node.args[1], steps), n)
        if fn == "histogram_quantiles":
            vec = self.eval(node.args[0], steps)
            label = self.eval(node.args[1], steps).value
            if not is_valid_label_name(label):
                raise PromQLError(f"invalid label name {prom_quote(label)}", "execution")
            out = []
            for qa in node.args[2:]:
                q = self.eval(qa, steps).v
                for s in self.histogram_quantile(q, vec, n):
                    qs = format_float(float(q[0]))
                    if "." not in qs and qs not in ("NaN", "+Inf", "-Inf"):
                        qs += ".0"
                    labels = dict(s.labels)
                    labels[label] = qs
                    out.append(S(labels, key(labels), s.v, s.p))
            return self.check_dups(out)
        if fn == "histogram_fraction":
            lo = self.eval(node.args[0], steps).v
            hi = self.eval(node.args[1], steps).v
            return self.histogram_fraction(lo, hi, self.eval(node.args[2], steps), n)
        if fn in ("histogram_count", "histogram_sum", "histogram_avg", "histogram_stddev", "histogram_stdvar"):
            self.eval(node.args[0], steps)
            return []  # classic float samples are ignored by the native-histogram functions
        if fn in ("label_replace", "label_join"):
            return self.label_fn(node, steps)
        if fn in ("sort", "sort_desc"):
            vec = self.eval(node.args[0], steps)
            inner = sorted((s for s in vec if s.p.any()), key=lambda s: s.key)
            if not inner:
                return []
            V = np.stack([s.v for s in inner])
            P = np.stack([s.p for s in inner])
            return vo.select_k(fn, None, inner, V, P)
        if fn in ("sort_by_label", "sort_by_label_desc"):
            vec = self.eval(node.args[0], steps)
            names = [self.eval(a, steps).value for a in node.args[1:]]
            desc = fn.endswith("_desc")
            out = sorted(vec, key=lambda s: (tuple(_natkey(s.labels.get(nm, "")) for nm in names),
                                             _natkey_labels(s.labels)), reverse=desc)
            return out
        if fn == "timestamp":
            arg = A.unwrap_parens(node.args[0])
            vec = self.eval(node.args[0], steps)
            out = []
            for s in vec:
                if isinstance(arg, A.VectorSelector) and s.t is not None:
                    v = s.t.astype(np.float64) / 1e9
                else:
                    v = steps.astype(np.float64) / 1e9
                out.append(self._named(s, v, drop=True))
            return self.check_dups(out)
        vec = self.eval(node.args[0], steps)
        if fn in _MATH:
            f = _MATH[fn]
            with np.errstate(all="ignore"):
                return self.check_dups([self._named(s, f(s.v), drop=True) for s in vec])
        if fn in ("clamp", "clamp_min", "clamp_max", "round"):
            args = [self.eval(a, steps).v for a in node.args[1:]]
            out = []
            with np.errstate(all="ignore"):
                for s in vec:
                    if fn == "clamp":
                        lo, hi = args
                        v = np.maximum(lo, np.minimum(hi, s.v))
                        p = s.p & ~(hi < lo)
                        out.append(self._named(S(s.labels, s.key, v, p), v, drop=True))
                        continue
                    if fn == "clamp_min":
                        v = np.maximum(s.v, args[0])
                    elif fn == "clamp_max":
                        v = np.minimum(s.v, args[0])
                    else:
                        to = args[0] if args else 1.0
                        inv = 1.0 / np.asarray(to, dtype=np.float64)
                        v = np.floor(s.v * inv + 0.5) / inv
                    out.append(self._named(s, v, drop=True))
            return self.check_dups(out)
        raise PromQLError(f"function \"{fn}\" is not supported", "unsupported")

    @staticmethod
    def _named(s: S, v: np.ndarray, drop: bool) -> S:
        labels = s.labels
        if drop and "__name__" in labels:
            labels = {k: x for k, x in labels.items() if k != "__name__"}
            return S(labels, key(labels), v, s.p)
        return S(labels, s.key, v, s.p)

    # ------------------------------------------------------------ label functions
    def label_fn(self, node: A.Call, steps: np.ndarray) -> list[S]:
        vec = self.eval(node.args[0], steps)
        strs = [self.eval(a, steps).value for a in node.args[1:]]
        fn = node.func
        if fn == "label_replace":
            dst, repl, src, regex = strs
            from ..logql.re2util import RegexError, compile_re2
            try:
                rx = compile_re2(regex, anchored=True)
            except RegexError as err:
                raise PromQLError(f"invalid regular expression in label_replace(): {regex}: {err}",
                                  "execution") from None
            if not is_valid_label_name(dst):
                raise PromQLError(f"invalid destination label name in label_replace(): {dst}", "execution")
        else:
            dst, sep, srcs = strs[0], strs[1], strs[2:]
            if not is_valid_label_name(dst):
                raise PromQLError(f"invalid destination label name in label_join(): {dst}", "execution")
            for sl in srcs:
                if not is_valid_label_name(sl):
                    raise PromQLError(f"invalid source label name in label_join(): {sl}", "execution")
        out = []
        for s in vec:
            labels = s.labels
            if fn == "label_replace":
                mt = rx.search(labels.get(src, ""))
                if mt is not None:
                    res = vo.go_expand(repl, mt, rx)
                    labels = {k: v for k, v in labels.items() if k != dst}
                    if res:
                        labels[dst] = res
            else:
                res = sep.join(labels.get(sl, "") for sl in srcs)
                labels = {k: v for k, v in labels.items() if k != dst}
                if res:
                    labels[dst] = res
            out.append(S(labels, key(labels), s.v, s.p, s.t))
        return self.check_dups(out)

    # ------------------------------------------------------------ histograms
    @staticmethod
    def _buckets(vec: list[S]):
        groups: dict[tuple, tuple[dict, list[tuple[float, S]]]] = {}
        for s in vec:
            le = s.labels.get("le")
            if le is None:
                continue
            try:
                from ..logql.values import parse_float
                ub = parse_float(le)
            except ValueError:
                continue
            gl = {k: v for k, v in s.labels.items() if k != "le"}
            groups.setdefault(key(gl), (gl, []))[1].append((ub, s))
        out = {}
        for gk, (gl, members) in groups.items():  # grouped with the name, output without it (dups refused)
            gl = {k: v for k, v in gl.items() if k != "__name__"}
            out[gk] = (gl, members)
        return out

    def histogram_quantile(self, q: np.ndarray, vec: list[S], n: int) -> list[S]:
        out = []
        for gk, (gl, members) in self._buckets(vec).items():
            members.sort(key=lambda x: x[0])
            ubs = np.array([m[0] for m in members])
            C = np.stack([m[1].v for m in members])
            P = np.stack([m[1].p for m in members])
            anyp = P.any(axis=0)
            res = np.full(n, np.nan)
            cols_by_pattern: dict[bytes, list[int]] = {}
            for j in np.nonzero(anyp)[0]:
                cols_by_pattern.setdefault(P[:, j].tobytes(), []).append(j)
            for pat, cols in cols_by_pattern.items():
                rows = np.frombuffer(pat, dtype=bool)
                cols = np.array(cols)
                res[cols] = _bucket_quantile(q[cols], ubs[rows], C[np.ix_(rows, cols)])
            out.append(S(gl, key(gl), res, anyp))
        return self.check_dups(out)

    def histogram_fraction(self, lo: np.ndarray, hi: np.ndarray, vec: list[S], n: int) -> list[S]:
        out = []
        for gk, (gl, members) in self._buckets(vec).items():
            members.sort(key=lambda x: x[0])
            ubs = np.array([m[0] for m in members])
            C = np.stack([m[1].v for m in members])
            P = np.stack([m[1].p for m in members])
            anyp = P.any(axis=0)
            res = np.full(n, np.nan)
            for j in np.nonzero(anyp)[0]:
                rows = P[:, j]
                res[j] = _bucket_fraction(lo[j], hi[j], ubs[rows], C[rows, j])
            out.append(S(gl, key(gl), res, anyp))
        return self.check_dups(out)

    # ------------------------------------------------------------ range functions
    def range_call(self, node: A.Call, steps: np.ndarray) -> list[S]:
        fn = node.func
        n = len(steps)
        margs = [i for i, a in enumerate(node.args) if a.type == A.MATRIX]
        mi = margs[0]
        scalars = [self.eval(a, steps).v for i, a in enumerate(node.args) if i != mi]
        marg = node.args[mi]
        drop = fn not in _KEEP_NAME
        pushed = self._try_pushdown(fn, marg, steps)
        if pushed is not None:
            out = [self._named(S(dict(g.labels), key(g.labels), np.asarray(g.values, dtype=np.float64),
                                 np.asarray(g.present, dtype=bool)), np.asarray(g.values, dtype=np.float64),
                               drop) for g in pushed]
            return self.check_dups(out, whole_range=True)
        rv = self.eval(marg, steps)
        ends = rv.ends
        starts = ends - rv.range_ns
        if fn == "absent_over_time":
            anyp = np.zeros(n, dtype=bool)
            for labels, ts, vals in rv.series:
                lo, hi = vo.windows(ts, starts, ends)
                anyp |= hi > lo
            labels = _absent_labels(marg)
            return [S(labels, key(labels), np.ones(n), ~anyp)]
        if fn in ("double_exponential_smoothing",):
            sf, tf = scalars
            for x in (sf, tf):
                bad = (x <= 0) | (x >= 1)
                if bad.any():
                    what = "smoothing" if x is sf else "trend"
                    raise PromQLError(f"invalid {what} factor. Expected: 0 < {'sf' if x is sf else 'tf'} < 1, "
                                      f"got: {format_float(float(x[bad][0]))}", "execution")
        out = []
        range_s = rv.range_ns / 1e9
        for labels, ts, vals in rv.series:
            lo, hi = vo.windows(ts, starts, ends)
            has = hi > lo
            if not has.any():
                continue
            v = np.full(n, np.nan)
            p = has.copy()
            idx = np.nonzero(has)[0]
            r = _window_fn(fn, ts, vals, lo[idx], hi[idx], starts[idx], ends[idx], range_s,
                           [x[idx] for x in scalars], steps[idx])
            if isinstance(r, tuple):
                vals_out, ok = r
                v[idx] = vals_out
                p[idx] = ok
            else:
                v[idx] = r
            if not p.any():
                continue
            labels = dict(labels)
            if drop:
                labels.pop("__name__", None)
            out.append(S(labels, key(labels), v, p))
        return self.check_dups(out, whole_range=True)

    def _try_aggregate_pushdown(self, op: str, node: A.AggregateExpr, group_of, steps: np.ndarray):
        """``sum``/``count`` of ``rate``/``increase`` of a selector, offered whole to the source (which then
        returns one grid per group instead of one per series), or None."""
        hook = getattr(self.source, "aggregate_range_function", None)
        inner = node.expr
        while isinstance(inner, A.ParenExpr):
            inner = inner.expr
        if hook is None or op not in ("sum", "count") or not isinstance(inner, A.Call) \
                or inner.func not in ("rate", "increase") or len(inner.args) != 1 \
                or not isinstance(inner.args[0], A.MatrixSelector):
            return None
        marg = inner.args[0]
        return hook(op, inner.func, marg.vs.matchers, marg.range_ns, group_of, self._times(steps, marg.vs))

    def _try_pushdown(self, fn: str, marg: A.Expr, steps: np.ndarray):
        hook = getattr(self.source, "range_function", None)
        if hook is None or fn not in _PUSHABLE or not isinstance(marg, A.MatrixSelector):
            return None
        ends = self._times(steps, marg.vs)
        return hook(fn, marg.vs.matchers, marg.range_ns, ends)


_RANGE_FUNCS = {"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
                "last_over_time", "first_over_time", "present_over_time", "absent_over_time",
                "stddev_over_time", "stdvar_over_time", "mad_over_time", "rate", "irate", "increase", "delta",
                "idelta", "deriv", "changes", "resets", "ts_of_min_over_time", "ts_of_max_over_time",
                "ts_of_first_over_time", "ts_of_last_over_time", "quantile_over_time", "predict_linear",
                "double_exponential_smoothing"}


def _padded(vals: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Windows as rows of a (maxlen × windows) matrix plus its presence mask, for column-wise folds."""
    lens = hi - lo
    m = int(lens.max()) if len(lens) else 0
    k = np.arange(m)[:, None]
    mask = k < lens[None, :]
    idx = np.where(mask, lo[None, :] + k, 0)
    return vals[idx], mask, idx


def _window_fn(fn, ts, vals, lo, hi, starts, ends, range_s, scalars, steps):
    """One range function over the given windows (all non-empty). Returns values, or (values, present)."""
    cnt = hi - lo
    with np.errstate(all="ignore"):
        if fn in ("rate", "increase", "delta"):
            r = vo.extrapolated_rate(ts, vals, lo, hi, starts, ends, range_s, fn != "delta", fn == "rate")
            return r, cnt >= 2
        if fn in ("irate", "idelta"):
            ok = cnt >= 2
            i2 = np.where(ok, hi - 1, lo)
            i1 = np.where(ok, hi - 2, lo)
            last, prev = vals[i2], vals[i1]
            if fn == "idelta":
                return last - prev, ok
            dt = (ts[i2] - ts[i1]).astype(np.float64) / 1e9
            diff = np.where(last < prev, last, last - prev)
            return diff / dt, ok & (dt != 0)
        if fn == "count_over_time":
            return cnt.astype(np.float64)
        if fn == "present_over_time":
            return np.ones(len(lo))
        if fn == "last_over_time":
            return vals[hi - 1]
        if fn == "first_over_time":
            return vals[lo]
        if fn == "ts_of_last_over_time":
            return ts[hi - 1].astype(np.float64) / 1e9
        if fn == "ts_of_first_over_time":
            return ts[lo].astype(np.float64) / 1e9
        if fn == "max_over_time":
            return vo.reduceat(np.fmax, vals, lo, hi, np.nan)
        if fn == "min_over_time":
            return vo.reduceat(np.fmin, vals, lo, hi, np.nan)
        if fn in ("ts_of_max_over_time", "ts_of_min_over_time"):
            W, M, idx = _padded(vals, lo, hi)
            out = np.empty(len(lo))
            best = np.full(len(lo), np.nan)
            bt = np.zeros(len(lo), dtype=np.int64)
            for r in range(W.shape[0]):
                v = W[r]
                m = M[r]
                if fn == "ts_of_max_over_time":
                    better = m & ((v >= best) | np.isnan(best)) & ~np.isnan(v) | (m & np.isnan(best) & (r == 0))
                else:
                    better = m & ((v <= best) | np.isnan(best)) & ~np.isnan(v) | (m & np.isnan(best) & (r == 0))
                best = np.where(better, v, best)
                bt = np.where(better, ts[idx[r]], bt)
            out[:] = bt.astype(np.float64) / 1e9
            return out
        if fn in ("sum_over_time", "avg_over_time"):
            W, M, _ = _padded(vals, lo, hi)
            return vo.kahan_fold("sum" if fn == "sum_over_time" else "avg", W, M)
        if fn in ("stddev_over_time", "stdvar_over_time"):
            W, M, _ = _padded(vals, lo, hi)
            count = np.zeros(len(lo))
            mean = np.zeros(len(lo))
            cmean = np.zeros(len(lo))
            aux = np.zeros(len(lo))
            caux = np.zeros(len(lo))
            for r in range(W.shape[0]):
                m = M[r]
                x = W[r]
                count = np.where(m, count + 1, count)
                delta = x - (mean + cmean)
                nm, nc = vo.kahan_inc(delta / np.where(count == 0, 1, count), mean, cmean)
                mean, cmean = np.where(m, nm, mean), np.where(m, nc, cmean)
                na, nca = vo.kahan_inc(delta * (x - (mean + cmean)), aux, caux)
                aux, caux = np.where(m, na, aux), np.where(m, nca, caux)
            var = (aux + caux) / count
            return np.sqrt(var) if fn == "stddev_over_time" else var
        if fn == "quantile_over_time":
            q = scalars[0]
            return np.array([vo.quantile(float(q[j]), vals[a:b]) for j, (a, b) in
                             enumerate(zip(lo.tolist(), hi.tolist()))])
        if fn == "mad_over_time":
            out = []
            for a, b in zip(lo.tolist(), hi.tolist()):
                w = vals[a:b]
                if np.isnan(w).any():
                    out.append(math.nan)
                    continue
                med = vo.quantile(0.5, w)
                out.append(vo.quantile(0.5, np.abs(w - med)))
            return np.array(out)
        if fn == "changes":
            W, M, _ = _padded(vals, lo, hi)
            if W.shape[0] < 2:
                return np.zeros(len(lo))
            a, b = W[:-1], W[1:]
            ch = (a != b) & ~(np.isnan(a) & np.isnan(b)) & M[1:]
            return ch.sum(axis=0).astype(np.float64)
        if fn == "resets":
            W, M, _ = _padded(vals, lo, hi)
            if W.shape[0] < 2:
                return np.zeros(len(lo))
            return ((W[1:] < W[:-1]) & M[1:]).sum(axis=0).astype(np.float64)
        if fn in ("deriv", "predict_linear"):
            out = np.full(len(lo), np.nan)
            ok = cnt >= 2
            for j in np.nonzero(ok)[0]:
                a, b = int(lo[j]), int(hi[j])
                if fn == "deriv":
                    slope, _ = _linreg(ts[a:b], vals[a:b], int(ts[a]))
                    out[j] = slope
                else:
                    slope, icpt = _linreg(ts[a:b], vals[a:b], int(steps[j]))
                    out[j] = slope * scalars[0][j] + icpt
            return out, ok
        if fn == "double_exponential_smoothing":
            sf, tf = scalars
            out = np.full(len(lo), np.nan)
            ok = cnt >= 2
            for j in np.nonzero(ok)[0]:
                out[j] = _holt(vals[int(lo[j]):int(hi[j])], float(sf[j]), float(tf[j]))
            return out, ok
    raise PromQLError(f"function \"{fn}\" is not supported", "unsupported")


def _kahan(xs) -> float:
    s = c = 0.0
    for x in xs:
        t = s + x
        if math.isinf(t):
            c = 0.0
        elif abs(s) >= abs(x):
            c += (s - t) + x
        else:
            c += (x - t) + s
        s = t
    return s, c


def _linreg(ts: np.ndarray, vals: np.ndarray, intercept_ns: int):
    """Prometheus ``linearRegression`` with Kahan sums; x in seconds relative to ``intercept_ns``."""
    init = float(vals[0])
    if np.all(vals == init):
        if math.isinf(init):
            return math.nan, math.nan
        return 0.0, init
    x = (ts - intercept_ns).astype(np.float64) / 1e9
    y = vals.astype(np.float64)
    n = float(len(x))
    sx, cx = _kahan(x.tolist())
    sy, cy = _kahan(y.tolist())
    sxy, cxy = _kahan((x * y).tolist())
    sx2, cx2 = _kahan((x * x).tolist())
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    cov = sxy - sx * sy / n
    var = sx2 - sx * sx / n
    with np.errstate(all="ignore"):
        slope = cov / var if var != 0 else (math.nan if cov == 0 else math.copysign(math.inf, cov))
    intercept = sy / n - slope * sx / n
    return slope, intercept


def _holt(vals: np.ndarray, sf: float, tf: float) -> float:
    s0 = float(vals[0])
    b = float(vals[1]) - float(vals[0])
    s1 = s0
    for i in range(1, len(vals)):
        x = sf * float(vals[i])
        b = tf * (s1 - s0) + (1 - tf) * b if i > 1 else b
        s0, s1 = s1, x + (1 - sf) * (s1 + b)
    return s1


def _bucket_quantile(q: np.ndarray, ubs: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Prometheus ``BucketQuantile`` for one bucket layout (rows sorted by bound) over several steps."""
    m = C.shape[1]
    out = np.full(m, np.nan)
    qnan, qlo, qhi = np.isnan(q), q < 0, q > 1
    out[qlo] = -np.inf
    out[qhi] = np.inf
    todo = ~(qnan | qlo | qhi)
    if not todo.any() or len(ubs) == 0 or not np.isinf(ubs[-1]) or ubs[-1] < 0:
        return out
    # coalesce equal bounds
    uniq, inv = np.unique(ubs, return_inverse=True)
    if len(uniq) != len(ubs):
        C2 = np.zeros((len(uniq), m))
        np.add.at(C2, inv, C)
        C, ubs = C2, uniq
    C = C.copy()
    # monotonicity, ignoring tiny float noise
    prev = C[0].copy()
    for i in range(1, len(ubs)):
        cur = C[i]
        same = cur == prev
        with np.errstate(all="ignore"):
            absum = np.abs(prev) + np.abs(cur)
            close = ~same & (np.abs(prev - cur) / np.minimum(absum, np.finfo(float).max) < 1e-12)
        fix = ~same & (close | (cur < prev))
        C[i] = np.where(fix, prev, cur)
        prev = np.where(same | fix, prev, cur)
    k = len(ubs)
    if k < 2:
        return out
    obs = C[-1]
    with np.errstate(all="ignore"):
        rank = q * obs
        ge = C[:-1] >= rank[None, :]
        b = np.where(ge.any(axis=0), np.argmax(ge, axis=0), k - 1)
        cols = np.arange(m)
        bucket_end = ubs[b]
        bucket_start = np.where(b > 0, ubs[np.maximum(b - 1, 0)], 0.0)
        prev_count = np.where(b > 0, C[np.maximum(b - 1, 0), cols], 0.0)
        count = C[b, cols] - prev_count
        r = rank - prev_count
        val = bucket_start + (bucket_end - bucket_start) * (r / count)
        val = np.where(b == k - 1, ubs[k - 2], val)
        val = np.where((b == 0) & (ubs[0] <= 0), ubs[0], val)
        val = np.where(obs == 0, np.nan, val)
    return np.where(todo, val, out)


def _bucket_fraction(lower: float, upper: float, ubs: np.ndarray, counts: np.ndarray) -> float:
    """Prometheus ``BucketFraction`` for classic buckets: linear interpolation inside finite buckets; a bound
    inside an infinitely wide bucket (the first, when its upper bound is <= 0, and +Inf) takes none of it."""
    if len(ubs) == 0 or not np.isinf(ubs[-1]):
        return math.nan
    uniq, inv = np.unique(ubs, return_inverse=True)
    if len(uniq) != len(ubs):
        c2 = np.zeros(len(uniq))
        np.add.at(c2, inv, counts)
        ubs, counts = uniq, c2
    counts = np.maximum.accumulate(counts)
    total = float(counts[-1])
    if total == 0 or math.isnan(lower) or math.isnan(upper):
        return math.nan
    if lower >= upper:
        return 0.0
    ubl, cl = ubs.tolist(), counts.tolist()
    first_lb = 0.0 if ubl[0] > 0 else -math.inf

    def rank(x: float, is_lower: bool) -> float:
        prev_c = 0.0
        for i, (ub, c) in enumerate(zip(ubl, cl)):
            lb = first_lb if i == 0 else ubl[i - 1]
            if x <= lb:
                return prev_c
            if x < ub:
                if math.isinf(lb):
                    return c
                if math.isinf(ub):
                    return prev_c
                return prev_c + (c - prev_c) * (x - lb) / (ub - lb)
            prev_c = c
        return total

    return max(rank(upper, False) - rank(lower, True), 0.0) / total


def _absent_labels(expr: A.Expr) -> dict:
    if isinstance(expr, A.VectorSelector):
        ms = expr.matchers
    elif isinstance(expr, A.MatrixSelector):
        ms = expr.vs.matchers
    else:
        return {}
    out: dict[str, str] = {}
    has: set[str] = set()
    for m in ms:
        if m.name == "__name__":
            continue
        if m.op == "=" and m.name not in has:
            out[m.name] = m.value
            has.add(m.name)
        else:
            out.pop(m.name, None)
    return out


def _date_fn(fn: str, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.full(len(v), np.nan)
    for j in np.nonzero(p & np.isfinite(v))[0]:
        d = datetime.fromtimestamp(int(v[j]), tz=timezone.utc)
        if fn == "days_in_month":
            r = calendar.monthrange(d.year, d.month)[1]
        elif fn == "day_of_month":
            r = d.day
        elif fn == "day_of_week":
            r = (d.weekday() + 1) % 7
        elif fn == "day_of_year":
            r = d.timetuple().tm_yday
        elif fn == "hour":
            r = d.hour
        elif fn == "minute":
            r = d.minute
        elif fn == "month":
            r = d.month
        else:
            r = d.year
        out[j] = r
    return out


def _natkey(s: str):
    import re
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", s))


def _natkey_labels(labels: dict):
    return tuple((k, _natkey(v)) for k, v in sorted(labels.items()))


__all__ += ["GridSeries", "matches"]
