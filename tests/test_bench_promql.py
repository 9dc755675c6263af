"""Smoke test of bench/promql.py on 100 series: runs end to end, prints every figure, and the answers match the
generator's closed form (the benchmark prints a WARNING otherwise), for the shipped layout and --series-index.
Runs in its own process: chDB opens one data directory per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "promql.py")


@pytest.mark.slow
def test_promql_benchmark_smoke(tmp_path):
    out = tmp_path / "promql.json"
    p = subprocess.run([sys.executable, SCRIPT, "--series", "100", "--runs", "1", "--data", str(tmp_path / "data"),
                        "--json-out", str(out), "--series-index"], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WARNING" not in p.stdout, p.stdout
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"rate_sum_by_250steps_s", "histogram_quantile_250steps_s", "samples_in_range",
                            "rate_sum_by_250steps_series_index_s", "histogram_quantile_250steps_series_index_s"}
    assert figures["samples_in_range"] == 100 * 5760
    for name in figures:
        assert f"promql.{name} " in p.stdout
