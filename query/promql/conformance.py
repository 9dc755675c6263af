"""Run Prometheus' ``promqltest`` files through the public PromQL engine and report per-file pass rates.

``python -m meshscope.query.promql.conformance DIR [--store] [-v] [FILE ...]``

Each ``load`` goes into a fresh source (``MemorySource``; with ``--store``, the source that
``query/promql/store_source.py`` offers as ``conformance_source()``, skipped when it offers none), each ``eval``
runs through ``PromQLEngine``. An eval is *passed*, *failed* (listed with the reason) or *unsupported*: the
engine answered ``unsupported`` (HTTP 501), or the expectation is a native histogram. Annotation expectations
(``expect warn``/``info``) are not checked: meshscope produces no annotations.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .engine import Matrix, PromQLEngine, Scalar, StringValue, Vector
from .errors import PromQLError
from .source import STALE_NAN, MemorySource
from .testfile import NATIVE, STALE, Clear, Eval, Load, almost_equal, parse_testfile

__all__ = ["FileResult", "run_file", "run_dir", "main", "CORE_FILES"]

CORE_FILES = {"selectors.test", "operators.test", "aggregators.test", "functions.test", "staleness.test",
              "range_queries.test", "literals.test", "histograms.test"}


@dataclass
class FileResult:
    name: str
    total: int = 0
    passed: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    unsupported: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def native(self) -> int:
        return sum(1 for u in self.unsupported if "native histogram" in u[2])

    @property
    def failed(self) -> int:
        return len(self.failures)

    def rate(self) -> float:
        return self.passed / self.total if self.total else 1.0

    def non_native_rate(self) -> float:
        """Pass rate once native-histogram cases (outside meshscope's classic-only scope) are set aside."""
        d = self.total - self.native
        return self.passed / d if d else 1.0

    def supported_rate(self) -> float:
        d = self.total - len(self.unsupported)
        return self.passed / d if d else 1.0


def _fmt_labels(labels: dict) -> str:
    from .evaluator import labels_string
    return labels_string(labels)


def _load(source, cmd: Load) -> None:
    """Samples at i × interval; with ``load_with_nhcb`` each classic histogram is also announced under its
    base name as a native histogram (Prometheus' NHCB), which makes queries of that name "unsupported"."""
    for sl in cmd.series:
        name = sl.labels.get("__name__", "")
        if cmd.nhcb and name.endswith("_bucket") and "le" in sl.labels:
            base = {k: v for k, v in sl.labels.items() if k != "le"}
            base["__name__"] = name[:-len("_bucket")]
            for i, v in enumerate(sl.values):
                if v is not None:
                    source.add_native(base, i * cmd.interval_ns)
        for i, v in enumerate(sl.values):
            t = i * cmd.interval_ns
            if v is None:
                continue
            if v is NATIVE or v == NATIVE:
                source.add_native(sl.labels, t)
            elif v is STALE or v == STALE:
                source.add(sl.labels, t, STALE_NAN)
            else:
                source.add(sl.labels, t, v)


def _check_instant(ev: Eval, res) -> str | None:
    if ev.string is not None:
        if not isinstance(res, StringValue):
            return f"expected string, got {type(res).__name__}"
        return None if res.value == ev.string else f"expected string {ev.string!r}, got {res.value!r}"
    if ev.range_vector is not None:
        if not isinstance(res, Matrix):
            return f"expected range vector, got {type(res).__name__}"
        start, _end, step = ev.range_vector
        return _compare_matrix(ev, res, start, step)
    if ev.scalar is not None:
        if not isinstance(res, Scalar):
            return f"expected scalar {ev.scalar}, got {type(res).__name__}"
        return None if almost_equal(ev.scalar, res.value) else f"expected scalar {ev.scalar}, got {res.value}"
    if isinstance(res, Matrix):
        return "unexpected range vector result for instant query"
    if isinstance(res, Scalar):
        if not ev.expected:
            return f"expected empty vector, got scalar {res.value}"
        return f"expected vector, got scalar {res.value}"
    if isinstance(res, StringValue):
        return "unexpected string result"
    want = []
    for sl in ev.expected:
        if len(sl.values) != 1:
            return f"bad expectation line for {sl.labels}"
        want.append((sl.labels, sl.values[0]))
    got = [(s.labels, s.value) for s in res.samples]
    if len(got) != len(want):
        return (f"expected {len(want)} samples, got {len(got)}: "
                + ", ".join(f"{_fmt_labels(lb)} {v}" for lb, v in got[:6]))
    if ev.ordered:
        for (wl, wv), (gl, gv) in zip(want, got):
            if wl != gl or not almost_equal(wv, gv):
                return f"ordered mismatch: expected {_fmt_labels(wl)} {wv}, got {_fmt_labels(gl)} {gv}"
        return None
    gmap = {tuple(sorted(lb.items())): v for lb, v in got}
    for wl, wv in want:
        k = tuple(sorted(wl.items()))
        if k not in gmap:
            return f"missing {_fmt_labels(wl)}; got " + ", ".join(_fmt_labels(lb) for lb, _ in got[:6])
        if not almost_equal(wv, gmap[k]):
            return f"{_fmt_labels(wl)}: expected {wv}, got {gmap[k]}"
    return None


def _compare_matrix(ev: Eval, res: Matrix, start: int, step: int) -> str | None:
    want = {}
    for sl in ev.expected:
        pts = [(start + i * step, v) for i, v in enumerate(sl.values) if v is not None]
        want[tuple(sorted(sl.labels.items()))] = pts
    got = {tuple(sorted(lb.items())): pts for lb, pts in res.series}
    if set(want) != set(got):
        missing = [_fmt_labels(dict(k)) for k in want if k not in got]
        extra = [_fmt_labels(dict(k)) for k in got if k not in want]
        return f"series differ: missing {missing[:4]}, unexpected {extra[:4]}"
    for k, wpts in want.items():
        gpts = got[k]
        wpts = [(t, v) for t, v in wpts if v != STALE]
        if len(wpts) != len(gpts):
            return (f"{_fmt_labels(dict(k))}: expected {len(wpts)} points, got {len(gpts)}: "
                    f"{[(t // 10**6, v) for t, v in gpts[:8]]}")
        for (wt, wv), (gt, gv) in zip(wpts, gpts):
            if wt != gt or not almost_equal(wv, gv):
                return f"{_fmt_labels(dict(k))}: expected ({wt // 10**6}ms, {wv}), got ({gt // 10**6}ms, {gv})"
    return None


def _range_mode(engine: PromQLEngine, ev: Eval, res) -> str | None:
    """As promqltest does: the instant query, run as a one-step range query, must give the same answer."""
    try:
        m = engine.range(ev.query, ev.time_ns, ev.time_ns, 60 * 10**9)
    except PromQLError as err:
        return f"range mode: error {err.message}"
    if isinstance(res, Scalar):
        want = {(): res.value}
    else:
        want = {tuple(sorted(s.labels.items())): s.value for s in res.samples}
    got = {}
    for labels, pts in m.series:
        if len(pts) != 1 or pts[0][0] != (ev.time_ns // 10**6) * 10**6:
            return f"range mode: unexpected points {pts[:3]}"
        got[tuple(sorted(labels.items()))] = pts[0][1]
    if set(want) != set(got) or any(not almost_equal(want[k], got[k]) for k in want):
        return f"range mode differs: {sorted(got.items())[:4]}"
    return None


def run_eval(engine: PromQLEngine, ev: Eval) -> tuple[str, str]:
    """Returns (outcome, reason) with outcome in pass/fail/unsupported."""
    if ev.native:
        return "unsupported", "native histogram expectation"
    try:
        if ev.instant:
            res = engine.instant(ev.query, ev.time_ns)
        else:
            res = engine.range(ev.query, ev.start_ns, ev.end_ns, ev.step_ns)
    except PromQLError as err:
        if err.error_type == "unsupported":
            return "unsupported", err.message
        if not ev.fail:
            return "fail", f"error: {err.message}"
        if ev.fail_msg is not None and err.message != ev.fail_msg:
            return "fail", f"expected error {ev.fail_msg!r}, got {err.message!r}"
        if ev.fail_regex is not None and not re.search(ev.fail_regex, err.message):
            return "fail", f"expected error matching {ev.fail_regex!r}, got {err.message!r}"
        return "pass", ""
    except Exception as err:  # a crash is a failure, reported with its type
        return "fail", f"crash: {type(err).__name__}: {err}"
    if ev.fail:
        return "fail", "expected an error, query succeeded"
    if ev.instant:
        reason = _check_instant(ev, res)
        if reason is None and isinstance(res, (Vector, Scalar)) and not re.search(r"\bstep\s*\(", ev.query):
            reason = _range_mode(engine, ev, res)
    else:
        reason = _compare_matrix(ev, res, ev.start_ns, ev.step_ns)
    return ("pass", "") if reason is None else ("fail", reason)


def _store_source_factory():
    try:
        from . import store_source
    except Exception:
        return None
    return getattr(store_source, "conformance_source", None)


def run_file(path: Path, store: bool = False) -> FileResult:
    cmds = parse_testfile(Path(path).read_text())
    if store:
        factory = _store_source_factory()
        source = factory()
    else:
        source = MemorySource()
    engine = PromQLEngine(lambda tenant: source)
    fr = FileResult(Path(path).name)
    for cmd in cmds:
        if isinstance(cmd, Clear):
            source.clear()
        elif isinstance(cmd, Load):
            _load(source, cmd)
        elif isinstance(cmd, Eval):
            fr.total += 1
            outcome, reason = run_eval(engine, cmd)
            if outcome == "pass":
                fr.passed += 1
            elif outcome == "unsupported":
                fr.unsupported.append((cmd.line, cmd.query, reason))
            else:
                fr.failures.append((cmd.line, cmd.text, reason))
    close = getattr(source, "close", None)
    if close:
        close()
    return fr


def run_dir(directory: Path, store: bool = False, files: list[str] | None = None) -> list[FileResult]:
    paths = sorted(Path(directory).glob("*.test"))
    if files:
        paths = [p for p in paths if p.name in files or p.stem in files]
    return [run_file(p, store) for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meshscope.query.promql.conformance")
    ap.add_argument("dir")
    ap.add_argument("files", nargs="*")
    ap.add_argument("--store", action="store_true", help="load series into the store-backed source")
    ap.add_argument("-v", "--verbose", action="store_true", help="list unsupported cases too")
    a = ap.parse_args(argv)
    if a.store and _store_source_factory() is None:
        print("--store: query/promql/store_source.py offers no conformance_source(); skipped")
        return 0
    t0 = time.time()
    results = run_dir(Path(a.dir), a.store, a.files)
    tot = [0, 0, 0, 0, 0]
    print(f"{'file':<22}{'evals':>6}{'pass':>6}{'fail':>6}{'unsup':>6}{'(nat)':>6}{'pass%':>8}"
          f"{'non-native':>12}")
    for r in results:
        print(f"{r.name:<22}{r.total:>6}{r.passed:>6}{r.failed:>6}{len(r.unsupported):>6}{r.native:>6}"
              f"{100 * r.rate():>7.1f}%{100 * r.non_native_rate():>11.1f}%")
        for i, x in enumerate((r.total, r.passed, r.failed, len(r.unsupported), r.native)):
            tot[i] += x
    rate = tot[1] / tot[0] if tot[0] else 1
    nrate = tot[1] / (tot[0] - tot[4]) if tot[0] - tot[4] else 1
    print(f"{'total':<22}{tot[0]:>6}{tot[1]:>6}{tot[2]:>6}{tot[3]:>6}{tot[4]:>6}{100 * rate:>7.1f}%"
          f"{100 * nrate:>11.1f}%   ({time.time() - t0:.1f}s)")
    core = [r for r in results if r.name in CORE_FILES]
    if core:
        p = sum(r.passed for r in core)
        d = sum(r.total - r.native for r in core)
        print(f"acceptance set ({', '.join(sorted(r.name[:-5] for r in core))}): "
              f"{p}/{d} = {100 * p / d if d else 100:.1f}% of non-native eval blocks")
    for r in results:
        if r.failures:
            print(f"\n{r.name}: {r.failed} failed")
            for line, text, reason in r.failures:
                print(f"  line {line}: {text}\n      {reason}")
        if a.verbose and r.unsupported:
            print(f"\n{r.name}: {len(r.unsupported)} unsupported")
            for line, q, reason in r.unsupported:
                print(f"  line {line}: {q}\n      {reason}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
