"""Smoke test of bench/promql.py on 100 series: runs end to end, prints every figure, and the answers match the
generator's closed form (the benchmark prints a WARNING otherwise); a second run on data marked as generated
before the series index upgrades it in place and answers the same. Runs in its own process: chDB opens one data
directory per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "promql.py")


FIGURES = {"rate_sum_by_250steps_s", "rate_sum_by_250steps_cold_s", "histogram_quantile_250steps_s",
           "rate_sum_by_250steps_refresh_s", "histogram_quantile_250steps_refresh_s", "rate_sum_by_1h_15s_s",
           "rate_one_service_250steps_s", "series_all_istio_requests_1d_s", "label_values_destination_service_1d_s",
           "samples_in_range"}


def _run(tmp_path, out):
    p = subprocess.run([sys.executable, SCRIPT, "--series", "100", "--runs", "1", "--data", str(tmp_path / "data"),
                        "--json-out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WARNING" not in p.stdout, p.stdout
    return p


@pytest.mark.slow
def test_promql_benchmark_smoke(tmp_path):
    out = tmp_path / "promql.json"
    p = _run(tmp_path, out)
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert set(figures) == FIGURES
    assert figures["samples_in_range"] == 100 * 5760
    for name in figures:
        assert f"promql.{name} " in p.stdout
    assert "upgrade" not in result["details"]  # generated with the index: nothing to upgrade
    assert result["details"]["index_rows"] in (105 * 24, 105 * 25)  # 100 counters + 5 histograms, one per hour
    # a refresh evaluates the new step and the fresh tail's two, nothing else
    assert result["details"]["rate_sum_by_250steps_refresh"]["steps_evaluated"] == 3
    # data from before the index: drop it as an older schema would not have had it, then the benchmark upgrades
    code = f"""
import json
from meshscope.store import EmbeddedStore
st = EmbeddedStore({str(tmp_path / "data" / "store")!r})
db = st.database
st.command(f"DROP TABLE {{db}}.otel_metrics_series")
for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
    st.command(f"DROP VIEW {{db}}.otel_metrics_series_{{kind}}_mv")
    st.command(f"ALTER TABLE {{db}}.otel_metrics_{{kind}} DROP INDEX idx_series_id")
    st.command(f"ALTER TABLE {{db}}.otel_metrics_{{kind}} DROP COLUMN SeriesId")
st.close()
man = json.load(open({str(tmp_path / "data" / "manifest.json")!r}))
del man["layout"]
json.dump(man, open({str(tmp_path / "data" / "manifest.json")!r}, "w"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    _run(tmp_path, out)
    again = json.loads(out.read_text())
    assert set(again["details"]["upgrade"]) == {"drop_experiment_s", "apply_schema_backfill_s", "materialize_s"}
    assert again["details"]["index_rows"] == result["details"]["index_rows"]
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["layout"] == "006-series-index"
