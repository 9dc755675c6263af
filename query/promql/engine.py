"""PromQL engine: parse, check, evaluate, and shape results as Prometheus' HTTP API does.

``PromQLEngine(source_factory)`` is what the Prometheus-compatible HTTP API and the conformance runner call;
``source_factory(tenant)`` returns the ``SeriesSource`` for one tenant (ClickHouse-backed in the server,
``MemorySource`` in tests). Times are ns at the interface and truncated to ms inside, as Prometheus works in
ms. Errors are ``PromQLError`` with ``error_type`` ``bad_data`` (400), ``execution`` (422) or
``unsupported`` (501).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..logql.values import format_float
from . import ast as A
from .errors import PromQLError
from .evaluator import Evaluator, RangeValue, Scalar as _Scalar, StringValue as _String
from .parser import parse
from .source import SeriesSource

__all__ = ["PromQLEngine", "PromQLError", "Vector", "Scalar", "Matrix", "StringValue", "Sample", "format_ts"]

MS = 10**6


def format_ts(ts_ns: int):
    """Unix seconds as Prometheus prints them (ms precision): an int when whole, else a float."""
    ms = ts_ns // MS
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


@dataclass
class Sample:
    labels: dict[str, str]
    ts_ns: int
    value: float


@dataclass
class Vector:
    samples: list[Sample] = field(default_factory=list)

    def to_prom_json(self) -> dict:
        return {"resultType": "vector",
                "result": [{"metric": s.labels, "value": [format_ts(s.ts_ns), format_float(s.value)]}
                           for s in self.samples]}


@dataclass
class Scalar:
    ts_ns: int
    value: float

    def to_prom_json(self) -> dict:
        return {"resultType": "scalar", "result": [format_ts(self.ts_ns), format_float(self.value)]}


@dataclass
class StringValue:
    ts_ns: int
    value: str

    def to_prom_json(self) -> dict:
        return {"resultType": "string", "result": [format_ts(self.ts_ns), self.value]}


@dataclass
class Matrix:
    """``series`` is ``[(labels, [(ts_ns, value), ...]), ...]`` sorted by labels."""
    series: list[tuple[dict[str, str], list[tuple[int, float]]]] = field(default_factory=list)

    def to_prom_json(self) -> dict:
        return {"resultType": "matrix",
                "result": [{"metric": labels, "values": [[format_ts(t), format_float(v)] for t, v in pts]}
                           for labels, pts in self.series]}


def _ordered_output(expr: A.Expr) -> bool:
    """Instant results keep the evaluator's order only when the outermost operation orders them."""
    e = A.unwrap_parens(expr)
    if isinstance(e, A.Call) and e.func in ("sort", "sort_desc", "sort_by_label", "sort_by_label_desc"):
        return True
    return isinstance(e, A.AggregateExpr) and e.op in ("topk", "bottomk")


class PromQLEngine:
    def __init__(self, source_factory: Callable[[str], SeriesSource], lookback_ns: int = 300 * 10**9,
                 max_points: int = 11000, max_samples: int = 50_000_000, subquery_step_ns: int = 60 * 10**9):
        self.source_factory = source_factory
        self.lookback_ns = lookback_ns
        self.max_points = max_points
        self.max_samples = max_samples
        self.subquery_step_ns = subquery_step_ns
        self._cache: OrderedDict[str, A.Expr] = OrderedDict()
        self._cache_lock = threading.Lock()  # the API evaluates on a thread pool

    def parse(self, query: str) -> A.Expr:
        """Parse with a small LRU (dashboards repeat the same queries); returns a fresh tree each time."""
        import copy
        with self._cache_lock:
            e = self._cache.get(query)
            if e is not None:
                self._cache.move_to_end(query)
        if e is None:
            e = parse(query)
            with self._cache_lock:
                self._cache[query] = e
                if len(self._cache) > 256:
                    self._cache.popitem(last=False)
        return copy.deepcopy(e)

    def _evaluator(self, tenant: str, start_ns: int, end_ns: int, lookback_ns: int | None,
                   step_ns: int = 0) -> Evaluator:
        return Evaluator(self.source_factory(tenant), start_ns, end_ns,
                         lookback_ns if lookback_ns is not None else self.lookback_ns, self.max_samples,
                         self.subquery_step_ns, step_ns)

    def instant(self, query: str, time_ns: int, tenant: str = "default", lookback_ns: int | None = None):
        expr = self.parse(query)
        t = (int(time_ns) // MS) * MS
        ev = self._evaluator(tenant, t, t, lookback_ns)
        steps = np.array([t], dtype=np.int64)
        val = ev.eval(expr, steps)
        if isinstance(val, _Scalar):
            return Scalar(t, float(val.v[0]))
        if isinstance(val, _String):
            return StringValue(t, val.value)
        if isinstance(val, RangeValue):
            return _range_to_matrix(val)
        samples = [Sample(dict(s.labels), t, float(s.v[0])) for s in val if s.p[0]]
        if not _ordered_output(expr):
            samples.sort(key=lambda s: sorted(s.labels.items()))
        return Vector(samples)

    def range(self, query: str, start_ns: int, end_ns: int, step_ns: int, tenant: str = "default",
              lookback_ns: int | None = None) -> Matrix:
        expr = self.parse(query)
        if step_ns <= 0:
            raise PromQLError("zero or negative query resolution step widths are not accepted. "
                              "Try a positive integer", "bad_data")
        if end_ns < start_ns:
            raise PromQLError("end timestamp must not be before start time", "bad_data")
        if (end_ns - start_ns) // step_ns > self.max_points:
            raise PromQLError(f"exceeded maximum resolution of {self.max_points:,} points per timeseries. "
                              f"Try decreasing the query resolution (?step=XX)", "bad_data")
        if expr.type not in (A.SCALAR, A.VECTOR):
            raise PromQLError(f"invalid expression type \"{expr.type}\" for range query, must be Scalar or "
                              f"instant Vector", "bad_data")
        start = (int(start_ns) // MS) * MS
        end = (int(end_ns) // MS) * MS
        step = max((int(step_ns) // MS) * MS, MS)
        steps = np.arange(start, end + 1, step, dtype=np.int64)
        ev = self._evaluator(tenant, start, end, lookback_ns, step)
        val = ev.eval(expr, steps)
        if isinstance(val, _Scalar):
            return Matrix([({}, list(zip(steps.tolist(), val.v.tolist())))])
        merged: dict[tuple, tuple[dict, list]] = {}
        for s in val:
            idx = np.nonzero(s.p)[0]
            if len(idx) == 0:
                continue
            ent = merged.setdefault(s.key, (s.labels, []))
            ent[1].extend(zip(steps[idx].tolist(), s.v[idx].tolist()))
        out = []
        for k in sorted(merged):
            labels, pts = merged[k]
            pts.sort(key=lambda x: x[0])
            out.append((dict(labels), pts))
        return Matrix(out)


def _range_to_matrix(rv: RangeValue) -> Matrix:
    end = int(rv.ends[0])
    start = end - rv.range_ns
    out = []
    for labels, ts, vals in rv.series:
        lo, hi = np.searchsorted(ts, start, "right"), np.searchsorted(ts, end, "right")
        if hi > lo:
            out.append((dict(labels), list(zip(ts[lo:hi].tolist(), vals[lo:hi].tolist()))))
    out.sort(key=lambda x: sorted(x[0].items()))
    return Matrix(out)
