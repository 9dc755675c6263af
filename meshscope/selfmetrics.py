"""meshscope's own health, exported on ``/metrics`` in Prometheus text format.

Names say what they count. One registry per running process (not the global one),
so tests can run several servers in one interpreter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SelfMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter(
            "meshscope_received_items", "Spans, log records or metric points received (accepted or not).",
            ["signal", "protocol"], registry=r)
        self.rejected = Counter(
            "meshscope_rejected_items", "Items refused: malformed, invalid ids, over limits or under backpressure.",
            ["signal", "reason"], registry=r)
        self.inserted = Counter(
            "meshscope_inserted_rows", "Rows the store confirmed, per destination table.", ["signal", "table"], registry=r)
        self.requests = Counter(
            "meshscope_requests", "Export requests answered, by status (HTTP status code, or gRPC status name for protocol=grpc).", ["signal", "protocol", "code"], registry=r)
        self.buffered = Gauge(
            "meshscope_buffered_rows", "Rows acknowledged but not yet confirmed by the store.", ["signal"], registry=r)
        self.buffered_bytes = Gauge(
            "meshscope_buffered_bytes", "Bytes of acknowledged requests not yet confirmed by the store.", ["signal"],
            registry=r)
        self.insert_seconds = Histogram(
            "meshscope_insert_duration_seconds", "Wall time of one batch insert into the store.", ["signal"],
            buckets=INSERT_BUCKETS, registry=r)
        self.insert_failures = Counter(
            "meshscope_insert_failures", "Batch inserts that failed and will be retried.", ["signal"], registry=r)
        self.quarantined = Counter(
            "meshscope_quarantined_requests", "Requests the store could not parse, moved aside to wal/quarantine.",
            ["signal"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
