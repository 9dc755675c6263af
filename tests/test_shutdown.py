"""SIGTERM under load: every acknowledged span is in the store after a clean exit, nothing else is."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import read_store

SPANS_PER_REQUEST = 1000
SENDERS = 4


def request_body(req_no: int) -> bytes:
    """1000 spans of one trace whose id encodes the request number; timestamps are now (7-day TTL)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="load")))
    ss = rs.scope_spans.add()
    ss.scope.name = "shutdown-test"
    tid = (0xABC0_0000 + req_no).to_bytes(16, "big")
    t = time.time_ns()
    ss.spans.extend(
        Span(trace_id=tid, span_id=(req_no * SPANS_PER_REQUEST + i + 1).to_bytes(8, "big"), name="op",
             kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=t + i, end_time_unix_nano=t + i + 1000)
        for i in range(SPANS_PER_REQUEST))
    return req.SerializeToString()


@pytest.mark.slow
def test_sigterm_during_load_keeps_exactly_the_acknowledged_spans(server_factory):
    srv = server_factory()  # default flush policy: 1 s / 200000 rows
    lock = threading.Lock()
    counter = iter(range(1, 1_000_000))
    acked: set[int] = set()
    answers: dict[int, int] = {}
    stop = threading.Event()
    errors: list[str] = []

    def sender() -> None:
        conn = None
        while not stop.is_set():
            with lock:
                n = next(counter)
            body = request_body(n)
            try:
                if conn is None:
                    # a client timeout, so an upload cut off by the shutdown
                    # delays the exit by at most this long instead of aiohttp's 60 s shutdown_timeout
                    conn = http.client.HTTPConnection("127.0.0.1", srv.otlp_port, timeout=10)
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                # connection refused/reset while shutting down: not acknowledged
                if conn is not None:
                    conn.close()
                conn = None
                if srv.proc.poll() is not None:
                    break
                time.sleep(0.01)
                continue
            with lock:
                answers[r.status] = answers.get(r.status, 0) + 1
            if r.status == 200:
                resp = ExportTraceServiceResponse.FromString(data)
                if resp.HasField("partial_success"):
                    errors.append(f"request {n}: unexpected partial_success {resp}")
                with lock:
                    acked.add(n)
            elif r.status not in (503,):
                errors.append(f"request {n}: unexpected {r.status} {data[:200]!r}")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    with lock:
        acked_before = len(acked)
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(120)
    except subprocess.TimeoutExpired:
        stop.set()
        raise AssertionError(f"no exit 120 s after SIGTERM ({answers}):\n{srv.log()[-6000:]}") from None
    stop.set()
    for t in threads:
        t.join(30)
    assert rc == 0, srv.log()
    assert not errors, errors[:5]
    assert acked_before > 0, (answers, srv.log())

    rows = read_store(srv.data_dir, "SELECT TraceId, count() FROM otel.otel_traces GROUP BY TraceId")
    stored = {int(tid, 16) - 0xABC0_0000: c for tid, c in rows}
    assert sum(stored.values()) == len(acked) * SPANS_PER_REQUEST, (len(acked), len(stored), answers)
    assert stored == {n: SPANS_PER_REQUEST for n in acked}


@pytest.mark.slow
def test_sigterm_during_an_upload_answers_and_exits_promptly(server_factory):
    """Shutdown stops listening, then lets uploads already in progress finish and answers them."""
    srv = server_factory()
    body = request_body(1)
    head = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", srv.otlp_port), timeout=5)
    try:
        sock.sendall(head + body[:1000])
        time.sleep(0.3)  # the handler is now in read_body
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(body[1000:])  # the client finishes its upload right after the SIGTERM
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b""
        assert answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")), answer[:200]
        rc = srv.proc.wait(10)
        assert rc == 0, srv.log()
    finally:
        sock.close()
    stored = read_store(srv.data_dir, "SELECT count() FROM otel.otel_traces")[0][0]
    assert stored == (SPANS_PER_REQUEST if answer.startswith(b"HTTP/1.1 200 ") else 0)
