"""Aggregation, binary-operator and vector-matching core shared by the LogQL and PromQL evaluators.

Both languages evaluate a query over a grid of steps and hold every intermediate series as one value slot per
step (``S.v``) plus a presence mask (``S.p``), so one implementation serves both: Loki's ``MergeBinOp`` and
``VectorAggEvaluator`` were modelled on Prometheus' engine and differ only where ``Semantics`` says so:

* ``x / 0``: NaN in LogQL, IEEE ±Inf/NaN in PromQL;
* ``__name__``: PromQL drops it from arithmetic results and ``bool`` comparisons, LogQL has no such label;
* ``sum``/``avg``: PromQL uses Kahan–Neumaier compensated sums (with an incremental mean once a sum overflows),
  Loki plain float sums and a running mean;
* error texts and the error class.

The window kernels (per-step windows over raw samples) are shared as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["S", "key", "Semantics", "CMP", "SET", "arith", "scalar_binop", "set_op", "vector_binop",
           "aggregate", "fold_rows", "select_k", "kahan_fold", "windows", "reduceat", "window_sums", "expand",
           "quantile", "extrapolated_rate", "go_expand"]

CMP = {"==", "!=", ">", ">=", "<", "<="}
SET = {"and", "or", "unless"}
ARITH = {"+", "-", "*", "/", "%", "^", "atan2"}


@dataclass
class S:
    """A series during evaluation: one value slot per step; ``p`` says whether a point exists.
    ``t`` (optional) holds the sample timestamp behind each slot (PromQL ``timestamp()``)."""
    labels: dict
    key: tuple
    v: np.ndarray
    p: np.ndarray
    t: np.ndarray | None = None


def key(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


def _loki_dup(side: str, sig_labels: dict, a: dict, b: dict) -> str:
    return ("found duplicate series on the {side} hand-side;many-to-many matching not allowed: "
            "matching labels must be unique on one side").format(side=side)


@dataclass(frozen=True)
class Semantics:
    name: str
    error: type
    div_zero_nan: bool = True
    drop_name: bool = False
    kahan: bool = False
    stdvar_nonfinite_nan: bool = False  # PromQL: a NaN/±Inf member makes stddev/stdvar NaN
    dup_msg: Callable[[str, dict, dict, dict], str] = _loki_dup
    many_to_one_msg: str = "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    grouping_unique_msg: str = "multiple matches for labels: grouping labels must ensure unique matches"


# ---------------------------------------------------------------- element-wise operators
def arith(op: str, a, b, sem: Semantics | None = None):
    """Arithmetic/comparison on numpy arrays (or scalars) with Go float semantics."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nan_div = sem is None or sem.div_zero_nan
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if nan_div:
                return np.where(b == 0, np.nan, a / np.where(b == 0, 1.0, b))
            return a / b
        if op == "%":
            return np.where(b == 0, np.nan, np.fmod(a, np.where(b == 0, 1.0, b)))
        if op == "^":
            return np.power(a, b)  # C pow == Go math.Pow special cases (0^-1=+Inf, (-8)^(1/3)=NaN)
        if op == "atan2":
            return np.arctan2(a, b)
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
    err = sem.error if sem is not None else ValueError
    raise err(f"should never happen: unexpected operation: ({op})")


def _drop_name(labels: dict) -> dict:
    if "__name__" in labels:
        labels = {k: v for k, v in labels.items() if k != "__name__"}
    return labels


def scalar_binop(op, lval, rval, vec: list[S], return_bool: bool, sem: Semantics) -> list[S]:
    """Vector ⊕ scalar (``lval``/``rval`` is the scalar: a float or a per-step array; the other is None)."""
    out = []
    for s in vec:
        a = lval if lval is not None else s.v
        b = rval if rval is not None else s.v
        res = arith(op, a, b, sem)
        labels, k = s.labels, s.key
        if sem.drop_name and (op not in CMP or return_bool) and "__name__" in labels:
            labels = _drop_name(labels)
            k = key(labels)
        if op in CMP:
            if return_bool:
                out.append(S(labels, k, res.astype(np.float64), s.p))
            else:  # filter, keeping the vector sample's value whichever side it is on
                out.append(S(labels, k, s.v, s.p & res))
        else:
            out.append(S(labels, k, res, s.p))
    return out


