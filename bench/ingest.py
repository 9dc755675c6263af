#!/usr/bin/env python3
"""End-to-end ingest benchmark for ``meshscope serve`` (OTLP/HTTP protobuf -> embedded chDB).

    python bench/ingest.py [--duration 20] [--signal traces|logs|both] [--concurrency 4]
                           [--json-out bench/results/ingest.json] [--target http://host:4318]

Per signal (``both`` runs traces, then logs, each against a fresh server and data dir):

1. pre-encode a pool of 50 distinct Export*ServiceRequest bodies, 1000 spans/log records each,
   12 services, ~10 attributes per item, timestamps = now (the store has a 7-day TTL);
2. start ``python -m meshscope serve`` on a temp dir and free ports, wait for ``/ready``;
3. a load generator in a second process (this file, ``--_loadgen``) posts the bodies for
   ``--duration`` seconds over ``--concurrency`` keep-alive connections (aiohttp), honouring
   429/503 Retry-After, and reports counts and latencies as JSON on stdout;
4. the server's RSS (with children) is sampled every 0.2 s until it exits; the peak is kept;
5. SIGTERM -> the server flushes and exits; the stored rows are counted (``--_count`` helper
   process, since chDB opens one data path per process) and compared with the acknowledged ones;
6. the store ceiling: the same rows as a pyarrow Table, ``INSERT ... SELECT * FROM Python(tbl)``
   into a fresh schema (``--_ceiling`` helper process), 200k rows in 50k-row batches.

Figures are printed one per line (``ingest.<signal>.<name> <value>``) and written with machine
info to ``--json-out``. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import shutil
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from benchutil import machine_info, write_json  # bench/'s shared helpers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

ITEMS_PER_REQUEST = 1000
DISTINCT_REQUESTS = 50
SEED = 20240611

# --------------------------------------------------------------------------------------------------------------
# Synthetic data model: plain Python structures, shared by the protobuf encoder (load) and the arrow builder
# (store ceiling), so both measure the same rows.
# --------------------------------------------------------------------------------------------------------------

SERVICES = [
    # name, version, namespace, language-ish scope
    ("frontend", "2.14.3", "shop", "io.opentelemetry.instrumentation.express"),
    ("api-gateway", "1.9.0", "edge", "io.opentelemetry.contrib.envoy"),
    ("checkout", "3.2.1", "shop", "io.opentelemetry.instrumentation.spring-webmvc-6.0"),
    ("cart", "1.22.0", "shop", "OpenTelemetry.Instrumentation.AspNetCore"),
    ("payment", "0.38.5", "payments", "io.opentelemetry.instrumentation.express"),
    ("inventory", "5.0.2", "shop", "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"),
    ("orders", "2.7.11", "shop", "io.opentelemetry.instrumentation.spring-webmvc-6.0"),
    ("shipping", "1.4.0", "logistics", "opentelemetry.instrumentation.flask"),
    ("recommendation", "0.12.9", "ml", "opentelemetry.instrumentation.fastapi"),
    ("user-profile", "4.1.0", "identity", "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"),
    ("notification", "1.0.17", "messaging", "io.opentelemetry.instrumentation.kafka-clients-2.6"),
    ("search", "7.3.0", "search", "opentelemetry.instrumentation.aiohttp_server"),
]
SERVICE_WEIGHTS = [14, 12, 9, 9, 6, 8, 9, 6, 8, 7, 5, 7]

ROUTES = {
    "frontend": ["/", "/product/{id}", "/cart", "/checkout", "/api/session"],
    "api-gateway": ["/api/v1/{service}/{path}", "/healthz", "/api/v1/auth/token"],
    "checkout": ["/api/v1/checkout", "/api/v1/checkout/{id}/confirm", "/api/v1/quotes"],
    "cart": ["/api/v1/cart/{userId}", "/api/v1/cart/{userId}/items", "/api/v1/cart/{userId}/items/{sku}"],
    "payment": ["/api/v1/payments", "/api/v1/payments/{id}/capture", "/api/v1/refunds"],
    "inventory": ["/api/v1/stock/{sku}", "/api/v1/reservations", "/api/v1/reservations/{id}"],
    "orders": ["/api/v1/orders", "/api/v1/orders/{id}", "/api/v1/orders/{id}/items"],
    "shipping": ["/api/v1/shipments", "/api/v1/shipments/{id}/track", "/api/v1/rates"],
    "recommendation": ["/api/v1/recommendations", "/api/v1/recommendations/{userId}"],
    "user-profile": ["/api/v1/users/{id}", "/api/v1/users/{id}/preferences", "/api/v1/users/me"],
    "notification": ["/api/v1/notify", "/api/v1/templates/{id}"],
    "search": ["/api/v1/search", "/api/v1/suggest", "/api/v1/search/facets"],
}
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
    "envoy/1.29.2",
]
DB_OPS = [
    ("postgresql", "SELECT", "orders", "SELECT id, status, total FROM orders WHERE customer_id = $1 LIMIT 50"),
    ("postgresql", "INSERT", "order_items", "INSERT INTO order_items (order_id, sku, qty) VALUES ($1, $2, $3)"),
    ("postgresql", "UPDATE", "stock", "UPDATE stock SET reserved = reserved + $1 WHERE sku = $2"),
    ("redis", "GET", "cart", "GET cart:{userId}"),
    ("redis", "HSET", "session", "HSET session:{sid} last_seen {ts}"),
    ("mongodb", "find", "profiles", '{"find": "profiles", "filter": {"_id": "?"}}'),
]
TOPICS = ["order-events", "payment-events", "shipment-updates", "email-outbox"]
INTERNAL_OPS = ["validate_cart", "compute_tax", "render_template", "score_candidates", "serialize_response",
                "apply_promotions", "resolve_feature_flags", "build_query"]
ERROR_MESSAGES = [
    ("TimeoutError", "upstream request timed out after 2000ms"),
    ("ConnectionResetError", "connection reset by peer"),
    ("IllegalStateException", "inventory reservation failed: insufficient stock"),
    ("PaymentDeclined", "card declined by issuer (code 51)"),
]


def _hex(rng: random.Random, nbytes: int) -> str:
    return "%0*x" % (nbytes * 2, rng.getrandbits(nbytes * 8))


def _resource(rng: random.Random, svc_idx: int) -> list[tuple[str, object]]:
    name, version, ns, _scope = SERVICES[svc_idx]
    pod = f"{name}-{_hex(rng, 5)[:10]}-{_hex(rng, 3)[:5]}"
    return [
        ("service.name", name),
        ("service.version", version),
        ("k8s.namespace.name", ns),
        ("k8s.pod.name", pod),
        ("host.name", f"ip-10-{rng.randint(0, 3)}-{rng.randint(0, 255)}-{rng.randint(1, 254)}.ec2.internal"),
    ]


def _split(rng: random.Random, total: int) -> list[int]:
    """Items per service for one request: weighted, every service gets at least a few."""
    base = [5] * len(SERVICES)
    rest = total - sum(base)
    for i in rng.choices(range(len(SERVICES)), weights=SERVICE_WEIGHTS, k=rest):
        base[i] += 1
    return base


def _fill(rng: random.Random, route: str) -> str:
    return (route.replace("{id}", str(rng.randint(1000, 999999)))
            .replace("{userId}", f"u{rng.randint(1, 50000)}")
            .replace("{sku}", f"SKU-{rng.randint(10000, 99999)}")
            .replace("{service}", rng.choice(["orders", "cart", "search", "users"]))
            .replace("{path}", rng.choice(["list", "detail", "items"])))


def gen_spans(rng: random.Random, svc_idx: int, count: int, now_ns: int) -> list[dict]:
    """``count`` spans of one service, in traces of 1-8 spans (a server root with children)."""
    name = SERVICES[svc_idx][0]
    spans: list[dict] = []
    peers = [s[0] for s in SERVICES if s[0] != name]
    while len(spans) < count:
        size = min(rng.randint(1, 8), count - len(spans))
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        root_id = rng.getrandbits(64).to_bytes(8, "big")
        root_start = now_ns - rng.randint(0, 60_000_000_000)  # within the last minute
        root_dur = int(rng.lognormvariate(16.5, 1.0))  # ~15 ms median
        route = rng.choice(ROUTES[name])
        method = rng.choices(["GET", "POST", "PUT", "DELETE"], weights=[70, 20, 7, 3])[0]
        root_error = rng.random() < 0.04
        status = rng.choice([500, 502, 503]) if root_error else rng.choices([200, 201, 204, 404], [85, 8, 4, 3])[0]
        port = rng.choice([8080, 8443, 3000, 9090])
        spans.append(dict(
            trace_id=trace_id, span_id=root_id, parent=b"", name=f"{method} {route}", kind=2,
            start=root_start, end=root_start + root_dur,
            attrs=[
                ("http.request.method", method),
                ("http.route", route),
                ("http.response.status_code", status),
                ("url.path", _fill(rng, route)),
                ("url.scheme", "http"),
                ("server.address", f"{name}.{SERVICES[svc_idx][2]}.svc.cluster.local"),
                ("server.port", port),
                ("net.peer.port", rng.randint(32768, 60999)),
                ("user_agent.original", rng.choice(USER_AGENTS)),
                ("app.cache_hit", rng.random() < 0.6),
                ("app.request_cost", round(rng.uniform(0.1, 40.0), 3)),
            ],
            status=(2, f"HTTP {status}") if root_error else (0, ""),
            events=_error_event(rng, root_start + root_dur // 2) if root_error else [],
        ))
        for _ in range(size - 1):
            off = rng.randint(0, max(1, root_dur // 2))
            dur = max(1000, int(root_dur * rng.uniform(0.05, 0.45)))
            start = root_start + off
            err = rng.random() < 0.03
            sid = rng.getrandbits(64).to_bytes(8, "big")
            pick = rng.random()
            if pick < 0.35:  # outgoing HTTP call
                peer = rng.choice(peers)
                proute = rng.choice(ROUTES[peer])
                m = rng.choice(["GET", "POST"])
                code = rng.choice([500, 503, 504]) if err else 200
                sp = dict(name=m, kind=3, attrs=[
                    ("http.request.method", m),
                    ("url.full", f"http://{peer}:8080{_fill(rng, proute)}"),
                    ("server.address", peer),
                    ("server.port", 8080),
                    ("http.response.status_code", code),
                    ("net.peer.port", 8080),
                    ("peer.service", peer),
                    ("network.protocol.version", rng.choice(["1.1", "2"])),
                    ("app.retry", rng.random() < 0.05),
                    ("app.timeout_s", rng.choice([0.5, 1.0, 2.5, 5.0])),
                ])
            elif pick < 0.65:  # database
                system, op, coll, text = rng.choice(DB_OPS)
                sp = dict(name=f"{op} {coll}", kind=3, attrs=[
                    ("db.system", system),
                    ("db.namespace", f"{name.replace('-', '_')}_db"),
                    ("db.operation.name", op),
                    ("db.collection.name", coll),
                    ("db.query.text", text),
                    ("server.address", f"{system}-primary.data.svc.cluster.local"),
                    ("server.port", {"postgresql": 5432, "redis": 6379, "mongodb": 27017}[system]),
                    ("db.response.returned_rows", rng.randint(0, 500)),
                    ("db.cached", rng.random() < 0.3),
                    ("db.query.cost", round(rng.uniform(0.01, 12.0), 3)),
                ])
            elif pick < 0.9:  # internal work
                op = rng.choice(INTERNAL_OPS)
                sp = dict(name=op, kind=1, attrs=[
                    ("code.function.name", op),
                    ("code.namespace", f"com.shop.{name.replace('-', '')}.service"),
                    ("code.file.path", f"src/{name}/{op}.py"),
                    ("code.line.number", rng.randint(10, 900)),
                    ("thread.id", rng.randint(1, 64)),
                    ("thread.name", f"worker-{rng.randint(1, 16)}"),
                    ("app.items", rng.randint(0, 120)),
                    ("app.cache_hit", rng.random() < 0.5),
                    ("app.weight", round(rng.uniform(0, 1), 4)),
                    ("app.component", name),
                ])
            else:  # messaging
                topic = rng.choice(TOPICS)
                producer = rng.random() < 0.5
                sp = dict(name=f"{topic} {'publish' if producer else 'process'}", kind=4 if producer else 5, attrs=[
                    ("messaging.system", "kafka"),
                    ("messaging.destination.name", topic),
                    ("messaging.operation.type", "publish" if producer else "process"),
                    ("messaging.message.id", _hex(rng, 8)),
                    ("messaging.batch.message_count", rng.randint(1, 50)),
                    ("messaging.kafka.destination.partition", rng.randint(0, 11)),
                    ("server.address", "kafka-0.kafka.messaging.svc.cluster.local"),
                    ("server.port", 9092),
                    ("messaging.kafka.message.tombstone", False),
                    ("app.lag_s", round(rng.uniform(0, 3), 3)),
                ])
            sp.update(trace_id=trace_id, span_id=sid, parent=root_id, start=start, end=start + dur, status=(0, ""))
            if err:
                sp["events"] = _error_event(rng, start + dur // 2)
                sp["status"] = (2, sp["events"][0][2][1][1])  # the exception message
            elif rng.random() < 0.05:
                sp["events"] = [(start + dur // 3, "cache.miss", [("cache.key", f"k:{rng.randint(1, 10**6)}")])]
            else:
                sp["events"] = []
            spans.append(sp)
    return spans


def _error_event(rng: random.Random, t: int) -> list:
    typ, msg = rng.choice(ERROR_MESSAGES)
    return [(t, "exception", [("exception.type", typ), ("exception.message", msg),
                              ("exception.stacktrace", f"{typ}: {msg}\n  at handler (server.js:{rng.randint(10, 400)})")])]


LOG_TEMPLATES = [
    ("INFO", 9, "Completed {method} {path} status={status} duration={ms}ms bytes={bytes} user_id={uid} "
                "request_id={rid} client={ip} ua=\"{ua}\""),
    ("INFO", 9, "Fetched {n} rows from {table} in {ms}ms (query_hash={h16}, pool=primary, conn_id={conn}, cache=miss)"),
    ("INFO", 9, "Payment authorization for order {oid} approved: provider=stripe amount={amt} currency=EUR "
                "attempt={k} latency={ms}ms"),
    ("INFO", 9, "Consumer group {grp} rebalanced: assigned partitions [{p1}, {p2}, {p3}] on topic {topic}, "
                "lag={lag} messages, generation={gen}"),
    ("INFO", 9, "Cache refresh finished for key space '{ks}': {n} entries loaded, {m} evicted, took {ms}ms, "
                "next refresh in {s}s"),
    ("DEBUG", 5, "Resolved feature flags for user {uid}: checkout_v2=true, new_search={b}, promo_banner=false "
                 "(evaluation took {ms}ms, ruleset version {gen})"),
    ("WARN", 13, "Retrying call to {peer} after error: upstream connect error or disconnect/reset before headers. "
                 "reset reason: connection timeout (attempt {k}/5, backoff {ms}ms)"),
    ("WARN", 13, "Slow query detected on {table}: {ms}ms exceeds threshold of 250ms, plan=SeqScan rows={n} "
                 "request_id={rid}"),
    ("ERROR", 17, "IllegalStateException: inventory reservation failed for sku=SKU-{sku} warehouse={wh}: insufficient "
                  "stock (requested={k}, available={m})\n\tat com.shop.inventory.ReservationService.reserve"
                  "(ReservationService.java:{line})"),
    ("ERROR", 17, "Request {method} {path} failed with status={status} after {ms}ms: {err} (request_id={rid}, "
                  "trace_sampled={b})"),
]
LOG_WEIGHTS = [30, 12, 8, 6, 6, 10, 8, 6, 4, 4]


def gen_logs(rng: random.Random, svc_idx: int, count: int, now_ns: int) -> list[dict]:
    name = SERVICES[svc_idx][0]
    peers = [s[0] for s in SERVICES if s[0] != name]
    out = []
    for _ in range(count):
        sev_text, sev_num, tmpl = rng.choices(LOG_TEMPLATES, weights=LOG_WEIGHTS)[0]
        route = rng.choice(ROUTES[name])
        method = rng.choice(["GET", "POST", "PUT"])
        status = rng.choice([500, 502, 503]) if sev_text == "ERROR" else rng.choice([200, 200, 200, 201, 404])
        ms = round(rng.lognormvariate(3, 1), 1)
        body = tmpl.format(
            method=method, path=_fill(rng, route), status=status, ms=ms, bytes=rng.randint(200, 90000),
            uid=f"u{rng.randint(1, 50000)}", rid=_hex(rng, 8), ip=f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}", ua=rng.choice(USER_AGENTS), n=rng.randint(0, 5000),
            table=rng.choice(["orders", "order_items", "stock", "profiles", "carts"]), h16=_hex(rng, 8),
            conn=rng.randint(1, 64), oid=rng.randint(10**6, 10**7), amt=f"{rng.uniform(5, 900):.2f}",
            k=rng.randint(1, 5), grp=f"{name}-consumers", p1=rng.randint(0, 3), p2=rng.randint(4, 7),
            p3=rng.randint(8, 11), topic=rng.choice(TOPICS), lag=rng.randint(0, 20000), gen=rng.randint(1, 400),
            ks=rng.choice(["catalog", "prices", "sessions", "flags"]), m=rng.randint(0, 900), s=rng.choice([30, 60, 300]),
            b=rng.choice(["true", "false"]), peer=rng.choice(peers), sku=rng.randint(10000, 99999),
            wh=rng.choice(["FRA1", "AMS2", "DUB1"]), line=rng.randint(40, 400), err=rng.choice(ERROR_MESSAGES)[1],
        )
        t = now_ns - rng.randint(0, 60_000_000_000)
        with_trace = rng.random() < 0.5
        out.append(dict(
            time=t, observed=t + rng.randint(100_000, 50_000_000), sev_text=sev_text, sev_num=sev_num, body=body,
            trace_id=rng.getrandbits(128).to_bytes(16, "big") if with_trace else b"",
            span_id=rng.getrandbits(64).to_bytes(8, "big") if with_trace else b"",
            flags=1 if with_trace else 0,
            attrs=[
                ("code.function.name", rng.choice(INTERNAL_OPS)),
                ("code.file.path", f"src/{name}/handlers.py"),
                ("code.line.number", rng.randint(10, 900)),
                ("thread.name", f"worker-{rng.randint(1, 16)}"),
                ("thread.id", rng.randint(1, 64)),
                ("http.request.method", method),
                ("http.route", route),
                ("http.response.status_code", status),
                ("app.retry", rng.random() < 0.05),
                ("app.duration_ms", ms),
            ],
        ))
    return out


def gen_request(signal: str, index: int, now_ns: int) -> list[tuple[list, tuple[str, str], list[dict]]]:
    """One request's worth of data: ``[(resource attrs, (scope name, version), items)]`` per service."""
    rng = random.Random(SEED * 1000 + index * 2 + (signal == "logs"))
    groups = []
    for svc_idx, n in enumerate(_split(rng, ITEMS_PER_REQUEST)):
        res = _resource(rng, svc_idx)
        scope = (SERVICES[svc_idx][3], "1.33.0")
        items = gen_spans(rng, svc_idx, n, now_ns) if signal == "traces" else gen_logs(rng, svc_idx, n, now_ns)
        groups.append((res, scope, items))
    return groups


