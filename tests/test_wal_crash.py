"""SIGKILL at three points of a span's way to disk; after a restart on the same data directory every acknowledged
span is stored exactly once, and no span is ever stored twice (README "Durability").

(a) while requests stream in, before any flush: everything acknowledged is only in the WAL;
(b) after the store confirmed a segment's insert, before the segment file is deleted: the replay must be made a
    no-op by the insert's deduplication token. A ``sitecustomize`` module put on the server's PYTHONPATH (test
    only) kills the process with SIGKILL from inside ``os.unlink`` of a WAL segment, so this point is hit every
    time, not by luck; a third round kills at a random moment of continuous flushing;
(c) during the shutdown flush: SIGTERM, then SIGKILL 50-200 ms later (in the middle of the final insert), and
    with the hook at the shutdown flush's segment deletion (final insert done, segment still on disk).

Sender threads post 200-span protobuf requests whose trace id encodes the request number and whose span ids are
unique; a request counts as acknowledged when its 200 was read. Requests without an answer may or may not be
stored, but never twice and never in part.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import read_store

SPANS = 200
TRACE_BASE = 0xC4A5_0000_0000
KILL_AT_ENV = "MESHSCOPE_CRASHTEST_KILL_AT_SEGMENT_UNLINK"
MARKER_ENV = "MESHSCOPE_CRASHTEST_MARKER"

# Imported by the server at interpreter start (PYTHONPATH): SIGKILL right before the N-th deletion of a WAL
# segment, i.e. after the store confirmed that segment's insert. The marker names the segment.
HOOK = r'''
import os, re, signal
_n = os.environ.get("%(kill)s")
if _n:
    _left = [int(_n)]
    _marker = os.environ["%(marker)s"]
    _real_unlink = os.unlink
    _seg = re.compile(r".*[/\\]wal[/\\](traces|logs|metrics)[/\\]\d+-[0-9a-f]+\.seg")

    def _unlink(path, *args, **kwargs):
        p = os.fspath(path)
        if isinstance(p, str) and _seg.fullmatch(p) and os.path.getsize(p) > 0:
            _left[0] -= 1
            if _left[0] == 0:
                with open(_marker, "w") as f:
                    f.write(p)
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return _real_unlink(path, *args, **kwargs)

    os.unlink = _unlink
''' % {"kill": KILL_AT_ENV, "marker": MARKER_ENV}


def request_body(n: int) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="crash-test")))
    ss = rs.scope_spans.add()
    ss.scope.name = "wal-crash"
    tid = (TRACE_BASE + n).to_bytes(16, "big")
    t = time.time_ns()
    ss.spans.extend(
        Span(trace_id=tid, span_id=(n * SPANS + i).to_bytes(8, "big"), name="op", kind=Span.SPAN_KIND_SERVER,
             start_time_unix_nano=t + i, end_time_unix_nano=t + i + 1000)
        for i in range(SPANS))
    return req.SerializeToString()


class Ledger:
    """Request numbers handed out (never reused, across restarts) and which of them were acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 1
        self.acked: set[int] = set()
        self.answers: Counter = Counter()
        self.errors: list[str] = []

    def take(self) -> int:
        with self.lock:
            n = self.next
            self.next += 1
            return n

    def record(self, n: int, status: int, data: bytes) -> None:
        with self.lock:
            self.answers[status] += 1
            if status == 200:
                resp = ExportTraceServiceResponse.FromString(data)
                if resp.HasField("partial_success"):
                    self.errors.append(f"request {n}: unexpected partial_success {resp}")
                self.acked.add(n)
            elif status != 503:
                self.errors.append(f"request {n}: unexpected {status} {data[:200]!r}")


