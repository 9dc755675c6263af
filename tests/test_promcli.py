"""``meshscope metrics query|query-range|series|labels`` against the Prometheus API over the session store.

The commands run through the same argparse tree ``meshscope`` builds (``add_metrics_subparser``), in-process for
speed; one subprocess run checks the "one line, exit 1, no traceback" rule for an unreachable server.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest

from conftest import free_port
from meshscope.query.promcli import add_metrics_subparser, labels_text, parse_time_flag, run_metrics
from meshscope.query.promql.store_source import load_series
from test_prom_api import ApiServer

S = 1_000_000_000
T = (time.time_ns() // (60 * S) - 10) * 60 * S  # ten minutes ago, whole minute
TENANT = "promcli"


@pytest.fixture(scope="module")
def server(store):
    load_series(store, TENANT, [
        ({"__name__": "http_requests_total", "job": "api", "code": "200"}, [(T + i * 15 * S, 10.0 * i) for i in range(9)]),
        ({"__name__": "http_requests_total", "job": "api", "code": "500"}, [(T + i * 15 * S, 1.0 * i) for i in range(9)]),
        ({"__name__": "temperature", "room": "lab"}, [(T, 20.5)]),
    ])
    srv = ApiServer(store)
    yield srv
    srv.close()


def cli(server, *argv):
    parser = argparse.ArgumentParser(prog="meshscope")
    sub = parser.add_subparsers(dest="command")
    add_metrics_subparser(sub)
    args = parser.parse_args(["metrics", *argv, "--addr", server.url if server else "http://127.0.0.1:9",
                              "--org-id", TENANT])
    return run_metrics(args)


def test_query_table_and_json(server, capsys):
    at = f"{(T + 120 * S) / S:.0f}"
    assert cli(server, "query", "sum by (code) (rate(http_requests_total[1m]))", "--time", at) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('{code="200"} => 0.6666666666666666 @ ') and out[1].startswith('{code="500"} => ')
    assert cli(server, "query", "temperature", "--time", at, "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"resultType": "vector", "result": [{"metric": {"__name__": "temperature", "room": "lab"},
                                                        "value": [int(at), "20.5"]}]}
    assert cli(server, "query", "1+1", "--time", "0") == 0
    assert capsys.readouterr().out == "2 @ 1970-01-01T00:00:00.000Z\n"


def test_query_range(server, capsys):
    start, end = (T + 60 * S) // S, (T + 120 * S) // S
    assert cli(server, "query-range", 'http_requests_total{code="500"}', "--start", str(start), "--end", str(end),
               "--step", "30s", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["resultType"] == "matrix"
    assert data["result"][0]["values"] == [[start, "4"], [start + 30, "6"], [end, "8"]]
    assert cli(server, "query-range", 'http_requests_total{code="500"}', "--start", str(start), "--end", str(end),
               "--step", "60") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'http_requests_total{code="500", job="api"}' and len(lines) == 3


def test_series_and_labels(server, capsys):
    assert cli(server, "series", "--match", "http_requests_total") == 0
    assert capsys.readouterr().out.splitlines() == ['http_requests_total{code="200", job="api"}',
                                                    'http_requests_total{code="500", job="api"}']
    assert cli(server, "labels") == 0
    assert capsys.readouterr().out.split() == ["__name__", "code", "job", "room"]
    assert cli(server, "labels", "code", "--match", "http_requests_total") == 0
    assert capsys.readouterr().out.split() == ["200", "500"]
    assert cli(server, "labels", "__name__", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == ["http_requests_total", "temperature"]


def test_errors_one_line(server, capsys):
    assert cli(server, "query", "sum(") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith('Error: bad_data: invalid parameter "query"') and "(status 400)" in err
    assert cli(server, "query", "up", "--time", "yesterday") == 1
    assert "invalid time" in capsys.readouterr().err
    assert cli(server, "query-range", "up", "--step", "fast") == 1
    assert "invalid step" in capsys.readouterr().err


def test_unreachable_server_subprocess():
    port = free_port()
    code = ("import argparse, sys\n"
            "from meshscope.query.promcli import add_metrics_subparser, run_metrics\n"
            "p = argparse.ArgumentParser(); s = p.add_subparsers(dest='command'); add_metrics_subparser(s)\n"
            "sys.exit(run_metrics(p.parse_args(sys.argv[1:])))\n")
    r = subprocess.run([sys.executable, "-c", code, "metrics", "query", "up", "--addr", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "connection refused" in r.stderr and "Traceback" not in r.stderr


def test_helpers():
    assert parse_time_flag("now-1h", now=10_000.0) == "6400.000"
    assert parse_time_flag("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"
    assert labels_text({"__name__": "up", "job": "a"}) == 'up{job="a"}'
    assert labels_text({"code": "200"}) == '{code="200"}'