# --- protobuf --------------------------------------------------------------------------------------------------

def _kv(pb_common, attrs):
    out = []
    for k, v in attrs:
        if isinstance(v, bool):
            av = pb_common.AnyValue(bool_value=v)
        elif isinstance(v, int):
            av = pb_common.AnyValue(int_value=v)
        elif isinstance(v, float):
            av = pb_common.AnyValue(double_value=v)
        else:
            av = pb_common.AnyValue(string_value=v)
        out.append(pb_common.KeyValue(key=k, value=av))
    return out


def encode_request(signal: str, groups) -> bytes:
    from opentelemetry.proto.common.v1 import common_pb2 as pc
    from opentelemetry.proto.resource.v1 import resource_pb2 as pr

    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1 import trace_pb2 as pt

        req = ExportTraceServiceRequest()
        for res, (sname, sver), spans in groups:
            rs = req.resource_spans.add(resource=pr.Resource(attributes=_kv(pc, res)))
            ss = rs.scope_spans.add(scope=pc.InstrumentationScope(name=sname, version=sver))
            for s in spans:
                ss.spans.append(pt.Span(
                    trace_id=s["trace_id"], span_id=s["span_id"], parent_span_id=s["parent"], flags=1,
                    name=s["name"], kind=s["kind"], start_time_unix_nano=s["start"], end_time_unix_nano=s["end"],
                    attributes=_kv(pc, s["attrs"]),
                    events=[pt.Span.Event(time_unix_nano=t, name=n, attributes=_kv(pc, a)) for t, n, a in s["events"]],
                    status=pt.Status(code=s["status"][0], message=s["status"][1]),
                ))
        return req.SerializeToString()

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1 import logs_pb2 as pl

    req = ExportLogsServiceRequest()
    for res, (sname, sver), logs in groups:
        rl = req.resource_logs.add(resource=pr.Resource(attributes=_kv(pc, res)))
        sl = rl.scope_logs.add(scope=pc.InstrumentationScope(name=sname, version=sver))
        for r in logs:
            sl.log_records.append(pl.LogRecord(
                time_unix_nano=r["time"], observed_time_unix_nano=r["observed"], severity_number=r["sev_num"],
                severity_text=r["sev_text"], body=pc.AnyValue(string_value=r["body"]),
                attributes=_kv(pc, r["attrs"]), trace_id=r["trace_id"], span_id=r["span_id"], flags=r["flags"],
            ))
    return req.SerializeToString()


