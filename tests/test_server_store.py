"""The ClickHouse *server* path. Runs only where a server is reachable through
MESHSCOPE_TEST_CLICKHOUSE_URL (no modern ClickHouse server can be installed on the
project's machines); everywhere else it is skipped with that reason."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from meshscope.collector.batcher import statements
from meshscope.collector.otlp_wire import WIRE, envelope
from meshscope.schema import apply_schema
from meshscope.store import ServerStore, StoreError

URL = os.environ.get("MESHSCOPE_TEST_CLICKHOUSE_URL")
pytestmark = pytest.mark.server


def test_bad_url_is_a_clear_error():
    with pytest.raises(StoreError, match="http"):
        ServerStore("clickhouse://nowhere")


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(StoreError, match="cannot reach ClickHouse"):
        ServerStore("http://127.0.0.1:1/otel")


@pytest.mark.skipif(not URL, reason="set MESHSCOPE_TEST_CLICKHOUSE_URL=http://user:pass@host:8123/db to test the "
                                    "ClickHouse server path")
def test_schema_and_wire_insert_on_a_server(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    db = f"meshscope_test_{uuid.uuid4().hex[:8]}"
    base = URL.rstrip("/").rsplit("/", 1)[0] if URL.count("/") > 2 else URL
    st = ServerStore(f"{base}/{db}")
    try:
        apply_schema(st)
        apply_schema(st)  # idempotent
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = "srv"
        now = time.time_ns()
        rs.scope_spans.add().spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="op",
                                       start_time_unix_nano=now, end_time_unix_nano=now + 10)
        seg = tmp_path / "s.seg"
        seg.write_bytes(envelope(req.SerializeToString(), "default"))
        w = WIRE["traces"]
        for _t, sql in statements("traces", st.database).items():
            st.insert_wire(sql, w.structure, w.proto, w.envelope, str(seg))
        assert st.query(f"SELECT ServiceName, Duration FROM {db}.otel_traces").rows == [("srv", 10)]
    finally:
        st.command(f"DROP DATABASE IF EXISTS {db}")
        st.close()
