"""Smoke test of bench/logsearch.py: the whole benchmark on 20k lines, one timed run per figure.

No speed assertion: it checks that the command runs end to end, writes every figure, and that grep and the LogQL
engine find the same needle lines (and that the other queries match their SQL ground truths: the benchmark
prints a WARNING for any mismatch). Runs in its own process: chDB opens one data directory per process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "logsearch.py")

FIGURES = [
    "a.needle_service.median_s", "a.needle_service.first_s", "a.needle_all.median_s", "a.needle_all.first_s",
    "a.grep.median_s", "a.needle_service.grep_ratio", "a.needle_all.grep_ratio",
    "a.needle_service_repeat.median_s", "a.needle_all_repeat.median_s", "a.needle_service_repeat.grep_ratio",
    "a.needle_all_repeat.grep_ratio", "a.needle_lines_grep", "a.needle_lines_query", "a.needle_lines_service_query",
    "b.count_by_level_1h.median_s", "b.count_by_level_24h.median_s", "b.count_by_level_24h_loki_step.median_s",
    "c.json_5xx_lines_1h.median_s", "c.json_5xx_rate_1h.median_s",
    "data.lines", "data.raw_gb", "data.avg_line_bytes", "data.store_gb",
]


def _run(data, out):
    return subprocess.run([sys.executable, SCRIPT, "--lines", "20000", "--runs", "1", "--data", str(data),
                           "--json-out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.slow
def test_logsearch_benchmark_smoke(tmp_path):
    data, out = tmp_path / "data", tmp_path / "logsearch.json"
    p = _run(data, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WARNING" not in p.stdout, p.stdout
    res = json.loads(out.read_text())
    figs = res["figures"]
    for name in FIGURES:
        assert name in figs, name
        assert f"logsearch.{name} " in p.stdout  # one printed line per figure
    assert res["warnings"] == []
    # grep and the query agree on the needle, and it is there at all
    assert figs["a.needle_lines_grep"] == figs["a.needle_lines_query"] == res["data"]["needle_rows"] > 0
    # every timed run searched a different string (query condition cache) that matches the same lines
    for name in ("a.needle_service", "a.needle_all"):
        d = res["details"][name]
        assert len(set(d["needles"])) == 2 and d["returned"] == d["expected"], d
    svc = res["config"]["needle_service"]
    assert figs["a.needle_lines_service_query"] == res["data"]["needle_per_service"][svc] > 0
    assert figs["data.lines"] == 20000
    assert figs["data.avg_line_bytes"] >= 200
    for name in ("b.count_by_level_1h", "b.count_by_level_24h", "c.json_5xx_rate_1h"):
        d = res["details"][name]
        assert d["total"] == d["expected_total"] > 0, (name, d)
    assert res["details"]["b.count_by_level_24h"]["series"] == 4  # debug, info, warn, error
    assert res["machine"]["nproc"] and res["machine"]["cpu_model"] is not None

    # a second run reuses the cached data set
    p2 = _run(data, out)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "# reusing" in p2.stderr and "# generating" not in p2.stderr
    assert json.loads(out.read_text())["data"]["generated_now"] is False