def build_pool(signal: str, n: int = DISTINCT_REQUESTS) -> list[bytes]:
    now_ns = time.time_ns()
    return [encode_request(signal, gen_request(signal, i, now_ns)) for i in range(n)]


# --- arrow (store ceiling) -------------------------------------------------------------------------------------

def _attr_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r  # ClickHouse prints 3.0 as 3
    return str(v)


def _map_array(rows):
    """Map(String, String) from a list of [(k, v), ...] per row, via offsets (never from dicts)."""
    import pyarrow as pa

    offsets = [0]
    keys: list[str] = []
    vals: list[str] = []
    for kvs in rows:
        for k, v in kvs:
            keys.append(k)
            vals.append(_attr_text(v))
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                                   pa.array(vals, pa.string()))


def _list_of(offsets, values):
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


TRACE_COLUMNS = [
    "TenantId", "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "TraceFlags", "SpanName", "SpanKind",
    "ServiceName", "ResourceAttributes", "ResourceSchemaUrl", "ResourceDroppedAttributesCount", "ScopeName",
    "ScopeVersion", "ScopeAttributes", "ScopeDroppedAttributesCount", "ScopeSchemaUrl", "SpanAttributes",
    "DroppedAttributesCount", "Duration", "StatusCode", "StatusMessage", "Events.Timestamp", "Events.Name",
    "Events.Attributes", "Events.DroppedAttributesCount", "DroppedEventsCount", "Links.TraceId", "Links.SpanId",
    "Links.TraceState", "Links.Attributes", "Links.DroppedAttributesCount", "Links.Flags", "DroppedLinksCount",
]
LOG_COLUMNS = [
    "TenantId", "Timestamp", "ObservedTimestamp", "TraceId", "SpanId", "TraceFlags", "Flags", "SeverityText",
    "SeverityNumber", "ServiceName", "Body", "BodyType", "EventName", "ResourceSchemaUrl", "ResourceAttributes",
    "ResourceDroppedAttributesCount", "ScopeSchemaUrl", "ScopeName", "ScopeVersion", "ScopeAttributes",
    "ScopeDroppedAttributesCount", "LogAttributes", "DroppedAttributesCount",
]
SPAN_KINDS = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
              "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
