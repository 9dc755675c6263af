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
def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


@dataclass
class _S:
    """A series during evaluation: one value slot per step, ``p`` says whether a point exists."""
    labels: dict[str, str]
    key: tuple
    v: np.ndarray
    p: np.ndarray


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
    """Loki MergeBinOp arithmetic/comparison on numpy arrays (or scalars) with Go float semantics."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return np.where(b == 0, np.nan, a / np.where(b == 0, 1.0, b))
        if op == "%":
            return np.where(b == 0, np.nan, np.fmod(a, np.where(b == 0, 1.0, b)))
        if op == "^":
            return np.power(a, b)  # C pow == Go math.Pow special cases (0^-1=+Inf, (-8)^(1/3)=NaN)
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if op == "<":
            return a < b
        if op == "<=":
            return a <= b
    raise EvalError(f"should never happen: unexpected operation: ({op})")


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
def _windows(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Index bounds [lo, hi) of the samples in each left-open, right-closed window."""
    return np.searchsorted(ts, starts, side="right"), np.searchsorted(ts, ends, side="right")


def _reduceat(ufunc, vals: np.ndarray, los: np.ndarray, his: np.ndarray, pad: float) -> np.ndarray:
    """``ufunc.reduce(vals[lo:hi])`` for each non-empty window, in C, O(n + sum of window sizes)."""
    padded = np.append(vals, pad)
    idx = np.empty(2 * len(los), dtype=np.intp)
    idx[0::2] = los
    idx[1::2] = his
    return ufunc.reduceat(padded, idx)[0::2]


def _window_sums(vals: np.ndarray, los: np.ndarray, his: np.ndarray) -> np.ndarray:
    """Per-window sums; prefix sums when that is exact (integral values: counts, bytes)."""
    if len(vals) and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)) and \
            float(np.abs(vals).sum()) < 2.0 ** 53:
        cs = np.concatenate(([0.0], np.cumsum(vals)))
        return cs[his] - cs[los]
    return _reduceat(np.add, vals, los, his, 0.0)


def _expand(los: np.ndarray, his: np.ndarray):
    """Flattened sample indices of all windows plus each window's start offset in that array."""
    lens = his - los
    starts = np.cumsum(lens) - lens
    idx = np.repeat(los - starts, lens) + np.arange(int(lens.sum()))
    return idx, starts, lens


def _quantile(q: float, w: np.ndarray) -> float:
    """Prometheus/Loki quantile: sort, rank = q(n-1), linear interpolation."""
    if len(w) == 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    w = np.sort(w)
    n = len(w)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return float(w[lower] * (1 - weight) + w[upper] * weight)


def _rate_counter(ts: np.ndarray, vals: np.ndarray, los, his, starts, ends, range_s: float) -> np.ndarray:
    """Prometheus extrapolatedRate(isCounter, isRate) against the window bounds, ns clock."""
    out = np.zeros(len(los))
    n = his - los
    many = n >= 2
    if not many.any():
        return out
    lo, hi = los[many], his[many]
    first_v, last_v = vals[lo], vals[hi - 1]
    first_t, last_t = ts[lo], ts[hi - 1]
    # counter resets: whenever a value drops, the previous value is added back
    drops = np.zeros(len(vals) + 1)
    if len(vals) > 1:
        drops[1:len(vals)] = np.where(vals[1:] < vals[:-1], vals[:-1], 0.0)
    corr = _reduceat(np.add, drops[:-1], lo + 1, hi, 0.0)
    result = last_v - first_v + corr
    with np.errstate(all="ignore"):
        to_start = (first_t - starts[many]).astype(np.float64) / 1e9
        to_end = (ends[many] - last_t).astype(np.float64) / 1e9
        sampled = (last_t - first_t).astype(np.float64) / 1e9
        avg = sampled / (n[many] - 1)
        threshold = avg * 1.1
        to_start = np.where(to_start >= threshold, avg / 2, to_start)
        zero_ok = (result > 0) & (first_v >= 0)
        to_zero = sampled * (first_v / np.where(result == 0, 1.0, result))
        to_start = np.where(zero_ok & (to_zero < to_start), to_zero, to_start)
        to_end = np.where(to_end >= threshold, avg / 2, to_end)
        factor = (sampled + to_start + to_end) / sampled / range_s
        out[many] = result * factor
    return out