def set_op(op, lhs: list[S], rhs: list[S], sig, n) -> list[S]:
    """``and``/``or``/``unless`` per step, matching on ``sig(labels)``."""
    def any_by_sig(side):
        acc: dict[tuple, np.ndarray] = {}
        for s in side:
            k = sig(s.labels)
            acc[k] = acc[k] | s.p if k in acc else s.p.copy()
        return acc

    none = np.zeros(n, dtype=bool)
    if op == "or":
        left_any = any_by_sig(lhs)
        return lhs + [S(s.labels, s.key, s.v, s.p & ~left_any.get(sig(s.labels), none), s.t) for s in rhs]
    right_any = any_by_sig(rhs)
    if op == "and":
        return [S(s.labels, s.key, s.v, s.p & right_any.get(sig(s.labels), none), s.t) for s in lhs]
    return [S(s.labels, s.key, s.v, s.p & ~right_any.get(sig(s.labels), none), s.t) for s in lhs]


def result_metric(many: dict, one: dict, op: str, card, on: bool, labels: list[str], include: list[str],
                  return_bool: bool, sem: Semantics, matched: bool) -> dict:
    """Labels of a vector-matching result (Prometheus/Loki ``resultMetric``)."""
    out = dict(many)
    if sem.drop_name and (op not in CMP or return_bool):
        out.pop("__name__", None)
    if not matched:
        return out
    if card is None:
        if on:
            keep = set(labels)
            out = {k: v for k, v in out.items() if k in keep}
        else:
            for name in labels:
                out.pop(name, None)
    for name in include:
        val = one.get(name, "")
        if val:
            out[name] = val
        else:
            out.pop(name, None)
    return out


def vector_binop(op: str, lhs: list[S], rhs: list[S], sig, n: int, card, on: bool, labels: list[str],
                 include: list[str], return_bool: bool, sem: Semantics, matched: bool = True,
                 sig_labels=None) -> list[S]:
    """Vector ⊕ vector with one-to-one or ``group_left``/``group_right`` (``card``) matching.

    Matching errors are detected before comparison filtering (Prometheus and Loki agree: a filtered-away
    match still makes the match ambiguous); the earliest failing step wins, as an evaluation in step order
    would stop there."""
    if card == "group_right":
        many, one, side = rhs, lhs, "left"
    else:
        many, one, side = lhs, rhs, "right"
    errors = []

    one_by_sig: dict[tuple, list[S]] = {}
    for s in one:
        one_by_sig.setdefault(sig(s.labels), []).append(s)
    for sk, lst in one_by_sig.items():
        if len(lst) > 1:
            cnt = np.sum([s.p for s in lst], axis=0)
            bad = np.nonzero(cnt > 1)[0]
            if len(bad):
                step = bad[0]
                present = [s for s in lst if s.p[step]]
                sl = sig_labels(present[0].labels) if sig_labels else {}
                errors.append((step, 0, sem.dup_msg(side, sl, present[0].labels, present[1].labels)))

    entries = []
    for ls in many:
        k = sig(ls.labels)
        for rs in one_by_sig.get(k, ()):
            mask = ls.p & rs.p
            if mask.any():
                metric = result_metric(ls.labels, rs.labels, op, card, on, labels, include, return_bool, sem,
                                       matched)
                entries.append((k, ls, rs, mask, metric))

    counts: dict[tuple, np.ndarray] = {}
    for k, ls, rs, mask, metric in entries:
        ck = k if card is None else (k, key(metric))
        counts[ck] = counts[ck] + mask if ck in counts else mask.astype(np.int64)
    for c in counts.values():
        bad = np.nonzero(c > 1)[0]
        if len(bad):
            errors.append((bad[0], 1, sem.many_to_one_msg if card is None else sem.grouping_unique_msg))
    if errors:
        raise sem.error(min(errors, key=lambda e: (e[0], e[1]))[2])

    out = []
    for k, ls, rs, mask, metric in entries:
        left, right = (rs.v, ls.v) if card == "group_right" else (ls.v, rs.v)
        res = arith(op, left, right, sem)
        if op in CMP:
            if return_bool:
                v, p = res.astype(np.float64), mask
            else:
                v, p = left, mask & res
        else:
            v, p = res, mask
        out.append(S(metric, key(metric), v, p))
    return out


# ---------------------------------------------------------------- aggregation
def kahan_inc(inc, s, c):
    """Kahan–Neumaier step (Prometheus ``kahanSumInc``) on arrays."""
    with np.errstate(all="ignore"):
        t = s + inc
        big = np.abs(s) >= np.abs(inc)
        c = np.where(np.isinf(t), 0.0, np.where(big, c + ((s - t) + inc), c + ((inc - t) + s)))
    return t, c


