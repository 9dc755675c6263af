"""meshscope watching itself: its own ``/metrics`` registry stored as OTLP metrics, so it can be charted over time.

Every ``interval`` seconds ``SelfScrape`` reads the current samples of the ``SelfMetrics`` registry and turns them
into one ``ExportMetricsServiceRequest`` (resource ``service.name="meshscope"``): counters become monotonic
cumulative sums (start time = the sample's ``_created``), gauges gauges, histograms explicit-bucket histograms. The
request goes through ``accept_export``, the very function the OTLP/HTTP and gRPC receivers call, so the points take
the usual path (count, WAL, batcher, ``INSERT ... FORMAT Protobuf``) and no second code path writes the tables.

The PromQL mapping (``query/promql/store_source.py``) turns the names back into what ``/metrics`` shows:
``meshscope_received_items`` (monotonic sum) → ``meshscope_received_items_total``,
``meshscope_insert_duration_seconds`` → ``..._bucket{le}``/``_sum``/``_count``, ``job="meshscope"``.

The scrape's own points are counted like any other request, as ``meshscope_received_items{protocol="self"}``, so
what meshscope receives from itself stays apart from what clients send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from meshscope.collector.batcher import Batcher, BufferFull
from meshscope.collector.otlp_http import accept_export
from meshscope.collector.tenant import DEFAULT_TENANT
from meshscope.selfmetrics import SelfMetrics

log = logging.getLogger("meshscope.selfscrape")

SERVICE_NAME = "meshscope"
PROTOCOL = "self"  # the `protocol` label of meshscope_received_items for these points
SCOPE_NAME = "meshscope.selfscrape"
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE

# OTel units from the Prometheus name's unit suffix; the PromQL mapping drops a unit word already in the name.
_UNIT_SUFFIXES = (("_seconds", "s"), ("_bytes", "By"))


def _unit(name: str) -> str:
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    return ""


def _attrs(target, labels: dict[str, str]) -> None:
    for k, v in sorted(labels.items()):
        target.append(KeyValue(key=k, value={"string_value": str(v)}))


def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def build_request(registry, now_ns: int | None = None, *, instance: str = "",
                  process_start_ns: int | None = None) -> tuple[ExportMetricsServiceRequest, int]:
    """The registry's current samples as one OTLP request, and how many data points it holds."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    start_default = process_start_ns or now_ns
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {"service.name": SERVICE_NAME, **({"service.instance.id": instance} if instance
                                                                      else {})})
    sm = rm.scope_metrics.add()
    sm.scope.name = SCOPE_NAME
    points = 0
    for family in registry.collect():
        if family.type == "counter":
            points += _counter(sm, family, now_ns, start_default)
        elif family.type == "gauge":
            points += _gauge(sm, family, now_ns)
        elif family.type == "histogram":
            points += _histogram(sm, family, now_ns, start_default)
        # other types (info, enum, summary, ...) are not used by SelfMetrics; leave them out rather than guess
    return req, points


def _created(family) -> dict[tuple, int]:
    return {_key(s.labels): _ns(s.value) for s in family.samples if s.name.endswith("_created")}


def _new_metric(sm, family):
    m = sm.metrics.add()
    m.name = family.name
    m.description = family.documentation or ""
    m.unit = _unit(family.name)
    return m


def _counter(sm, family, now_ns: int, start_default: int) -> int:
    samples = [s for s in family.samples if s.name.endswith("_total")]
    if not samples:
        return 0  # a labelled counter nobody touched yet has no series (as on /metrics)
    created = _created(family)
    m = _new_metric(sm, family)
    m.sum.is_monotonic = True
    m.sum.aggregation_temporality = CUMULATIVE
    for s in samples:
        dp = m.sum.data_points.add()
        _attrs(dp.attributes, s.labels)
        dp.start_time_unix_nano = created.get(_key(s.labels), start_default)
        dp.time_unix_nano = now_ns
        dp.as_double = float(s.value)
    return len(samples)


def _gauge(sm, family, now_ns: int) -> int:
    samples = [s for s in family.samples if s.name == family.name]
    if not samples:
        return 0
    m = _new_metric(sm, family)
    for s in samples:
        dp = m.gauge.data_points.add()
        _attrs(dp.attributes, s.labels)
        dp.time_unix_nano = now_ns
        dp.as_double = float(s.value)
    return len(samples)


def _histogram(sm, family, now_ns: int, start_default: int) -> int:
    # prometheus_client gives cumulative `_bucket{le}` counts; OTLP wants the count per bucket and the finite bounds.
    groups: dict[tuple, dict] = {}
    for s in family.samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        g = groups.setdefault(_key(labels), {"labels": labels, "buckets": [], "sum": 0.0, "count": None})
        if s.name.endswith("_bucket"):
            g["buckets"].append((float(s.labels["le"]), float(s.value)))
        elif s.name.endswith("_sum"):
            g["sum"] = float(s.value)
        elif s.name.endswith("_count"):
            g["count"] = float(s.value)
    created = _created(family)
    groups = {k: g for k, g in groups.items() if g["buckets"]}
    if not groups:
        return 0
    m = _new_metric(sm, family)
    m.histogram.aggregation_temporality = CUMULATIVE
    for key, g in groups.items():
        buckets = sorted(g["buckets"])
        dp = m.histogram.data_points.add()
        _attrs(dp.attributes, g["labels"])
        dp.start_time_unix_nano = created.get(key, start_default)
        dp.time_unix_nano = now_ns
        prev = 0.0
        for le, cum in buckets:
            if not math.isinf(le):
                dp.explicit_bounds.append(le)
            dp.bucket_counts.append(int(max(0.0, cum - prev)))
            prev = cum
        if not math.isinf(buckets[-1][0]):
            dp.bucket_counts.append(0)  # OTLP: one more count than bounds (the +Inf bucket)
        dp.count = int(g["count"] if g["count"] is not None else prev)
        dp.sum = g["sum"]
    return len(groups)


class SelfScrape:
    """Stores meshscope's own metrics every ``interval`` seconds through the OTLP ingest path."""

    def __init__(self, metrics: SelfMetrics, batcher: Batcher, interval: float = 15.0, *,
                 tenant: str = DEFAULT_TENANT, instance: str | None = None) -> None:
        self.metrics = metrics
        self.batcher = batcher
        self.interval = interval
        self.tenant = tenant
        self.instance = socket.gethostname() if instance is None else instance
        self.started_ns = time.time_ns()
        self.last_error: str | None = None

    async def scrape_once(self) -> int:
        """One scrape into the batcher; returns the data points submitted (0 when the buffer is full)."""
        req, points = build_request(self.metrics.registry, instance=self.instance, process_start_ns=self.started_ns)
        if points == 0:
            return 0
        try:
            self.batcher.check_capacity("metrics")
        except BufferFull:
            return 0  # the store is behind: clients' data comes first, the next scrape has the same totals
        await accept_export(self.batcher, self.metrics, "metrics", PROTOCOL, req, req.SerializeToString(),
                            self.tenant)
        return points

    async def run(self, stop: asyncio.Event) -> None:
        """Scrape now, then every ``interval`` seconds until ``stop`` is set; errors are logged, never fatal.
        Until the registry holds a sample (a fresh server has counted nothing yet) it looks again every second, so
        the first points do not wait a whole interval."""
        stored_any = False
        while not stop.is_set():
            try:
                stored_any = await self.scrape_once() > 0 or stored_any
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - self-monitoring must never take the server down
                self.last_error = str(e)
                log.warning("self-monitoring scrape failed: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.interval if stored_any else min(1.0, self.interval))
            except asyncio.TimeoutError:
                pass
