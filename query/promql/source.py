"""The data interface between the PromQL evaluator and storage, plus the in-memory implementation.

``SeriesSource.select`` is the one required method: raw samples of every series the matchers select, in
``[start_ns, end_ns]``, ascending, stale markers as the StaleNaN bit pattern. Two optional methods form the
pushdown seam (see ``evaluator.py``): a source that can compute a range function or the lookback "last sample"
per grid point itself (ClickHouse ``timeSeries*ToGrid``) implements them and returns ``None`` for anything it
does not want to do, and the evaluator falls back to ``select``.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from .ast import Matcher
from .errors import PromQLError
from .matchers import match_labels

__all__ = ["RawSeries", "GridSeries", "SeriesSource", "MemorySource", "STALE_NAN", "STALE_BITS", "is_stale",
           "note_start_dependent", "watch_start_dependence"]

STALE_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_BITS))[0]


class _Notes(threading.local):
    start_dependent = False


_notes = _Notes()


def note_start_dependent() -> None:
    """A source read values that depend on where its read range starts (delta series summed into running
    totals from the first selected sample): answers of pieces of a range differ from the whole (results cache)."""
    _notes.start_dependent = True


class watch_start_dependence:
    """``with watch_start_dependence() as w: ...`` then ``w.seen``: whether the block noted start dependence."""

    def __enter__(self):
        self._outer = _notes.start_dependent
        _notes.start_dependent = False
        self.seen = False
        return self

    def __exit__(self, *exc):
        self.seen = _notes.start_dependent
        _notes.start_dependent = self._outer or self.seen
        return False


def is_stale(values: np.ndarray) -> np.ndarray:
    """Mask of Prometheus stale markers (a NaN payload; ordinary NaN samples are real values)."""
    return np.asarray(values, dtype=np.float64).view(np.uint64) == np.uint64(STALE_BITS)


@dataclass
class RawSeries:
    labels: dict[str, str]
    ts: np.ndarray       # int64 ns, ascending
    values: np.ndarray   # float64


@dataclass
class GridSeries:
    """A pushed-down result: one value per requested time; ``present`` False where Prometheus emits nothing."""
    labels: dict[str, str]
    values: np.ndarray
    present: np.ndarray


class SeriesSource(Protocol):
    def select(self, matchers: list[Matcher], start_ns: int, end_ns: int) -> list[RawSeries]: ...

    # Optional pushdown hooks (return None to decline):
    # def range_function(self, fn: str, matchers: list[Matcher], range_ns: int,
    #                    times_ns: np.ndarray) -> list[GridSeries] | None: ...
    # def last_grid(self, matchers: list[Matcher], lookback_ns: int,
    #               times_ns: np.ndarray) -> list[GridSeries] | None: ...


@dataclass
class _Mem:
    labels: dict[str, str]
    ts: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    native: list[int] = field(default_factory=list)  # timestamps of native-histogram samples (not supported)
    arr: tuple | None = None


class MemorySource:
    """Series held in memory (tests, the conformance runner). Native-histogram samples are remembered only to
    answer "unsupported" when a query would read them."""

    def __init__(self) -> None:
        self.series: dict[tuple, _Mem] = {}
        self.samples_read = 0

    def clear(self) -> None:
        self.series.clear()

    def add(self, labels: dict[str, str], ts_ns: int, value: float) -> None:
        k = tuple(sorted(labels.items()))
        m = self.series.get(k)
        if m is None:
            m = self.series[k] = _Mem(dict(labels))
        m.ts.append(int(ts_ns))
        m.values.append(float(value))
        m.arr = None

    def add_native(self, labels: dict[str, str], ts_ns: int) -> None:
        k = tuple(sorted(labels.items()))
        m = self.series.get(k)
        if m is None:
            m = self.series[k] = _Mem(dict(labels))
        m.native.append(int(ts_ns))

    def add_series(self, labels: dict[str, str], ts_ns: Sequence[int], values: Sequence[float]) -> None:
        for t, v in zip(ts_ns, values):
            self.add(labels, t, v)

    def select(self, matchers: list[Matcher], start_ns: int, end_ns: int) -> list[RawSeries]:
        out = []
        for m in self.series.values():
            if not match_labels(matchers, m.labels):
                continue
            if any(start_ns <= t <= end_ns for t in m.native):
                raise PromQLError("native histograms are not supported", "unsupported")
            if m.arr is None:
                order = np.argsort(np.asarray(m.ts, dtype=np.int64), kind="stable")
                m.arr = (np.asarray(m.ts, dtype=np.int64)[order], np.asarray(m.values, dtype=np.float64)[order])
            ts, vals = m.arr
            lo, hi = np.searchsorted(ts, start_ns, "left"), np.searchsorted(ts, end_ns, "right")
            if hi > lo:
                out.append(RawSeries(dict(m.labels), ts[lo:hi], vals[lo:hi]))
                self.samples_read += hi - lo
        return out

    def label_names(self) -> list[str]:
        return sorted({k for m in self.series.values() for k in m.labels})
