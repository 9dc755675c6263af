"""Step-aligned cache of range-query results, as the query-frontends of Mimir, Thanos and Loki keep.

A Grafana or Kiali panel asks the same ``query_range`` again at every refresh, with the window slid forward by a
step or two. In PromQL each step's value depends only on that step's time (and the step width, the look-back and
the data), so the answer for the steps the last request already covered is the same, unless data arrived for
them since. This cache keeps, per (tenant, query, step, grid phase, look-back), the last answer's steps that are
older than ``max_freshness`` (data that late is not expected; Mimir's and Loki's default is also 10 minutes), and
asks the engine only for the steps it does not hold: at a refresh, the new steps and the fresh tail.

Queries whose steps are not independent of the request are never cached: ``@ start()``/``@ end()`` and the
``start()``/``end()``/``range()`` functions depend on the request's bounds, a fixed ``@`` time or a negative offset
can read data newer than the step, and a selector that does not fix ``__name__`` with ``=`` can meet the check
that a name-dropping function's output holds no label set twice over the *whole* range (a piece would pass it).
Answers that read delta series raw (summed into running totals from the first sample read, so they depend on the
range's start) are evaluated whole and not kept. Limits on samples and series apply to each evaluated piece.
Bounded by what is held (``max_points``: points, plus a share per series), least recently used out first, and
by age (``ttl_s``, from an entry's first evaluation: late data and data that retention dropped since are not
served for longer).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import ast as A
from .engine import MS, Matrix
from .source import watch_start_dependence

__all__ = ["RangeResultsCache", "cacheable"]

NS = 1_000_000_000
_REQUEST_BOUND_FUNCS = {"start", "end", "range"}
SERIES_WEIGHT = 16  # what one cached series costs beyond its points (labels, arrays), counted in points


def cacheable(expr: A.Expr) -> bool:
    """True when every step of a range query over ``expr`` depends only on its own time and data up to it."""
    for node in A.walk(expr):
        if getattr(node, "at_ns", None) is not None or getattr(node, "at_mod", None):
            return False
        if getattr(node, "offset_ns", 0) < 0:
            return False
        if isinstance(node, A.Call) and node.func in _REQUEST_BOUND_FUNCS:
            return False
        if isinstance(node, A.VectorSelector) and not any(
                m.name == "__name__" and m.op == "=" for m in node.matchers):
            return False
    return True


@dataclass
class _Extent:
    """Cached steps ``lo``..``hi`` (grid times, inclusive) and, per label set, the points inside them."""
    lo: int
    hi: int
    series: dict[tuple, tuple[dict, np.ndarray, np.ndarray]]
    points: int
    made: float


def _slice(series: dict, lo: int, hi: int) -> dict[tuple, tuple[dict, np.ndarray, np.ndarray]]:
    out = {}
    for key, (labels, ts, vals) in series.items():
        a, b = np.searchsorted(ts, lo, "left"), np.searchsorted(ts, hi, "right")
        if b > a:
            out[key] = (labels, ts[a:b], vals[a:b])
    return out


def _from_matrix(m: Matrix) -> dict[tuple, tuple[dict, np.ndarray, np.ndarray]]:
    out = {}
    for labels, pts in m.series:
        if pts:
            ts, vals = zip(*pts)
            out[tuple(sorted(labels.items()))] = (labels, np.asarray(ts, dtype=np.int64),
                                                  np.asarray(vals, dtype=np.float64))
    return out


def _join(parts: list[dict]) -> dict[tuple, tuple[dict, np.ndarray, np.ndarray]]:
    """Series of consecutive, non-overlapping step ranges, in time order, joined per label set."""
    acc: dict[tuple, tuple[dict, list, list]] = {}
    for part in parts:
        for key, (labels, ts, vals) in part.items():
            ent = acc.setdefault(key, (labels, [], []))
            ent[1].append(ts)
            ent[2].append(vals)
    return {k: (lb, np.concatenate(ts) if len(ts) > 1 else ts[0], np.concatenate(vs) if len(vs) > 1 else vs[0])
            for k, (lb, ts, vs) in acc.items()}


class RangeResultsCache:
    """``range()`` with the engine's signature, answering cached steps from memory (see the module's text)."""

    def __init__(self, engine, max_freshness_s: float = 600.0, max_points: int = 2_000_000,
                 ttl_s: float = 3600.0, clock: Callable[[], int] = time.time_ns):
        self.engine = engine
        self.max_freshness_ns = int(max_freshness_s * NS)
        self.max_points = max_points
        self.ttl_s = ttl_s
        self.clock = clock
        self._extents: OrderedDict[tuple, _Extent] = OrderedDict()
        self._points = 0
        self._lock = threading.Lock()
        self.hits = 0        # steps answered from the cache
        self.misses = 0      # steps the engine evaluated

    @property
    def enabled(self) -> bool:
        return self.max_freshness_ns > 0 and self.max_points > 0

    def clear(self) -> None:
        with self._lock:
            self._extents.clear()
            self._points = 0

    def _get(self, key: tuple) -> _Extent | None:
        with self._lock:
            ext = self._extents.get(key)
            if ext is not None:
                if time.monotonic() - ext.made > self.ttl_s:
                    self._drop(key)
                    return None
                self._extents.move_to_end(key)
            return ext

    def _drop(self, key: tuple) -> None:
        ext = self._extents.pop(key, None)
        if ext is not None:
            self._points -= ext.points

    def _put(self, key: tuple, ext: _Extent) -> None:
        with self._lock:
            self._drop(key)
            if ext.points > self.max_points // 4:  # one answer may not push out everything else
                return
            self._extents[key] = ext
            self._points += ext.points
            while self._points > self.max_points and self._extents:
                self._drop(next(iter(self._extents)))

    def range(self, query: str, start_ns: int, end_ns: int, step_ns: int, tenant: str = "default",
              lookback_ns: int | None = None) -> Matrix:
        start_dependent = [False]

        def evaluate(lo: int, hi: int) -> Matrix:
            with watch_start_dependence() as w:
                m = self.engine.range(query, lo, hi, step, tenant, lookback_ns=lookback_ns)
            start_dependent[0] |= w.seen
            return m

        # the engine's own ms grid, so that the pieces asked for lie on the request's grid
        start = (int(start_ns) // MS) * MS
        step = max((int(step_ns) // MS) * MS, MS) if step_ns > 0 else step_ns
        if not self.enabled or step <= 0 or end_ns < start_ns:
            return self.engine.range(query, start_ns, end_ns, step_ns, tenant, lookback_ns=lookback_ns)
        expr = self.engine.parse(query)  # also the engine's parse errors, before anything is looked up
        if not cacheable(expr):
            return evaluate(start_ns, end_ns)
        last = start + ((int(end_ns) // MS) * MS - start) // step * step
        n_steps = (last - start) // step + 1
        cutoff = self.clock() - self.max_freshness_ns
        keep_hi = start + (cutoff - start) // step * step  # the last step old enough to keep
        key = (tenant, query, step, start % step, lookback_ns)
        ext = self._get(key)
        parts: list[dict] = []
        if ext is not None and ext.lo <= last and ext.hi >= start:
            if start < ext.lo:
                parts.append(_from_matrix(evaluate(start, ext.lo - step)))
            parts.append(_slice(ext.series, max(start, ext.lo), min(last, ext.hi)))
            if last > ext.hi:
                parts.append(_from_matrix(evaluate(ext.hi + step, last)))
            cached = (min(last, ext.hi) - max(start, ext.lo)) // step + 1
        else:
            whole = evaluate(start, last)
            if start_dependent[0]:  # it is the whole answer, but one that a later piece could not continue
                with self._lock:
                    self.misses += n_steps
                return whole
            parts.append(_from_matrix(whole))
            cached = 0
        if start_dependent[0]:  # pieces of this answer differ from the whole: evaluate it whole, keep nothing
            with self._lock:
                self._drop(key)
                self.misses += n_steps
            return self.engine.range(query, start, last, step, tenant, lookback_ns=lookback_ns)
        with self._lock:
            self.hits += cached
            self.misses += n_steps - cached
        series = _join(parts)
        if keep_hi >= start:
            kept = _slice(series, start, keep_hi)
            points = sum(len(ts) for _, ts, _ in kept.values()) + SERIES_WEIGHT * (len(kept) + 1)
            made = ext.made if ext is not None and cached else time.monotonic()
            self._put(key, _Extent(start, min(keep_hi, last), kept, points, made))
        return Matrix([(dict(labels), list(zip(ts.tolist(), vals.tolist())))
                       for _, (labels, ts, vals) in sorted(series.items(), key=lambda kv: kv[0])])
