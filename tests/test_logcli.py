"""``meshscope logs`` (logcli-compatible) as a user runs it: a subprocess against a real ``meshscope serve`` that
was fed by the OpenTelemetry SDK log exporter and the Loki push API.

Expected outputs are written from logcli's formats (shared/reference/logql.md §7): default
``<RFC3339> <labels minus common, padded> <line>``, raw, jsonl with RFC3339Nano timestamps, metric results as
indented JSON, "Common labels" on stderr, one-line errors with exit code 1.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from conftest import free_port, start_server

NS = 1_000_000_000
RUN = uuid.uuid4().hex[:8]
SDK_SVC = f"cli-sdk-{RUN}"
APP = f"cli-push-{RUN}"
DUP = f"cli-dup-{RUN}"
TENANT_APP = f"cli-tenant-{RUN}"
TAIL_APP = f"cli-tail-{RUN}"
BASE_S = int(time.time()) - 120
BASE = BASE_S * NS
FROM = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_S - 60))
TO = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_S + 60))
SDK_LEVELS = ["info", "error"] * 3
# Loki-pushed lines: (labels, ns timestamp, line)
PUSHED = [
    ({"env": "prod"}, BASE + 1 * NS, "GET /a 200"),
    ({"env": "dev"}, BASE + 2 * NS + 5, "dev <one> & two"),
    ({"env": "prod"}, BASE + 3 * NS + 120_000_000, "GET /b 500\n"),
]


def rfc3339(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts // NS))


def rfc3339nano(ts: int) -> str:
    frac = f"{ts % NS:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // NS)) + (f".{frac}" if frac else "") + "Z"


def push(srv, streams, tenant=None) -> None:
    headers = {"Content-Type": "application/json"}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    req = urllib.request.Request(srv.http_url + "/loki/api/v1/push", data=json.dumps({"streams": streams}).encode(),
                                 headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204


def logs(srv, *args: str, stdin: str | None = None, addr: str | None = None, ok: bool = True):
    env = {**os.environ, "MESHSCOPE_ADDR": addr or srv.http_url, "NO_COLOR": "1"}
    env.pop("LOKI_ADDR", None)
    proc = subprocess.run([sys.executable, "-m", "meshscope", "logs", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def wait_count(srv, query: str, n: int, *extra: str) -> None:
    deadline = time.time() + 30
    got = 0
    while time.time() < deadline:
        got = len(logs(srv, "query", "-q", "-o", "raw", "--limit", "0", "--from", FROM, "--to", TO, *extra,
                       query).stdout.splitlines())
        if got >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"{query}: {got} of {n} lines\n{srv.log()[-3000:]}")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_server(str(tmp_path_factory.mktemp("logcli") / "data"), "--flush-interval", "0.2")
    try:
        lp = LoggerProvider(resource=Resource.create({"service.name": SDK_SVC}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(
            OTLPLogExporter(endpoint=server.otlp_url + "/v1/logs", timeout=10)))
        logger = lp.get_logger("meshscope.tests.logcli")
        for i, level in enumerate(SDK_LEVELS):
            logger.emit(LogRecord(timestamp=BASE + i * NS, body=f"sdk line {i}",
                                  severity_number=SeverityNumber.INFO if level == "info" else SeverityNumber.ERROR,
                                  attributes={"order_id": f"o-{i}"}))
        lp.shutdown()
        push(server, [{"stream": {"app": APP, **lb}, "values": [[str(ts), line]]} for lb, ts, line in PUSHED])
        # three lines share one timestamp: batching must neither lose nor repeat them
        push(server, [{"stream": {"app": DUP}, "values": [
            [str(BASE), "d0"], [str(BASE + NS), "d1a"], [str(BASE + NS), "d1b"], [str(BASE + NS), "d1c"],
            [str(BASE + 2 * NS), "d2"], [str(BASE + 3 * NS), "d3"]]}])
        push(server, [{"stream": {"app": TENANT_APP}, "values": [[str(BASE), "team-b only"]]}], tenant="team-b")
        wait_count(server, f'{{service_name="{SDK_SVC}"}}', 6)
        wait_count(server, f'{{app="{APP}"}}', 3)
        wait_count(server, f'{{app="{DUP}"}}', 6)
        wait_count(server, f'{{app="{TENANT_APP}"}}', 1, "--org-id", "team-b")
        yield server
    finally:
        server.stop()


PUSH_SEL = f'{{app="{APP}"}}'
SDK_SEL = f'{{service_name="{SDK_SVC}"}}'
WINDOW = ("--from", FROM, "--to", TO)


# ------------------------------------------------------------------------------------------- output modes
def test_default_output_strips_common_labels_and_pads(srv):
    p = logs(srv, "query", PUSH_SEL, *WINDOW, "-z", "UTC")
    newest_first = sorted(PUSHED, key=lambda x: -x[1])
    shown = {lb["env"]: '{env="%s"}' % lb["env"] for lb, _, _ in PUSHED}
    width = max(len(x) for x in shown.values())
    want = [f"{rfc3339(ts)} {shown[lb['env']].ljust(width)} {line.strip()}" for lb, ts, line in newest_first]
    assert p.stdout.splitlines() == want
    assert f'Common labels: {{app="{APP}", service_name="{APP}"}}' in p.stderr.splitlines()
    assert any("/loki/api/v1/query_range?" in ln for ln in p.stderr.splitlines())  # the query URL, as logcli
    quiet = logs(srv, "query", "-q", PUSH_SEL, *WINDOW, "-z", "UTC")
    assert quiet.stdout == p.stdout and quiet.stderr == ""


def test_raw_output_forward(srv):
    p = logs(srv, "query", "-q", "-o", "raw", "--forward", PUSH_SEL, *WINDOW)
    assert p.stdout == "GET /a 200\ndev <one> & two\nGET /b 500\n"  # one trailing newline removed


def test_jsonl_output(srv):
    p = logs(srv, "query", "-q", "-o", "jsonl", "-z", "UTC", PUSH_SEL, *WINDOW)
    rows = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert rows == [{"labels": lb, "line": line, "timestamp": rfc3339nano(ts)}
                    for lb, ts, line in sorted(PUSHED, key=lambda x: -x[1])]
    assert "\\u003cone\\u003e \\u0026 two" in p.stdout  # Go's encoding/json escapes HTML characters
    assert list(json.loads(p.stdout.splitlines()[0])) == ["labels", "line", "timestamp"]
    nolabels = logs(srv, "query", "-q", "-o", "jsonl", "--no-labels", PUSH_SEL, *WINDOW)
    assert all("labels" not in json.loads(ln) for ln in nolabels.stdout.splitlines())


def test_sdk_logs_in_all_three_modes(srv):
    raw = logs(srv, "query", "-q", "-o", "raw", "--forward", "--limit", "0", SDK_SEL, *WINDOW)
    assert raw.stdout.splitlines() == [f"sdk line {i}" for i in range(6)]
    jl = [json.loads(ln) for ln in logs(srv, "query", "-q", "-o", "jsonl", "-z", "UTC", SDK_SEL, *WINDOW)
          .stdout.splitlines()]
    assert [r["timestamp"] for r in jl] == [rfc3339nano(BASE + i * NS) for i in range(5, -1, -1)]
    assert [(r["labels"]["order_id"], r["labels"]["level"]) for r in jl] == \
        [(f"o-{i}", SDK_LEVELS[i]) for i in range(5, -1, -1)]
    assert all("service_name" not in r["labels"] for r in jl)  # common to every stream: printed on stderr only
    d = logs(srv, "query", "--include-label", "level", "-z", "UTC", "--limit", "2", SDK_SEL, *WINDOW)
    assert d.stdout.splitlines() == [f'{rfc3339(BASE + 5 * NS)} {{level="error"}} sdk line 5',
                                     f'{rfc3339(BASE + 4 * NS)} {{level="info"}}  sdk line 4']
    assert "Print only labels key: level" in d.stderr
    nl = logs(srv, "query", "-q", "--no-labels", "-z", "UTC", "--limit", "1", SDK_SEL, *WINDOW)
    assert nl.stdout == f"{rfc3339(BASE + 5 * NS)} sdk line 5\n"
    ex = logs(srv, "query", "-q", "--exclude-label", "order_id", "--exclude-label", "level", "-o", "jsonl",
              "--limit", "1", SDK_SEL, *WINDOW)
    assert "order_id" not in json.loads(ex.stdout)["labels"] and "level" not in json.loads(ex.stdout)["labels"]


def test_local_timezone(srv):
    p = logs(srv, "query", "-q", "-o", "jsonl", "--limit", "1", "-z", "Asia/Kolkata", PUSH_SEL, *WINDOW)
    assert json.loads(p.stdout)["timestamp"].endswith("+05:30")


# ------------------------------------------------------------------------------------------- batching
def test_batching_limit_above_batch(srv):
    p = logs(srv, "query", "-q", "-o", "raw", "--forward", "--limit", "5", "--batch", "2", SDK_SEL, *WINDOW)
    assert p.stdout.splitlines() == [f"sdk line {i}" for i in range(5)]
    p = logs(srv, "query", "-q", "-o", "raw", "--limit", "0", "--batch", "2", SDK_SEL, *WINDOW)
    assert p.stdout.splitlines() == [f"sdk line {i}" for i in range(5, -1, -1)]


@pytest.mark.parametrize("direction", [[], ["--forward"]])
def test_batching_with_lines_sharing_a_timestamp(srv, direction):
    p = logs(srv, "query", "-q", "-o", "raw", "--limit", "0", "--batch", "4", *direction, f'{{app="{DUP}"}}',
             *WINDOW)
    lines = p.stdout.splitlines()
    assert sorted(lines) == ["d0", "d1a", "d1b", "d1c", "d2", "d3"]
    order = ["d0", "d1", "d1", "d1", "d2", "d3"]
    assert [ln[:2] for ln in lines] == (order if direction else order[::-1])


def test_batch_too_small_for_shared_timestamp_is_an_error(srv):
    p = logs(srv, "query", "-q", "-o", "raw", "--limit", "0", "--batch", "2", "--forward", f'{{app="{DUP}"}}',
             *WINDOW, ok=False)
    assert p.returncode == 1
    assert "batch" in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- metric queries
def test_metric_range_query_prints_indented_json(srv):
    p = logs(srv, "query", "-q", f"sum by (level) (count_over_time({SDK_SEL}[10s]))",
             "--from", rfc3339(BASE), "--to", rfc3339(BASE + 10 * NS), "--step", "5s")
    assert p.stdout.startswith('[\n  {\n    "metric": {\n      "level": "error"\n    },\n    "values": [\n      [\n')
    assert json.loads(p.stdout) == [
        {"metric": {"level": "error"}, "values": [[BASE_S + 5, "3"], [BASE_S + 10, "3"]]},
        {"metric": {"level": "info"}, "values": [[BASE_S, "1"], [BASE_S + 5, "3"], [BASE_S + 10, "2"]]},
    ]


def test_instant_query(srv):
    p = logs(srv, "instant-query", "-q", "vector(1)+vector(1)", "--now", "1970-01-01T00:00:04Z")
    assert json.loads(p.stdout) == [{"metric": {}, "value": [4, "2"]}]
    p = logs(srv, "instant-query", "-q", f"count_over_time({SDK_SEL}[1h])", "--now", rfc3339(BASE + 60 * NS))
    got = json.loads(p.stdout)
    assert len(got) == 6 and {r["value"][1] for r in got} == {"1"}  # one series per order_id
    p = logs(srv, "instant-query", "-q", f"sum(count_over_time({SDK_SEL}[1h]))", "--now", rfc3339(BASE + 60 * NS))
    assert json.loads(p.stdout) == [{"metric": {}, "value": [BASE_S + 60, "6"]}]


# ------------------------------------------------------------------------------------------- errors
def test_syntax_error_exit_1_one_line(srv):
    p = logs(srv, "query", "-q", '{app="x"', ok=False)
    assert p.returncode == 1
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Query failed:") and "parse error at line 1" in lines[0]


def test_instant_log_query_exit_1(srv):
    p = logs(srv, "instant-query", "-q", PUSH_SEL, ok=False)
    assert p.returncode == 1 and "log queries are not supported as an instant query type" in p.stderr


def test_connection_refused_is_one_clear_line(srv):
    p = logs(srv, "query", "-q", PUSH_SEL, addr=f"http://127.0.0.1:{free_port()}", ok=False)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0]
    p = logs(srv, "labels", "-q", addr=f"http://127.0.0.1:{free_port()}", ok=False)
    assert p.returncode == 1 and "connection refused" in p.stderr


# ------------------------------------------------------------------------------------------- metadata commands
def test_labels_and_values(srv):
    names = logs(srv, "labels", "-q", *WINDOW).stdout.splitlines()
    assert {"app", "env", "level", "service_name"} <= set(names) and names == sorted(names)
    apps = logs(srv, "labels", "-q", "app", *WINDOW).stdout.splitlines()
    assert APP in apps and DUP in apps and TENANT_APP not in apps


def test_series_and_analyze_labels(srv):
    p = logs(srv, "series", "-q", PUSH_SEL, *WINDOW)
    assert p.stdout.splitlines() == [f'{{app="{APP}", env="dev", service_name="{APP}"}}',
                                     f'{{app="{APP}", env="prod", service_name="{APP}"}}']
    a = logs(srv, "series", "-q", "--analyze-labels", PUSH_SEL, *WINDOW).stdout.splitlines()
    assert a[:3] == ["Total Streams:  2", "Unique Labels:  3", ""]
    assert a[3].split() == ["Label", "Name", "Unique", "Values", "Found", "In", "Streams"]
    assert [r.split() for r in a[4:]] == [["env", "2", "2"], ["app", "1", "2"], ["service_name", "1", "2"]]
    assert a[4].index("2") == a[3].index("Unique")  # columns line up (tabwriter)


def test_stats(srv):
    p = logs(srv, "stats", "-q", PUSH_SEL, *WINDOW)
    size = sum(len(line) for _, _, line in PUSHED)
    lines = p.stdout.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    assert lines[1] == "  streams: 2" and lines[2].startswith("  chunks: ") and lines[3] == "  entries: 3"
    assert lines[4] == f"  bytes: {size} B"


def test_org_id_selects_the_tenant(srv):
    sel = f'{{app="{TENANT_APP}"}}'
    assert logs(srv, "query", "-q", "-o", "raw", sel, *WINDOW).stdout == ""
    assert logs(srv, "query", "-q", "-o", "raw", "--org-id", "team-b", sel, *WINDOW).stdout == "team-b only\n"


# ------------------------------------------------------------------------------------------- --stdin
def test_stdin_pipeline_runs_locally(srv):
    text = "level=info msg=a\nlevel=error msg=b\nlevel=error msg=c\n"
    p = logs(srv, "query", "-q", "--stdin", "-o", "raw", "--forward", '| logfmt | level="error"', stdin=text,
             addr="http://127.0.0.1:1")  # no server needed
    assert p.stdout == "level=error msg=b\nlevel=error msg=c\n"
    p = logs(srv, "query", "-q", "--stdin", "-o", "jsonl", "--limit", "1", '{source="logcli"} |= "msg=a"',
             stdin=text, addr="http://127.0.0.1:1")
    assert json.loads(p.stdout)["line"] == "level=info msg=a"
    p = logs(srv, "instant-query", "-q", "--stdin", 'sum by (level) (count_over_time({source="logcli"} | logfmt '
             '[1m]))', stdin=text, addr="http://127.0.0.1:1")
    assert {r["metric"]["level"]: r["value"][1] for r in json.loads(p.stdout)} == {"info": "1", "error": "2"}
    bad = logs(srv, "query", "--stdin", "|~", stdin=text, ok=False)
    assert bad.returncode == 1 and "parse error" in bad.stderr


# ------------------------------------------------------------------------------------------- tail
def test_tail_prints_a_line_pushed_after_starting(srv):
    env = {**os.environ, "MESHSCOPE_ADDR": srv.http_url, "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "meshscope", "logs", "query", "--tail", "-q", "-o", "raw",
                             f'{{app="{TAIL_APP}"}}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        time.sleep(1.5)
        push(srv, [{"stream": {"app": TAIL_APP}, "values": [[str(time.time_ns()), "tailed line"]]}])
        deadline = time.time() + 20
        while time.time() < deadline and "tailed line\n" not in got:
            time.sleep(0.2)
        assert got == ["tailed line\n"], proc.stderr.read() if proc.poll() is not None else got
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(15)
    assert rc == 0
    assert "Traceback" not in proc.stderr.read()
