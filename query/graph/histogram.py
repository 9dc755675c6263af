"""Latency histograms that add up: fixed log-spaced buckets for span durations, Prometheus-style quantiles.

Spans are counted into buckets whose upper bounds are 2^(i/4) ms (a bucket is ~19 % wide), so per-minute
rollups, edges from several minutes and edges from several sources merge by adding counts, and the quantile of a
merged histogram is the same whichever way it was summed. Istio's metrics bring their own explicit bounds; both
end in ``quantile`` (linear interpolation inside the bucket, as ``histogram_quantile`` does).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

# bucket index i holds durations in (2^((i-1-OFFSET)/STEPS), 2^((i-OFFSET)/STEPS)] ms; 0 holds everything <= 2^-10 ms
STEPS = 4
OFFSET = 40                      # 2^-10 ms ~ 1 us
MAX_INDEX = OFFSET + 22 * STEPS  # 2^22 ms ~ 70 min; longer spans land in the last bucket


def bucket_sql(duration_ns: str) -> str:
    """SQL: the bucket index (UInt16) of a duration given in nanoseconds."""
    return (f"toUInt16(least(greatest(ceil(log2(greatest({duration_ns}, 1) / 1e6) * {STEPS}), -{OFFSET}), "
            f"{MAX_INDEX - OFFSET}) + {OFFSET})")


def bucket_of(ms: float) -> int:
    if ms <= 0:
        return 0
    return int(min(max(math.ceil(math.log2(ms) * STEPS), -OFFSET), MAX_INDEX - OFFSET) + OFFSET)


def upper_bound(i: int) -> float:
    return 2.0 ** ((i - OFFSET) / STEPS)


def lower_bound(i: int) -> float:
    return 0.0 if i <= 0 else 2.0 ** ((i - 1 - OFFSET) / STEPS)


def cumulative(sparse: Mapping[int, float]) -> list[tuple[float, float]]:
    """Sparse {bucket index: count} -> [(upper bound ms, cumulative count)], the EdgeStats.latency_buckets form."""
    out = []
    total = 0.0
    for i in sorted(sparse):
        total += sparse[i]
        out.append((upper_bound(i), total))
    return out


def quantile(q: float, buckets: Iterable[tuple[float, float]], lowest: float | None = None) -> float | None:
    """``histogram_quantile`` over [(upper bound, cumulative count)] sorted by bound (the last may be +Inf).

    Linear interpolation inside the bucket that holds the rank; the lower edge of a bucket is the previous bound
    (or ``lowest``/0 for the first). A rank in the +Inf bucket answers the highest finite bound, as Prometheus."""
    bs = list(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    prev_bound, prev_count = (lowest if lowest is not None else 0.0), 0.0
    for bound, count in bs:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def sparse_quantile(q: float, sparse: Mapping[int, float]) -> float | None:
    """Quantile of a sparse span histogram; interpolates within the exact edges of the bucket holding the rank."""
    total = sum(sparse.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i in sorted(sparse):
        c = sparse[i]
        if c <= 0:
            continue
        if seen + c >= rank:
            lo, hi = lower_bound(i), upper_bound(i)
            return lo + (hi - lo) * (rank - seen) / c
        seen += c
    return upper_bound(max(sparse))