STATUS_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def arrow_table(signal: str, requests):
    """The rows the server would store for ``requests`` (lists of groups), as a pyarrow Table whose columns are
    in the order of TRACE_COLUMNS / LOG_COLUMNS."""
    import pyarrow as pa

    ts = pa.timestamp("ns")
    flat = [(res, scope, it) for groups in requests for res, scope, items in groups for it in items]
    n = len(flat)
    res_map = _map_array([res for res, _, _ in flat])
    scope_map = _map_array([[] for _ in range(n)])
    service = pa.array([res[0][1] for res, _, _ in flat], pa.string())
    common = dict(
        TenantId=pa.array(["default"] * n, pa.string()),
        ServiceName=service,
        ResourceAttributes=res_map,
        ResourceSchemaUrl=pa.array([""] * n, pa.string()),
        ResourceDroppedAttributesCount=pa.array([0] * n, pa.uint32()),
        ScopeName=pa.array([sc[0] for _, sc, _ in flat], pa.string()),
        ScopeVersion=pa.array([sc[1] for _, sc, _ in flat], pa.string()),
        ScopeAttributes=scope_map,
        ScopeDroppedAttributesCount=pa.array([0] * n, pa.uint32()),
        ScopeSchemaUrl=pa.array([""] * n, pa.string()),
        DroppedAttributesCount=pa.array([0] * n, pa.uint32()),
    )
    if signal == "traces":
        sp = [it for _, _, it in flat]
        ev_off = [0]
        ev_ts, ev_name, ev_attrs = [], [], []
        for s in sp:
            for t, name, attrs in s["events"]:
                ev_ts.append(t)
                ev_name.append(name)
                ev_attrs.append(attrs)
            ev_off.append(len(ev_ts))
        empty_off = [0] * (n + 1)
        cols = dict(
            common,
            Timestamp=pa.array([s["start"] for s in sp], pa.int64()).cast(ts),
            TraceId=pa.array([s["trace_id"].hex() for s in sp], pa.string()),
            SpanId=pa.array([s["span_id"].hex() for s in sp], pa.string()),
            ParentSpanId=pa.array([s["parent"].hex() for s in sp], pa.string()),
            TraceState=pa.array([""] * n, pa.string()),
            TraceFlags=pa.array([1] * n, pa.uint32()),
            SpanName=pa.array([s["name"] for s in sp], pa.string()),
            SpanKind=pa.array([SPAN_KINDS[s["kind"]] for s in sp], pa.string()),
            SpanAttributes=_map_array([s["attrs"] for s in sp]),
            Duration=pa.array([s["end"] - s["start"] for s in sp], pa.uint64()),
            StatusCode=pa.array([STATUS_CODES[s["status"][0]] for s in sp], pa.string()),
            StatusMessage=pa.array([s["status"][1] for s in sp], pa.string()),
            **{
                "Events.Timestamp": _list_of(ev_off, pa.array(ev_ts, pa.int64()).cast(ts)),
                "Events.Name": _list_of(ev_off, pa.array(ev_name, pa.string())),
                "Events.Attributes": _list_of(ev_off, _map_array(ev_attrs)),
                "Events.DroppedAttributesCount": _list_of(ev_off, pa.array([0] * len(ev_ts), pa.uint32())),
                "Links.TraceId": _list_of(empty_off, pa.array([], pa.string())),
                "Links.SpanId": _list_of(empty_off, pa.array([], pa.string())),
                "Links.TraceState": _list_of(empty_off, pa.array([], pa.string())),
                "Links.Attributes": _list_of(empty_off, _map_array([])),
                "Links.DroppedAttributesCount": _list_of(empty_off, pa.array([], pa.uint32())),
                "Links.Flags": _list_of(empty_off, pa.array([], pa.uint32())),
            },
            DroppedEventsCount=pa.array([0] * n, pa.uint32()),
            DroppedLinksCount=pa.array([0] * n, pa.uint32()),
        )
        names = TRACE_COLUMNS
    else:
        lg = [it for _, _, it in flat]
        cols = dict(
            common,
            Timestamp=pa.array([r["time"] for r in lg], pa.int64()).cast(ts),
            ObservedTimestamp=pa.array([r["observed"] for r in lg], pa.int64()).cast(ts),
            TraceId=pa.array([r["trace_id"].hex() for r in lg], pa.string()),
            SpanId=pa.array([r["span_id"].hex() for r in lg], pa.string()),
            TraceFlags=pa.array([r["flags"] & 255 for r in lg], pa.uint8()),
            Flags=pa.array([r["flags"] for r in lg], pa.uint32()),
            SeverityText=pa.array([r["sev_text"] for r in lg], pa.string()),
            SeverityNumber=pa.array([r["sev_num"] for r in lg], pa.uint8()),
            Body=pa.array([r["body"] for r in lg], pa.string()),
            BodyType=pa.array(["string"] * n, pa.string()),
            EventName=pa.array([""] * n, pa.string()),
            LogAttributes=_map_array([r["attrs"] for r in lg]),
        )
        names = LOG_COLUMNS
    # arrow column names without dots (positional INSERT ... SELECT * maps them onto the table's columns)
    return pa.table([cols[c] for c in names], names=[c.replace(".", "_") for c in names])