class Load:
    """Sender threads streaming requests at one server until stopped or the server is gone."""

    def __init__(self, ledger: Ledger, srv, senders: int = 2, pause: float = 0.0) -> None:
        self.ledger, self.srv, self.pause = ledger, srv, pause
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        conn = None
        while not self.stopping.is_set():
            n = self.ledger.take()
            body = request_body(n)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.srv.otlp_port, timeout=10)
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                if conn is not None:  # killed or shutting down: not acknowledged
                    conn.close()
                conn = None
                if self.srv.proc.poll() is not None:
                    break
                time.sleep(0.01)
                continue
            self.ledger.record(n, r.status, data)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def inserted_rows(srv) -> float:
    with urllib.request.urlopen(srv.http_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    # traces only: meshscope's self-monitoring inserts metrics rows of its own
    return sum(float(m.group(1)) for m in re.finditer(r'^meshscope_inserted_rows_total\{[^}]*signal="traces"[^}]*\} (\S+)$',
                                                      text, re.M))


def wal_segments(data_dir: str) -> list[str]:
    d = os.path.join(data_dir, "wal", "traces")
    return sorted(n for n in os.listdir(d) if n.endswith(".seg")) if os.path.isdir(d) else []


def kill(srv) -> int:
    srv.proc.send_signal(signal.SIGKILL)
    return srv.proc.wait(30)


def recover_and_check(server_factory, ledger: Ledger, data_dir: str) -> None:
    """Restart on the same directory (replays the WAL), stop cleanly, then check exactly-once."""
    srv = server_factory("--flush-interval", "0.2")  # same name, same directory
    assert srv.data_dir == data_dir
    rc = srv.stop(timeout=120)
    assert rc == 0, srv.log()[-5000:]
    assert wal_segments(data_dir) == [], "the replay left segments behind"
    assert not ledger.errors, ledger.errors[:5]
    assert ledger.acked, ledger.answers

    rows = read_store(data_dir, """
        SELECT 'trace', TraceId, count(), uniqExact(SpanId) FROM otel.otel_traces GROUP BY TraceId
        UNION ALL
        SELECT 'duplicate', SpanId, count() AS c, 0 FROM otel.otel_traces GROUP BY SpanId HAVING c > 1
        UNION ALL
        SELECT 'trace_id_ts', TraceId, count(), 0 FROM otel.otel_traces_trace_id_ts GROUP BY TraceId""")
    by_kind: dict[str, dict[str, tuple[int, int]]] = {"trace": {}, "duplicate": {}, "trace_id_ts": {}}
    for kind, key, c, u in rows:
        by_kind[kind][key] = (c, u)
    stored = {int(tid, 16) - TRACE_BASE: cu for tid, cu in by_kind["trace"].items()}
    summary = (f"{len(ledger.acked)} acknowledged, {len(stored)} stored of {ledger.next - 1} sent, "
               f"answers {dict(ledger.answers)}")
    print(summary)

    assert not by_kind["duplicate"], f"spans stored more than once ({summary}): {list(by_kind['duplicate'].items())[:10]}"
    missing = sorted(ledger.acked - stored.keys())
    assert not missing, f"acknowledged requests not stored ({summary}): {missing[:20]}"
    partial = {n: cu for n, cu in stored.items() if cu != (SPANS, SPANS)}
    assert not partial, f"requests stored in part or twice ({summary}): {dict(list(partial.items())[:10])}"
    assert set(stored) <= set(range(1, ledger.next)), f"spans nobody sent ({summary})"
    ts = {int(tid, 16) - TRACE_BASE: c for tid, (c, _) in by_kind["trace_id_ts"].items()}
    assert set(ts) == set(stored), f"otel_traces_trace_id_ts disagrees with otel_traces ({summary})"
    assert set(ts.values()) == {1}, f"otel_traces_trace_id_ts rows duplicated ({summary}): " \
        f"{[(n, c) for n, c in ts.items() if c != 1][:10]}"


@pytest.fixture
def crash_hook(tmp_path, monkeypatch):
    """Put the SIGKILL-before-segment-deletion hook on the PYTHONPATH of servers started from now on."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")])))

    def arm(nth: int | None, marker: str = "") -> None:
        if nth is None:
            monkeypatch.delenv(KILL_AT_ENV, raising=False)
        else:
            monkeypatch.setenv(KILL_AT_ENV, str(nth))
            monkeypatch.setenv(MARKER_ENV, marker)

    return arm


@pytest.mark.slow
def test_sigkill_while_streaming_before_any_flush(server_factory):
    """(a) Nothing was inserted yet: every acknowledged span is only in the WAL when the process dies."""
    srv = server_factory("--flush-interval", "30", "--flush-rows", "10000000")
    ledger = Ledger()
    load = Load(ledger, srv)
    try:
        wait_until(lambda: len(ledger.acked) >= 40, 30, "40 acknowledged requests")
        time.sleep(random.uniform(0, 0.3))
        assert inserted_rows(srv) == 0
        rc = kill(srv)
    finally:
        load.stop()
    assert rc == -signal.SIGKILL
    segs = wal_segments(srv.data_dir)
    assert segs and all(os.path.getsize(os.path.join(srv.data_dir, "wal", "traces", s)) > 0 for s in segs)
    recover_and_check(server_factory, ledger, srv.data_dir)


@pytest.mark.slow
def test_sigkill_between_insert_and_segment_deletion(server_factory, crash_hook, tmp_path):
    """(b) Three crashes in a row on one directory while inserts run continuously, then exactly-once."""
    ledger = Ledger()
    flush = ("--flush-rows", "4000", "--flush-interval", "0.5")  # a segment every 20 requests
    data_dir = None
    # Rounds 1 and 2: the hook kills right before the 1st / 2nd segment deletion. In round 2 the WAL left by
    # round 1 is being replayed (including the segment round 1 had inserted) while new requests arrive.
    for round_no, nth in enumerate((1, 2), 1):
        marker = tmp_path / f"killed-at-{round_no}"
        crash_hook(nth, str(marker))
        srv = server_factory(*flush)
        data_dir = srv.data_dir
        load = Load(ledger, srv, pause=0.02)
        try:
            try:
                rc = srv.proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"round {round_no}: the hook did not fire:\n{srv.log()[-3000:]}") from None
        finally:
            load.stop()
        assert rc == -signal.SIGKILL, srv.log()[-3000:]
        seg = marker.read_text()
        assert os.path.exists(seg), "the segment whose insert was confirmed should still be in the WAL"
    # Round 3: no hook; SIGKILL at a random moment once inserts are running.
    crash_hook(None)
    srv = server_factory(*flush)
    load = Load(ledger, srv, pause=0.02)
    try:
        wait_until(lambda: inserted_rows(srv) > 0, 60, "a first insert")
        time.sleep(random.uniform(0, 1.0))
        rc = kill(srv)
    finally:
        load.stop()
    assert rc == -signal.SIGKILL
    recover_and_check(server_factory, ledger, data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["sigkill-50-200ms-after-sigterm", "after-final-insert-before-deletion"])
def test_sigkill_during_shutdown_flush(server_factory, crash_hook, tmp_path, when):
    """(c) SIGTERM starts the final flush of one big segment; SIGKILL lands in the middle of it."""
    marker = tmp_path / "killed"
    if when == "after-final-insert-before-deletion":
        crash_hook(1, str(marker))  # with a 30 s interval the first deletion is the shutdown flush's
    ledger = Ledger()
    delay = random.uniform(0.05, 0.2)
    for attempt in range(3):  # a machine fast enough to finish the whole shutdown within `delay` gets a shorter one
        srv = server_factory("--flush-interval", "30", "--flush-rows", "10000000")
        load = Load(ledger, srv)
        try:
            goal = len(ledger.acked) + 150  # 30000 spans: an insert of some 100s of ms
            wait_until(lambda: len(ledger.acked) >= goal, 30, "150 acknowledged requests")
            srv.proc.send_signal(signal.SIGTERM)
            if when == "sigkill-50-200ms-after-sigterm":
                time.sleep(delay)
                srv.proc.send_signal(signal.SIGKILL)
            try:
                rc = srv.proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running:\n{srv.log()[-3000:]}") from None
        finally:
            load.stop()
        if rc == -signal.SIGKILL or when != "sigkill-50-200ms-after-sigterm":
            break
        assert rc == 0, srv.log()[-3000:]
        delay /= 3
    log = srv.log()
    assert rc == -signal.SIGKILL, f"the shutdown finished before the kill (exit {rc}):\n{log[-3000:]}"
    assert "shutting down" in log, log[-3000:]
    assert "all acknowledged data is in the store" not in log.rsplit("shutting down", 1)[-1], log[-3000:]
    assert wal_segments(srv.data_dir), "the shutdown flush had not deleted its segment yet"
    if when == "after-final-insert-before-deletion":
        assert os.path.exists(marker.read_text())
        crash_hook(None)
    recover_and_check(server_factory, ledger, srv.data_dir)


def test_replayed_rows_are_counted_in_self_metrics(server_factory):
    srv = server_factory("--flush-interval", "30", "--flush-rows", "10000000")
    for n in range(1, 6):
        conn = http.client.HTTPConnection("127.0.0.1", srv.otlp_port, timeout=10)
        conn.request("POST", "/v1/traces", body=request_body(n), headers={"Content-Type": "application/x-protobuf"})
        assert conn.getresponse().status == 200
        conn.close()
    assert kill(srv) == -signal.SIGKILL
    again = server_factory("--flush-interval", "0.2")
    wait_until(lambda: not wal_segments(again.data_dir), 30, "the replay")
    assert inserted_rows(again) == 5 * SPANS
