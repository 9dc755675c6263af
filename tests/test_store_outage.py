"""The store goes down (``MESHSCOPE_TEST_STORE_FAULT_FILE``: while that file exists every insert fails).

README "Durability": meshscope keeps acknowledging into the WAL up to ``--wal-max-bytes``, then answers 429 with
Retry-After, retries with backoff and catches up by itself; nothing acknowledged is lost, nothing is stored
twice, also when it is stopped (SIGTERM) while the store is still down.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import read_store

FAULT_ENV = "MESHSCOPE_TEST_STORE_FAULT_FILE"
SPANS = 200
TRACE_BASE = 0x07A6E_0000
RECOVERY_TIMEOUT = 60
SHUTDOWN_GRACE = 30  # what a supervisor typically waits after SIGTERM (Kubernetes' default grace period)
OUTAGE_ARGS = ("--wal-max-bytes", "2MiB", "--flush-interval", "0.2")


def request_body(n: int) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="outage-test")))
    ss = rs.scope_spans.add()
    tid = (TRACE_BASE + n).to_bytes(16, "big")
    t = time.time_ns()
    ss.spans.extend(
        Span(trace_id=tid, span_id=(n * SPANS + i).to_bytes(8, "big"), name="op", start_time_unix_nano=t + i,
             end_time_unix_nano=t + i + 1000)
        for i in range(SPANS))
    return req.SerializeToString()


class Client:
    def __init__(self, srv) -> None:
        self.srv = srv
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.otlp_port, timeout=30)
        self.next = 1
        self.acked: set[int] = set()

    def send(self) -> tuple[int, http.client.HTTPResponse, bytes]:
        n = self.next
        self.next += 1
        self.conn.request("POST", "/v1/traces", body=request_body(n), headers={"Content-Type": "application/x-protobuf"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status == 200:
            assert not ExportTraceServiceResponse.FromString(data).HasField("partial_success")
            self.acked.add(n)
        return r.status, r, data

    def fill_until_429(self, limit: int = 2000) -> http.client.HTTPResponse:
        """Send until the WAL cap answers 429; everything before must have been acknowledged."""
        for _ in range(limit):
            status, r, data = self.send()
            if status == 429:
                assert r.getheader("Retry-After", "").isdigit() and int(r.getheader("Retry-After")) >= 1, r.headers
                st = status_pb2.Status.FromString(data)
                assert st.code == code_pb2.RESOURCE_EXHAUSTED and st.message, st
                return r
            assert status == 200, (status, data[:300])
        raise AssertionError(f"no 429 after {limit} requests ({len(self.acked)} acknowledged)")

    def close(self) -> None:
        self.conn.close()


def metric(srv, name: str) -> float:
    """Sum of a counter over its label sets, for the traces signal only where it has one: meshscope stores its
    own metrics too (self-monitoring), and those rows are not the test's."""
    with urllib.request.urlopen(srv.http_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
               if 'signal="' not in (m.group(1) or "") or 'signal="traces"' in m.group(1))


def wal_segments(data_dir: str) -> list[str]:
    d = os.path.join(data_dir, "wal", "traces")
    return sorted(n for n in os.listdir(d) if n.endswith(".seg")) if os.path.isdir(d) else []


def check_store(data_dir: str, acked: set[int], sent: int) -> None:
    rows = read_store(data_dir, """
        SELECT 'trace', TraceId, count(), uniqExact(SpanId) FROM otel.otel_traces GROUP BY TraceId
        UNION ALL
        SELECT 'duplicate', SpanId, count() AS c, 0 FROM otel.otel_traces GROUP BY SpanId HAVING c > 1""")
    dups = [r for r in rows if r[0] == "duplicate"]
    stored = {int(r[1], 16) - TRACE_BASE: (r[2], r[3]) for r in rows if r[0] == "trace"}
    summary = f"{len(acked)} acknowledged of {sent} sent, {len(stored)} stored"
    assert not dups, f"spans stored more than once ({summary}): {dups[:10]}"
    assert set(stored) == acked, (f"{summary}; missing {sorted(acked - set(stored))[:20]}, "
                                  f"not acknowledged but stored {sorted(set(stored) - acked)[:20]}")
    assert set(stored.values()) == {(SPANS, SPANS)}, summary