# --------------------------------------------------------------------------------------------------------------
# Helper process modes
# --------------------------------------------------------------------------------------------------------------

def _percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


async def _load(url: str, signal: str, bodies: list[bytes], duration: float, concurrency: int) -> dict:
    import aiohttp
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp_type, field = ((ExportTraceServiceResponse, "rejected_spans") if signal == "traces"
                        else (ExportLogsServiceResponse, "rejected_log_records"))
    endpoint = url.rstrip("/") + f"/v1/{signal}"
    headers = {"Content-Type": "application/x-protobuf"}
    st = dict(requests_ok=0, acked_items=0, rejected_items=0, backpressure_429=0, unavailable_503=0,
              retry_after_wait_s=0.0, other_status={}, errors=0, error_samples=[], bytes_sent=0)
    lat_ok: list[float] = []
    counter = iter(range(1 << 62))
    t_first = [None]
    t_last_ok = [None]
    deadline = [0.0]

    async def worker(session):
        while time.monotonic() < deadline[0]:
            i = next(counter)
            body = bodies[i % len(bodies)]
            while True:
                if t_first[0] is None:
                    t_first[0] = time.time()
                t0 = time.perf_counter()
                try:
                    async with session.post(endpoint, data=body, headers=headers) as r:
                        data = await r.read()
                        status = r.status
                        retry_after = r.headers.get("Retry-After")
                except Exception as e:  # connection refused/reset, timeout
                    st["errors"] += 1
                    if len(st["error_samples"]) < 5:
                        st["error_samples"].append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.05)
                    break
                lat = time.perf_counter() - t0
                st["bytes_sent"] += len(body)
                if status == 200:
                    st["requests_ok"] += 1
                    lat_ok.append(lat)
                    rejected = 0
                    if data:
                        try:
                            rejected = getattr(resp_type.FromString(data).partial_success, field)
                        except Exception:
                            pass
                    st["rejected_items"] += rejected
                    st["acked_items"] += ITEMS_PER_REQUEST - rejected
                    t_last_ok[0] = time.time()
                    break
                if status in (429, 503):
                    st["backpressure_429" if status == 429 else "unavailable_503"] += 1
                    try:
                        wait = float(retry_after) if retry_after else 1.0
                    except ValueError:
                        wait = 1.0
                    wait = max(0.0, min(wait, deadline[0] - time.monotonic()))
                    st["retry_after_wait_s"] += wait
                    await asyncio.sleep(wait)
                    if time.monotonic() >= deadline[0]:
                        break  # out of time: the body is not retried (and not counted as acknowledged)
                    continue
                key = str(status)
                st["other_status"][key] = st["other_status"].get(key, 0) + 1
                if len(st["error_samples"]) < 5:
                    st["error_samples"].append(f"HTTP {status}: {data[:300]!r}")
                break

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        deadline[0] = start + duration
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        t_end = time.time()
    lat_ok.sort()
    st.update(
        t_first=t_first[0], t_last_ok=t_last_ok[0], t_end=t_end,
        p50_ms=None if not lat_ok else 1000 * _percentile(lat_ok, 0.50),
        p90_ms=None if not lat_ok else 1000 * _percentile(lat_ok, 0.90),
        p99_ms=None if not lat_ok else 1000 * _percentile(lat_ok, 0.99),
        max_ms=None if not lat_ok else 1000 * lat_ok[-1],
    )
    return st