def kahan_fold(op: str, V: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Prometheus ``sum``/``avg`` over rows (present cells only), for all columns at once."""
    n = V.shape[1]
    s = np.zeros(n)
    c = np.zeros(n)
    cnt = np.zeros(n)
    mean = np.zeros(n)
    incr = np.zeros(n, dtype=bool)
    with np.errstate(all="ignore"):
        for v, p in zip(V, P):
            if op == "sum":
                ns, nc = kahan_inc(v, s, c)
                s = np.where(p, ns, s)
                c = np.where(p, nc, c)
                continue
            first = p & (cnt == 0)
            cnt = np.where(p, cnt + 1, cnt)
            upd = p & ~first
            # regular summation while the sum stays finite
            ns, nc = kahan_inc(v, s, c)
            ok = upd & ~incr & ~np.isinf(ns)
            switch = upd & ~incr & np.isinf(ns)
            s = np.where(first, v, np.where(ok, ns, s))
            c = np.where(first, 0.0, np.where(ok, nc, c))
            # overflow: continue with an incremental mean
            mean = np.where(switch, s / (cnt - 1), mean)
            c = np.where(switch, c / (cnt - 1), c)
            incr = incr | switch
            do_inc = upd & incr
            q = (cnt - 1) / np.where(cnt == 0, 1, cnt)
            nm, nc2 = kahan_inc(v / np.where(cnt == 0, 1, cnt), q * mean, q * c)
            mean = np.where(do_inc, nm, mean)
            c = np.where(do_inc, nc2, c)
        if op == "sum":
            return np.where(np.isinf(s), s, s + c)
        safe = np.where(cnt == 0, 1, cnt)
        return np.where(incr, mean + c, s / safe + c / safe)


def fold_rows(op: str, V: np.ndarray, P: np.ndarray, nonfinite_nan: bool = False) -> np.ndarray:
    """Running aggregates applied row by row (input order) for every step at once (Loki's, and Prometheus'
    min/max/stddev/stdvar, which agree)."""
    n = V.shape[1]
    seen = np.zeros(n, dtype=bool)
    cnt = np.zeros(n)
    mean = np.zeros(n)
    val = np.zeros(n)
    with np.errstate(all="ignore"):
        for v, p in zip(V, P):
            new = p & ~seen
            upd = p & seen
            cnt = np.where(p, cnt + 1, cnt)
            if op == "avg":
                mean = np.where(new, v, np.where(upd, mean + (v - mean) / np.where(cnt == 0, 1, cnt), mean))
            elif op in ("stddev", "stdvar"):
                delta = v - mean
                nmean = mean + delta / np.where(cnt == 0, 1, cnt)
                init = np.where(np.isfinite(v), 0.0, np.nan) if nonfinite_nan else 0.0
                val = np.where(new, init, np.where(upd, val + delta * (v - nmean), val))
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


def select_k(op, k, members: list[S], V: np.ndarray, P: np.ndarray) -> list[S]:
    """topk/bottomk/sort/sort_desc: keep original series; NaN ranks after every number.
    ``k`` is a number or a per-step array."""
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
        keep = P & (ranks < np.asarray(k))
    out = [S(s.labels, s.key, s.v, keep[i], s.t) for i, s in enumerate(members)]
    if V.shape[1] == 1:  # instant query: the order is part of the answer
        out = [out[i] for i in order[:, 0]]
    return out


def aggregate(op: str, inner: list[S], group_of: Callable[[dict], dict], sem: Semantics, n: int,
              param=None) -> list[S]:
    """Vector aggregation per group (``group_of`` maps a series' labels to its group's labels).

    Handles sum/count/avg/min/max/stddev/stdvar/group/topk/bottomk/sort/sort_desc/quantile; ``param`` is the
    per-step parameter (k or φ) where needed. Series are visited in label order so ties break the same way
    whatever order the source produced them in."""
    inner = sorted((s for s in inner if s.p.any()), key=lambda s: s.key)
    groups: dict[tuple, tuple[dict, list[S]]] = {}
    for s in inner:
        gl = group_of(s.labels)
        groups.setdefault(key(gl), (gl, []))[1].append(s)
    out: list[S] = []
    for gk, (gl, members) in groups.items():
        V = np.stack([s.v for s in members])
        P = np.stack([s.p for s in members])
        if op in ("topk", "bottomk", "approx_topk", "sort", "sort_desc"):
            out.extend(select_k(op, param, members, V, P))
            continue
        any_p = P.any(axis=0)
        with np.errstate(all="ignore"):
            if op == "sum":
                val = kahan_fold("sum", V, P) if sem.kahan else np.where(P, V, 0.0).sum(axis=0)
            elif op == "avg" and sem.kahan:
                val = kahan_fold("avg", V, P)
            elif op == "count":
                val = P.sum(axis=0).astype(np.float64)
            elif op == "group":
                val = np.ones(V.shape[1])
            elif op in ("avg", "stddev", "stdvar", "min", "max"):
                val = fold_rows(op, V, P, sem.stdvar_nonfinite_nan)
            elif op == "quantile":
                q = np.broadcast_to(np.asarray(param, dtype=np.float64), (V.shape[1],))
                val = np.array([quantile(float(q[j]), V[P[:, j], j]) if any_p[j] else math.nan
                                for j in range(V.shape[1])])
            else:
                raise sem.error(f"unsupported vector aggregation operation: {op}")
        out.append(S(gl, gk, val, any_p))
    return out


# ---------------------------------------------------------------- window kernels
def windows(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Index bounds [lo, hi) of the samples in each left-open, right-closed window."""
    return np.searchsorted(ts, starts, side="right"), np.searchsorted(ts, ends, side="right")


def reduceat(ufunc, vals: np.ndarray, los: np.ndarray, his: np.ndarray, pad: float) -> np.ndarray:
    """``ufunc.reduce(vals[lo:hi])`` for each non-empty window, in C, O(n + sum of window sizes)."""
    padded = np.append(vals, pad)
    idx = np.empty(2 * len(los), dtype=np.intp)
    idx[0::2] = los
    idx[1::2] = his
    return ufunc.reduceat(padded, idx)[0::2]


def window_sums(vals: np.ndarray, los: np.ndarray, his: np.ndarray) -> np.ndarray:
    """Per-window sums; prefix sums when that is exact (integral values: counts, bytes)."""
    if len(vals) and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)) and \
            float(np.abs(vals).sum()) < 2.0 ** 53:
        cs = np.concatenate(([0.0], np.cumsum(vals)))
        return cs[his] - cs[los]
    return reduceat(np.add, vals, los, his, 0.0)


