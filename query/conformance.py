"""Run the LogQL conformance corpus (cases taken from Loki's own tests) through meshscope's public parser,
pipeline and evaluator, and print the pass rate per file with the failing cases.

    python -m meshscope.query.conformance ../shared/conformance/logql [--json report.json] [-v]

Cases flagged ``unsure`` or ``edge`` are counted apart from the pass rate, as the corpus README asks. The exit
code is 0 when every file meets the issue's bar (parse ≥ 97%, pipeline ≥ 95%, sample and range 100%).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .logql import ast as A
from .logql.lexer import LogQLSyntaxError
from .logql.parser import parse, parse_log_selector, parse_matchers, parse_sample_expr
from .logql.pipeline import Pipeline, PipelineError, SampleExtractor

TARGETS = {"parse": 0.97, "pipeline": 0.95, "sample": 1.0, "range": 1.0}


@dataclass
class FileReport:
    name: str
    passed: int = 0
    total: int = 0
    side_passed: int = 0  # unsure / edge cases, reported apart
    side_total: int = 0
    failures: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 1.0

    def add(self, case: dict, ok: bool, why: str = "") -> None:
        side = bool(case.get("unsure") or case.get("edge"))
        if side:
            self.side_total += 1
            self.side_passed += ok
        else:
            self.total += 1
            self.passed += ok
        if not ok:
            self.failures.append({"case": case, "why": why, "side": side})


# ------------------------------------------------------------------------------------------------ parse
def parse_by_mode(case: dict):
    q = bytes.fromhex(case["query_hex"]) if case.get("query_hex") else case["query"]
    mode = case.get("mode", "ParseExpr")
    if mode == "ParseSampleExpr":
        return parse_sample_expr(q)
    if mode.startswith("ParseLogSelector"):
        return parse_log_selector(q, validate_matchers="validate=true" in mode)
    if mode.startswith("ParseMatchers"):
        return parse_matchers(q)
    return parse(q)


def run_parse_case(case: dict) -> tuple[bool, str]:
    try:
        parse_by_mode(case)
    except (LogQLSyntaxError, PipelineError) as err:
        if case["ok"]:
            return False, f"rejected: {err}"
        return True, ""
    if not case["ok"]:
        return False, f"accepted, Loki says: {case.get('error', '')}"
    return True, ""


# ------------------------------------------------------------------------------------------------ pipeline
def _labels_equal(got: dict, want: dict, loose: list[str]) -> bool:
    if set(got) != set(want):
        return False
    return all(k in loose or got[k] == want[k] for k in want)


def run_pipeline_case(case: dict) -> tuple[bool, str]:
    try:
        q = parse_log_selector('{__conformance__="x"} ' + case["pipeline"], validate_matchers=False)
        pipe = Pipeline(q.stages)
    except (LogQLSyntaxError, PipelineError) as err:
        return False, f"pipeline rejected: {err}"
    try:
        entry = pipe.process(int(case.get("ts", 0)), case["line"], case["labels"], case.get("structured_metadata"))
    except Exception as err:  # a crash is a failure to report, not a reason to stop the run
        return False, f"crash: {type(err).__name__}: {err}"
    if entry is None:
        return (not case["keep"]), "dropped, expected kept" if case["keep"] else ""
    if not case["keep"]:
        return False, "kept, expected dropped"
    if entry.line != case["out_line"]:
        return False, f"line {entry.line!r} != {case['out_line']!r}"
    got = entry.labels.labels()
    if not _labels_equal(got, case["out_labels"], case.get("loose_keys") or []):
        return False, f"labels {got} != {case['out_labels']}"
    return True, ""


# ------------------------------------------------------------------------------------------------ samples
def _innermost(expr: A.Expr):
    """The range aggregation and the grouping that applies to its samples (an outer ``sum by`` is pushed in)."""
    outer = None
    node = expr
    while isinstance(node, A.VectorAggregation):
        outer = node.grouping if node.grouping is not None else outer
        node = node.expr
    if not isinstance(node, A.RangeAggregation):
        raise PipelineError("no range aggregation in the query")
    return node, (node.grouping if node.grouping is not None else outer)


def group_labels(labels: dict[str, str], grouping: A.Grouping | None) -> dict[str, str]:
    if grouping is None:
        return labels
    if grouping.without:
        return {k: v for k, v in labels.items() if k not in grouping.labels}
    return {k: labels[k] for k in grouping.labels if k in labels}


def run_sample_case(case: dict) -> tuple[bool, str]:
    try:
        node, grouping = _innermost(parse(case["query"]))
        ex = SampleExtractor(node)
        got = ex.extract(int(case.get("ts", 0)), case["line"], case["labels"], case.get("structured_metadata"))
    except (LogQLSyntaxError, PipelineError) as err:
        return False, f"rejected: {err}"
    if got is None:
        return (not case["keep"]), "no sample, expected one" if case["keep"] else ""
    if not case["keep"]:
        return False, f"sample {got}, expected none"
    labels, value = got
    if "__error__" not in labels:
        labels = group_labels(labels, grouping)
    if value != case["sample_value"]:
        return False, f"value {value} != {case['sample_value']}"
    if labels != case["sample_labels"]:
        return False, f"labels {labels} != {case['sample_labels']}"
    return True, ""


# ------------------------------------------------------------------------------------------------ ranges
def _seconds_to_ns(s) -> int:
    whole, _, frac = str(s).partition(".")
    return int(whole) * 10**9 + int((frac + "000000000")[:9])


def run_range_case(case: dict) -> tuple[bool, str]:
    from .logql.evaluator import Evaluator
    from .logql.memsource import MemorySource

    entries = [(_seconds_to_ns(t), "line") for t in case["sample_ts_s"]]
    streams = []
    for sel in case["streams"]:
        labels = {m.name: m.value for m in parse_matchers(sel)}
        streams.append((labels, {}, entries))
    off = f" offset {case['offset_s']}s" if case.get("offset_s") else ""
    first_label = next(iter(streams[0][0]))
    query = f'{case["function"]}({{{first_label}=~".+"}}[{case["range_s"]}s]{off})'
    start, end, step = (case["start_s"] * 10**9, case["end_s"] * 10**9, case["step_s"] * 10**9)
    result = Evaluator(MemorySource(streams)).eval_range(parse(query), start, end, step)
    want = {t * 10**9: v for t, v in case["steps"] if v is not None}
    for labels, points in result.series:
        got = {ts: v for ts, v in points}
        if got != want:
            return False, f"{labels}: {got} != {want}"
    if len(result.series) != len(case["streams"]) and want:
        return False, f"{len(result.series)} series, expected {len(case['streams'])}"
    return True, ""


RUNNERS = {
    "parse": ("parse_cases.jsonl", run_parse_case),
    "pipeline": ("pipeline_cases.jsonl", run_pipeline_case),
    "sample": ("sample_cases.jsonl", run_sample_case),
    "range": ("range_cases.jsonl", run_range_case),
}


def run(directory: Path) -> dict[str, FileReport]:
    reports = {}
    for kind, (fname, runner) in RUNNERS.items():
        path = directory / fname
        if not path.exists():
            continue
        rep = FileReport(fname)
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            case = json.loads(line)
            try:
                ok, why = runner(case)
            except Exception as err:  # noqa: BLE001 - report, keep going
                ok, why = False, f"crash: {type(err).__name__}: {err}"
            rep.add(case, ok, why)
        reports[kind] = rep
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meshscope.query.conformance", description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path, help="the corpus folder, e.g. ../shared/conformance/logql")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every failing case, unsure/edge included")
    args = ap.parse_args(argv)
    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 2
    reports = run(args.directory)
    all_met = True
    for kind, rep in reports.items():
        met = rep.rate >= TARGETS[kind]
        all_met &= met
        side = f"; unsure/edge {rep.side_passed}/{rep.side_total}" if rep.side_total else ""
        print(f"{rep.name}: {rep.passed}/{rep.total} = {rep.rate:.1%} (target {TARGETS[kind]:.0%}"
              f"{'' if met else ', NOT MET'}){side}")
        for f in rep.failures:
            if f["side"] and not args.verbose:
                continue
            c = f["case"]
            what = c.get("query") or c.get("pipeline") or c.get("function")
            tag = " [unsure/edge]" if f["side"] else ""
            print(f"  FAIL{tag} {what!r} line={c.get('line', '')!r}: {f['why']}")
    if args.json:
        args.json.write_text(json.dumps({k: {"file": r.name, "passed": r.passed, "total": r.total,
                                             "side_passed": r.side_passed, "side_total": r.side_total,
                                             "failures": [{"why": f["why"], "side": f["side"], **f["case"]}
                                                          for f in r.failures]}
                                         for k, r in reports.items()}, indent=1))
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