def mode_loadgen(args) -> int:
    with open(args.bodies, "rb") as f:
        bodies = pickle.load(f)
    st = asyncio.run(_load(args.target, args.signal, bodies, args.duration, args.concurrency))
    sys.stdout.write(json.dumps(st) + "\n")
    return 0


def mode_count(args) -> int:
    from meshscope.store import EmbeddedStore

    st = EmbeddedStore(args.data)
    out = {}
    for signal in ("traces", "logs"):
        try:
            out[signal] = int(st.query(f"SELECT count() FROM otel.otel_{signal}").rows[0][0])
        except Exception as e:  # table missing (server never applied the schema)
            out[signal] = None
            out[f"{signal}_error"] = str(e)[:300]
    st.close()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def mode_ceiling(args) -> int:
    import chdb

    from meshscope.schema import apply_schema
    from meshscope.store import EmbeddedStore

    signal = args.signal
    t0 = time.perf_counter()
    now_ns = time.time_ns()
    batch_rows = args.ceiling_batch
    reqs_per_batch = max(1, batch_rows // ITEMS_PER_REQUEST)
    # the same rows the load generator posts (same seeds), one 50k-row batch from 50 distinct requests
    requests = [gen_request(signal, i % DISTINCT_REQUESTS, now_ns) for i in range(reqs_per_batch)]
    tbl = arrow_table(signal, requests)
    del requests
    build_s = time.perf_counter() - t0

    data = tempfile.mkdtemp(prefix="meshscope-ceiling-")
    try:
        st = EmbeddedStore(data)
        apply_schema(st)
        conn = chdb.connect(data)  # same data path, same process: chDB shares the instance
        table = "otel_traces" if signal == "traces" else "otel_logs"
        cols = TRACE_COLUMNS if signal == "traces" else LOG_COLUMNS
        col_list = ", ".join(f"`{c}`" for c in cols)
        sql = f"INSERT INTO otel.{table} ({col_list}) SELECT * FROM Python(tbl)"
        batches = max(1, args.ceiling_rows // tbl.num_rows)
        times = []
        for _ in range(batches):
            t = time.perf_counter()
            conn.query(sql)  # chDB resolves Python(tbl) in this frame
            times.append(time.perf_counter() - t)
        stored = int(st.query(f"SELECT count() FROM otel.{table}").rows[0][0])
        conn.close()
        st.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    rows = batches * tbl.num_rows
    out = dict(rows=rows, stored=stored, batch_rows=tbl.num_rows, batches=batches, insert_s=sum(times),
               batch_s=times, rows_per_s=rows / sum(times), arrow_build_s=build_s,
               arrow_mib=tbl.nbytes / 2**20)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


# --------------------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _helper(mode: str, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), mode, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{mode} helper failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{mode} helper printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(lines[-1])


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.stop_event = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            total = self.proc.memory_info().rss
            for c in self.proc.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        self.samples += 1
        self.peak = max(self.peak, total)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)


def start_server(data: str, otlp_port: int, http_port: int, log_path: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "meshscope", "serve", "--data", data, "--host", "127.0.0.1",
           "--otlp-http-port", str(otlp_port), "--http-port", str(http_port), *extra]
    logf = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    finally:
        logf.close()


def wait_ready(proc: subprocess.Popen, http_port: int, log_path: str, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{http_port}/ready"
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before ready; its output:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout:.0f}s; its output:\n{_tail(log_path)}")


def run_signal(signal: str, args, figures: dict, details: dict) -> None:
    p = f"ingest.{signal}"
    work = tempfile.mkdtemp(prefix=f"meshscope-bench-{signal}-")
    try:
        t = time.perf_counter()
        bodies = build_pool(signal)
        enc_s = time.perf_counter() - t
        body_mib = sum(map(len, bodies)) / 2**20
        print(f"# {signal}: encoded {len(bodies)} requests x {ITEMS_PER_REQUEST} items, {body_mib:.1f} MiB, "
              f"{enc_s:.1f}s", file=sys.stderr)
        bodies_path = os.path.join(work, "bodies.pickle")
        with open(bodies_path, "wb") as f:
            pickle.dump(bodies, f)
        del bodies
        d = details.setdefault(signal, {})
        d.update(pool_requests=DISTINCT_REQUESTS, items_per_request=ITEMS_PER_REQUEST,
                 avg_request_kib=body_mib * 1024 / DISTINCT_REQUESTS)

        proc = None
        sampler = None
        data = os.path.join(work, "data")
        log_path = os.path.join(work, "server.log")
        if args.target:
            target = args.target
        else:
            otlp_port, http_port = _free_port(), _free_port()
            proc = start_server(data, otlp_port, http_port, log_path, args.server_arg or [])
            ready_s = wait_ready(proc, http_port, log_path)
            d["server_ready_s"] = ready_s
            print(f"# {signal}: server pid {proc.pid} ready in {ready_s:.1f}s", file=sys.stderr)
            target = f"http://127.0.0.1:{otlp_port}"
            sampler = RssSampler(proc.pid)
            sampler.start()

        lg = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_loadgen", "--signal", signal, "--target", target,
             "--bodies", bodies_path, "--duration", str(args.duration), "--concurrency", str(args.concurrency)],
            capture_output=True, text=True, timeout=args.duration + 400, cwd=REPO)
        if lg.returncode != 0 or not lg.stdout.strip():
            if proc:
                proc.kill()
            raise RuntimeError(f"load generator failed ({lg.returncode}):\n{lg.stderr[-4000:]}")
        load = json.loads(lg.stdout.strip().splitlines()[-1])
        d["load"] = load
        if load["t_first"] is None or load["requests_ok"] == 0:
            print(f"WARNING {signal}: no request acknowledged; samples: {load['error_samples']}")

        exit_wall = None
        if proc is not None:
            t_term = time.time()
            proc.send_signal(_signal.SIGTERM)
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
                print(f"WARNING {signal}: server did not exit within 120s of SIGTERM (killed); "
                      f"tail of its output:\n{_tail(log_path)}")
            exit_wall = time.time()
            sampler.stop_event.set()
            sampler.join()
            d.update(server_exit_code=rc, shutdown_s=exit_wall - t_term, rss_samples=sampler.samples)
            figures[f"{p}.shutdown_flush_s"] = round(exit_wall - t_term, 1)
            if rc not in (0, None):
                print(f"WARNING {signal}: server exited with {rc}; tail of its output:\n{_tail(log_path)}")

        acked = load["acked_items"]
        span = (load["t_end"] - load["t_first"]) if load["t_first"] else None
        figures[f"{p}.ack_items_per_s"] = round(acked / span) if span else 0
        figures[f"{p}.acked_items"] = acked
        figures[f"{p}.p50_ms"] = None if load["p50_ms"] is None else round(load["p50_ms"], 1)
        figures[f"{p}.p99_ms"] = None if load["p99_ms"] is None else round(load["p99_ms"], 1)
        figures[f"{p}.backpressure_429"] = load["backpressure_429"]
        if load["unavailable_503"] or load["other_status"] or load["errors"]:
            print(f"WARNING {signal}: 503={load['unavailable_503']} other={load['other_status']} "
                  f"errors={load['errors']} samples={load['error_samples']}")

        if proc is not None:
            figures[f"{p}.peak_rss_mib"] = round(sampler.peak / 2**20, 1)
            counts = _helper("--_count", ["--data", data], timeout=300)
            stored = counts.get(signal)
            d["counts"] = counts
            figures[f"{p}.stored_items"] = stored
            if stored != acked:
                print(f"WARNING {signal}: stored {stored} != acknowledged {acked} "
                      f"({counts.get(signal + '_error', '')})")
            if load["t_first"] and stored:
                figures[f"{p}.e2e_items_per_s"] = round(stored / (exit_wall - load["t_first"]))
            else:
                figures[f"{p}.e2e_items_per_s"] = 0
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)  # free the disk before the ceiling run

            if not args.no_ceiling:
                ceil = _helper("--_ceiling", ["--signal", signal, "--ceiling-rows", str(args.ceiling_rows),
                                              "--ceiling-batch", str(args.ceiling_batch)], timeout=900)
                d["ceiling"] = ceil
                figures[f"{p}.store_ceiling_rows_per_s"] = round(ceil["rows_per_s"])
                if ceil["stored"] != ceil["rows"]:
                    print(f"WARNING {signal}: ceiling stored {ceil['stored']} of {ceil['rows']} rows")
                figures[f"{p}.fraction_of_ceiling"] = round(figures[f"{p}.e2e_items_per_s"] / ceil["rows_per_s"], 3)
        for k in sorted(figures):
            if k.startswith(p + "."):
                print(f"{k} {figures[k]}", flush=True)
    finally:
        if args.keep:
            print(f"# {signal}: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="load window in seconds (default 20)")
    ap.add_argument("--signal", choices=["traces", "logs", "both"], default="both")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent keep-alive connections (default 4)")
    ap.add_argument("--json-out", default=os.path.join(HERE, "results", "ingest.json"))
    ap.add_argument("--target", help="benchmark a running server's OTLP/HTTP base URL (no count, RSS or ceiling)")
    ap.add_argument("--server-arg", action="append", metavar="ARG",
                    help="extra argument for `meshscope serve`, e.g. --server-arg=--flush-interval=2 (repeatable)")
    ap.add_argument("--ceiling-rows", type=int, default=200_000)
    ap.add_argument("--ceiling-batch", type=int, default=50_000)
    ap.add_argument("--no-ceiling", action="store_true", help="skip the store ceiling measurement")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (data, server log)")
    # helper process modes
    ap.add_argument("--_loadgen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_count", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_ceiling", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bodies", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._loadgen:
        return mode_loadgen(args)
    if args._count:
        return mode_count(args)
    if args._ceiling:
        return mode_ceiling(args)

    signals = ["traces", "logs"] if args.signal == "both" else [args.signal]
    figures: dict = {}
    details: dict = {}
    info = machine_info(("aiohttp", "protobuf", "pyarrow"))
    print(f"# {info['nproc']} CPUs ({info['cpu_model']}), python {info['python']}, chdb {info['chdb_version']}",
          file=sys.stderr)
    for signal in signals:
        run_signal(signal, args, figures, details)
    out = dict(figures=figures, machine=info, details=details,
               config=dict(duration_s=args.duration, concurrency=args.concurrency, signals=signals,
                           target=args.target, server_args=args.server_arg or [],
                           items_per_request=ITEMS_PER_REQUEST, distinct_requests=DISTINCT_REQUESTS,
                           ceiling_rows=args.ceiling_rows, ceiling_batch=args.ceiling_batch))
    write_json(args.json_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