# ---------------------------------------------------------------- go-style regexp expansion
def _is_word(c: str) -> bool:
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _go_expand(template: str, m, rx) -> str:
    """Go ``Regexp.Expand``: ``$1``/``${1}``/``$name``/``${name}``, ``$$``; malformed ``$`` is literal."""
    out = []
    i, n = 0, len(template)
    names = rx.groupindex
    ngroups = rx.groups
    while i < n:
        c = template[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        i += 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        brace = i < n and template[i] == "{"
        j = i + 1 if brace else i
        k = j
        while k < n and _is_word(template[k]):
            k += 1
        name = template[j:k]
        if not name or (brace and (k >= n or template[k] != "}")):
            out.append("$")  # malformed: keep '$' and continue with the text after it
            continue
        i = k + 1 if brace else k
        num = -1
        if name.isascii() and name.isdigit() and len(name) <= 8:
            num = int(name)
        if num >= 0:
            if num <= ngroups and m.start(num) >= 0:
                out.append(m.group(num))
        elif name in names:
            g = names[name]
            if m.start(g) >= 0:
                out.append(m.group(g))
    return "".join(out)


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
        # label order, so that ties (topk) break the same way whatever order the source produced series in
        inner = sorted((s for s in inner if s.p.any()), key=lambda s: s.key)
        op = node.op
        g = node.grouping
        groups: dict[tuple, tuple[dict, list[_S]]] = {}
        for s in inner:
            if g is None:
                gl = {}
            else:
                gl = _group_labels(s.labels, g)
            groups.setdefault(_key(gl), (gl, []))[1].append(s)
        out: list[_S] = []
        for gk, (gl, members) in groups.items():
            V = np.stack([s.v for s in members])
            P = np.stack([s.p for s in members])
            if op in ("topk", "bottomk", "approx_topk", "sort", "sort_desc"):
                out.extend(self._select(op, node.param, members, V, P))
                continue
            any_p = P.any(axis=0)
            with np.errstate(all="ignore"):
                if op == "sum":
                    val = np.where(P, V, 0.0).sum(axis=0)
                elif op == "count":
                    val = P.sum(axis=0).astype(np.float64)
                elif op in ("avg", "stddev", "stdvar", "min", "max"):
                    val = self._fold_rows(op, V, P)
                else:
                    raise EvalError(f"unsupported vector aggregation operation: {op}")
            out.append(_S(gl, gk, val, any_p))
        return out

    @staticmethod
    def _fold_rows(op: str, V: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Loki's per-group running aggregates, applied row by row (input order) for every step at once."""
        n = V.shape[1]
        seen = np.zeros(n, dtype=bool)
        cnt = np.zeros(n)
        mean = np.zeros(n)
        val = np.zeros(n)
        for v, p in zip(V, P):
            new = p & ~seen
            upd = p & seen
            cnt = np.where(p, cnt + 1, cnt)
            if op == "avg":
                mean = np.where(new, v, np.where(upd, mean + (v - mean) / np.where(cnt == 0, 1, cnt), mean))
            elif op in ("stddev", "stdvar"):
                delta = v - mean
                nmean = mean + delta / np.where(cnt == 0, 1, cnt)
                val = np.where(new, 0.0, np.where(upd, val + delta * (v - nmean), val))
                mean = np.where(new, v, np.where(upd, nmean, mean))
            elif op == "max":
                val = np.where(new | (upd & ((val < v) | np.isnan(val))), v, val)
            elif op == "min":
                val = np.where(new | (upd & ((val > v) | np.isnan(val))), v, val)
            seen |= p
        if op == "avg":
            return mean
        if op == "stdvar":
            return val / np.where(cnt == 0, 1, cnt)
        if op == "stddev":
            return np.sqrt(val / np.where(cnt == 0, 1, cnt))
        return val

    @staticmethod
    def _select(op, param, members: list[_S], V: np.ndarray, P: np.ndarray) -> list[_S]:
        """topk/bottomk/sort/sort_desc: keep original series; NaN ranks after every number."""
        desc = op in ("topk", "approx_topk", "sort_desc")
        isnan = np.isnan(V)
        vkey = np.where(isnan, 0.0, -V if desc else V)
        order = np.lexsort((vkey, isnan, ~P), axis=0)  # stable: ties keep input (label) order
        ranks = np.empty_like(order)
        cols = np.arange(V.shape[1])
        ranks[order, cols[None, :]] = np.arange(V.shape[0])[:, None]
        if op in ("sort", "sort_desc"):
            keep = P
        else:
            keep = P & (ranks < int(param))
        out = [_S(s.labels, s.key, s.v, keep[i]) for i, s in enumerate(members)]
        if V.shape[1] == 1:  # instant query: the order is part of the answer
            out = [out[i] for i in order[:, 0]]
        return out

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
        out = []
        for s in vec:
            a = lval if lval is not None else s.v
            b = rval if rval is not None else s.v
            res = _arith(op, a, b)
            if op in _CMP:
                if return_bool:
                    out.append(_S(s.labels, s.key, res.astype(np.float64), s.p))
                else:  # filter, keeping the vector sample's value whichever side it is on
                    out.append(_S(s.labels, s.key, s.v, s.p & res))
            else:
                out.append(_S(s.labels, s.key, res, s.p))
        return out

    @staticmethod
    def _set_op(op, lhs, rhs, sig, n) -> list[_S]:
        def any_by_sig(side):
            acc: dict[tuple, np.ndarray] = {}
            for s in side:
                k = sig(s.labels)
                acc[k] = acc[k] | s.p if k in acc else s.p.copy()
            return acc

        none = np.zeros(n, dtype=bool)
        if op == "or":
            left_any = any_by_sig(lhs)
            return lhs + [_S(s.labels, s.key, s.v, s.p & ~left_any.get(sig(s.labels), none)) for s in rhs]
        right_any = any_by_sig(rhs)
        if op == "and":
            return [_S(s.labels, s.key, s.v, s.p & right_any.get(sig(s.labels), none)) for s in lhs]
        return [_S(s.labels, s.key, s.v, s.p & ~right_any.get(sig(s.labels), none)) for s in lhs]

    def _vector_binop(self, node: ast.BinaryOp, lhs, rhs, sig, n) -> list[_S]:
        op, m = node.op, node.matching
        card = m.card if m is not None else None
        if card == "group_right":
            many, one, side = rhs, lhs, "left"
        else:
            many, one, side = lhs, rhs, "right"
        errors = []  # (first failing step, priority, message): Loki stops at the first one it meets

        one_by_sig: dict[tuple, list[_S]] = {}
        for s in one:
            one_by_sig.setdefault(sig(s.labels), []).append(s)
        for lst in one_by_sig.values():
            if len(lst) > 1:
                cnt = np.sum([s.p for s in lst], axis=0)
                bad = np.nonzero(cnt > 1)[0]
                if len(bad):
                    errors.append((bad[0], 0, DUP_SIDE_MSG.format(side=side)))

        entries = []
        for ls in many:
            k = sig(ls.labels)
            for rs in one_by_sig.get(k, ()):
                mask = ls.p & rs.p
                if mask.any():
                    metric = self._result_metric(ls.labels, rs.labels, m)
                    entries.append((k, ls, rs, mask, metric))

        # matching uniqueness checks (done by Loki before the operator, so filtered matches count)
        counts: dict[tuple, np.ndarray] = {}
        for k, ls, rs, mask, metric in entries:
            ck = k if card is None else (k, _key(metric))
            counts[ck] = counts[ck] + mask if ck in counts else mask.astype(np.int64)
        for c in counts.values():
            bad = np.nonzero(c > 1)[0]
            if len(bad):
                errors.append((bad[0], 1, MANY_TO_ONE_MSG if card is None else GROUPING_UNIQUE_MSG))
        if errors:
            raise EvalError(min(errors)[2])

        out = []
        for k, ls, rs, mask, metric in entries:
            left, right = (rs.v, ls.v) if card == "group_right" else (ls.v, rs.v)
            res = _arith(op, left, right)
            if op in _CMP:
                if node.return_bool:
                    v, p = res.astype(np.float64), mask
                else:
                    v, p = left, mask & res
            else:
                v, p = res, mask
            out.append(_S(metric, _key(metric), v, p))
        return out

    @staticmethod
    def _result_metric(many: dict, one: dict, m: ast.VectorMatching | None) -> dict:
        """Loki resultMetric: one-to-one keeps on-labels / drops ignored ones; include copies from the one side."""
        out = dict(many)
        if m is None:
            return out
        if m.card is None:
            if m.on:
                keep = set(m.labels)
                out = {k: v for k, v in out.items() if k in keep}
            else:
                for name in m.labels:
                    out.pop(name, None)
        for name in m.include:
            val = one.get(name, "")
            if val:
                out[name] = val
            else:
                out.pop(name, None)
        return out

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