@pytest.fixture
def fault(tmp_path, monkeypatch):
    path = tmp_path / "store-fault"
    path.touch()
    monkeypatch.setenv(FAULT_ENV, str(path))  # start_server passes os.environ on to the server
    return path


@pytest.mark.slow
def test_outage_acknowledges_into_the_wal_then_429_then_catches_up(server_factory, fault):
    srv = server_factory(*OUTAGE_ARGS)
    client = Client(srv)
    client.fill_until_429()
    wal_full_at = len(client.acked)
    assert wal_full_at * len(request_body(1)) >= 1.5 * 1024 * 1024, wal_full_at  # the cap, not something else
    assert metric(srv, "meshscope_insert_failures_total") > 0
    assert metric(srv, "meshscope_inserted_rows_total") == 0
    status, _, _ = client.send()
    assert status == 429  # still full while the store is down

    fault.unlink()  # the store is back
    t0 = time.monotonic()
    want = len(client.acked) * SPANS
    while metric(srv, "meshscope_inserted_rows_total") < want:
        assert time.monotonic() - t0 < RECOVERY_TIMEOUT, (
            f"only {metric(srv, 'meshscope_inserted_rows_total')} of {want} rows inserted "
            f"{RECOVERY_TIMEOUT}s after the store came back:\n{srv.log()[-3000:]}")
        time.sleep(0.2)
    recovery = time.monotonic() - t0
    assert metric(srv, "meshscope_inserted_rows_total") == want
    for _ in range(5):  # accepting again
        status, _, data = client.send()
        assert status == 200, (status, data[:300])
    client.close()
    assert srv.stop(timeout=60) == 0, srv.log()[-3000:]
    print(f"WAL full after {wal_full_at} requests; caught up {recovery:.1f}s after the store came back")
    check_store(srv.data_dir, client.acked, client.next - 1)


class FalseAllClear(Exception):
    """The server said everything was stored while it left acknowledged data in the WAL."""


@pytest.mark.slow
def test_sigterm_while_the_store_is_down_loses_nothing(server_factory, fault, monkeypatch):
    """SIGTERM with the store down: exit within a supervisor's grace period, leaving the acknowledged data in
    the WAL; a restart with the store back stores all of it, once. (The WAL is checked even if the process hangs:
    a supervisor's SIGKILL must lose nothing either.)"""
    srv = server_factory(*OUTAGE_ARGS)
    client = Client(srv)
    client.fill_until_429()
    client.close()
    assert metric(srv, "meshscope_inserted_rows_total") == 0
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(SHUTDOWN_GRACE)
    except subprocess.TimeoutExpired:
        rc = None
        srv.proc.kill()  # what a supervisor does after its grace period
        srv.proc.wait(30)
    took = time.monotonic() - t0
    first_log = srv.log()
    left_in_wal = wal_segments(srv.data_dir)
    if rc is not None:
        assert rc >= 0, f"died of signal {-rc}:\n{first_log[-3000:]}"
        assert left_in_wal, "exited with the store down, yet nothing is left in the WAL"

    fault.unlink()
    monkeypatch.delenv(FAULT_ENV)
    again = server_factory(*OUTAGE_ARGS)  # same directory: replays the WAL
    assert again.stop(timeout=60) == 0, again.log()[-3000:]
    check_store(srv.data_dir, client.acked, client.next - 1)
    assert rc is not None, f"still running {took:.0f}s after SIGTERM with the store down:\n{first_log[-3000:]}"
    print(f"exit {rc} {took:.1f}s after SIGTERM with the store down")
    if "all acknowledged data is in the store" in first_log.rsplit("shutting down", 1)[-1]:
        raise FalseAllClear(f"exit {rc} claiming all data stored, {len(left_in_wal)} segment(s) left in the WAL")
