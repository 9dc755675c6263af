"""Turning log entries into sample series, and a sample source over entries held in memory.

The store-backed source (``engine.py``) and the in-memory one (conformance runner, ``logs query --stdin``) both
end in ``SeriesBuilder``: run each entry through the query's pipeline and sample extractor and collect the samples
per distinct label set.
"""
from __future__ import annotations

from collections.abc import Iterable

from . import ast as A
from .pipeline import SampleExtractor


def labels_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def fetch_range(node: A.RangeAggregation, start_ns: int, end_ns: int) -> tuple[int, int]:
    """Inclusive [lo, hi] of entry timestamps that can fall into any window of ``[start, end]``."""
    r = node.range
    return start_ns - r.range_ns - r.offset_ns + 1, end_ns - r.offset_ns


class SeriesBuilder:
    """Collects one range aggregation's samples per label set, as the evaluator wants them."""

    def __init__(self, node: A.RangeAggregation, max_series: int | None = None):
        self.extractor = SampleExtractor(node)
        self.max_series = max_series
        self._series: dict[tuple, tuple[dict, list[int], list[float]]] = {}

    def add(self, ts: int, line: str, stream: dict[str, str], metadata: dict[str, str] | None = None) -> None:
        got = self.extractor.extract(ts, line, stream, metadata)
        if got is None:
            return
        self.add_sample(ts, got[0], got[1])

    def add_sample(self, ts: int, labels: dict[str, str], value: float) -> None:
        key = labels_key(labels)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = (labels, [], [])
        s[1].append(ts)
        s[2].append(value)

    def series(self) -> list:
        from .evaluator import Series
        out = []
        for _key, (labels, ts, values) in sorted(self._series.items()):  # stable order: ties break alike
            if any(ts[i] > ts[i + 1] for i in range(len(ts) - 1)):
                order = sorted(range(len(ts)), key=ts.__getitem__)
                ts = [ts[i] for i in order]
                values = [values[i] for i in order]
            out.append(Series(labels=labels, ts=ts, values=values))
        return out


def selector_matches(selector: A.Selector, labels: dict[str, str]) -> bool:
    """Prometheus matcher semantics over a stream's labels (a missing label reads as "")."""
    from .labels import LabelsBuilder
    from .pipeline import StringFilter
    lb = LabelsBuilder(labels)
    return all(StringFilter(m).test(lb) for m in selector.matchers)


class MemorySource:
    """A sample source over ``(stream_labels, metadata, [(ts_ns, line), ...])`` streams kept in memory;
    each query's selector picks among them as the store's stream index would."""

    def __init__(self, streams: Iterable[tuple[dict[str, str], dict[str, str], list[tuple[int, str]]]]):
        self.streams = list(streams)

    def samples(self, node: A.RangeAggregation, start_ns: int, end_ns: int) -> list:
        lo, hi = fetch_range(node, start_ns, end_ns)
        b = SeriesBuilder(node)
        for stream, metadata, entries in self.streams:
            if not selector_matches(node.range.query.selector, stream):
                continue
            for ts, line in entries:
                if lo <= ts <= hi:
                    b.add(ts, line, stream, metadata)
        return b.series()