def expand(los: np.ndarray, his: np.ndarray):
    """Flattened sample indices of all windows plus each window's start offset in that array."""
    lens = his - los
    starts = np.cumsum(lens) - lens
    idx = np.repeat(los - starts, lens) + np.arange(int(lens.sum()))
    return idx, starts, lens


def quantile(q: float, w: np.ndarray) -> float:
    """Prometheus/Loki quantile: sort (NaN first, as Go's sort.Float64s), rank = q(n-1), interpolate."""
    if len(w) == 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    w = np.asarray(w, dtype=np.float64)
    nan = np.isnan(w)
    w = np.concatenate((w[nan], np.sort(w[~nan])))
    n = len(w)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return float(w[lower] * (1 - weight) + w[upper] * weight)


def extrapolated_rate(ts: np.ndarray, vals: np.ndarray, los, his, starts, ends, range_s: float,
                      is_counter: bool = True, is_rate: bool = True) -> np.ndarray:
    """Prometheus ``extrapolatedRate`` per window (ns clock); NaN where a window holds fewer than 2 samples."""
    out = np.full(len(los), np.nan)
    n = his - los
    many = n >= 2
    if not many.any():
        return out
    lo, hi = los[many], his[many]
    first_v, last_v = vals[lo], vals[hi - 1]
    first_t, last_t = ts[lo], ts[hi - 1]
    result = last_v - first_v
    if is_counter:
        # counter resets: whenever a value drops, the previous value is added back
        drops = np.zeros(len(vals) + 1)
        if len(vals) > 1:
            drops[1:len(vals)] = np.where(vals[1:] < vals[:-1], vals[:-1], 0.0)
        result = result + reduceat(np.add, drops[:-1], lo + 1, hi, 0.0)
    with np.errstate(all="ignore"):
        to_start = (first_t - starts[many]).astype(np.float64) / 1e9
        to_end = (ends[many] - last_t).astype(np.float64) / 1e9
        sampled = (last_t - first_t).astype(np.float64) / 1e9
        avg = sampled / (n[many] - 1)
        threshold = avg * 1.1
        to_start = np.where(to_start >= threshold, avg / 2, to_start)
        if is_counter:
            zero_ok = (result > 0) & (first_v >= 0)
            to_zero = sampled * (first_v / np.where(result == 0, 1.0, result))
            to_start = np.where(zero_ok & (to_zero < to_start), to_zero, to_start)
        to_end = np.where(to_end >= threshold, avg / 2, to_end)
        factor = (sampled + to_start + to_end) / sampled
        if is_rate:
            factor = factor / range_s
        out[many] = result * factor
    return out


# ---------------------------------------------------------------- go-style regexp expansion
def _is_word(c: str) -> bool:
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


def go_expand(template: str, m, rx) -> str:
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
