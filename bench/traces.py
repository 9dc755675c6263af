#!/usr/bin/env python3
"""Trace benchmark: trace by id, search, RED over 10M stored spans.

    python bench/traces.py [--size 10000000] [--runs 5] [--data ./bench-data/traces]
                           [--json-out bench/results/traces.json] [--regenerate]

1. **Data** (cached in ``--data``; reused while its manifest matches ``--size`` and the generator version and it is
   less than 6 days old, the store's TTL being 7): spans generated *inside* ClickHouse by ``INSERT INTO otel_traces
   ... SELECT ... FROM numbers() ARRAY JOIN range(n)``, about ``size / 27.5`` traces of 5-50 spans (27.5 on average)
   spread evenly over the 6 h before the anchor (a whole minute). A trace is a random tree of server spans joined by
   client spans across 20 services (the root in one of 5 front services, 4 operations per service); 1 % of traces
   are slow (root 1-3 s, else 5-300 ms), 2 % of spans are errors with an ``exception`` event; HTTP attributes as
   the OTel SDK sends them, a resource with service, version, namespace, pod, and the ``Mesh*`` columns. Ids are
   lower-case hex (``leftPad(hex(cityHash64(...)))``), so a size always gives the same spans; only the anchor moves.
   The inserts go through ``otel_traces`` itself, so ``otel_traces_trace_id_ts`` is filled by its materialized view
   exactly as on the real write path (one index row per trace and insert block). One extra trace of 15,000 spans
   tests the per-trace cap. Background merges are let to settle.
2. **Measure** (one untimed first run, then ``--runs`` timed runs, the figure is the median): trace by id through
   ``TraceReader.get_trace`` + Jaeger JSON + ``orjson.dumps`` (each run a different trace, picked by hash from the
   index), the same for an unknown id (404) and the 15k-span trace (capped at 10k); a search by service +
   ``minDuration=1s`` over the whole 6 h (summaries; and Jaeger's ``/api/traces`` answer: whole traces); a search
   by service over the last hour; RED per service over 1 h, and per operation as a 5-minute series over 6 h.

Figures are printed one per line (``traces.<name> <value> <unit>``) and written with machine info to
``--json-out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, REPO)

from benchutil import (load_avg, machine_info, open_cached, wait_merges,  # noqa: E402 - shared helpers
                       write_json)
from graph import _arr  # noqa: E402 - bench/graph.py's SQL array literal

GEN_VERSION = 2  # 2: otel_traces with 1024-row granules
S = 10**9
MIN = 60 * S
SPAN_NS = 6 * 60 * MIN
AVG_SPANS = 27.5
TENANT = "bench-traces"
BIG_TRACE_SPANS = 15_000
APPS = ["frontend", "gateway", "web", "mobile-api", "partner-api",  # roots come from these five
        "cart", "checkout", "catalog", "inventory", "orders", "recommendation", "payment", "fraud", "ledger",
        "auth", "profile", "shipping", "search", "notification", "pricing"]
NAMESPACES = ["shop", "payments", "identity", "logistics"]


def insert_sql(db: str, tr_offset: int, tr_count: int, start_ns: int, step_ns: int, fixed_n: int = 0) -> str:
    """Traces ``tr_offset .. tr_offset+tr_count-1``; see the module docstring. ``fixed_n`` forces the span count."""
    apps = _arr(APPS)
    nss = _arr([NAMESPACES[i % len(NAMESPACES)] for i in range(len(APPS))])
    h = lambda *k: f"cityHash64(tr, {', '.join(str(x) for x in k)})"  # noqa: E731
    n_expr = str(fixed_n) if fixed_n else f"5 + {h(1)} % 46"
    svc_idx = lambda j: f"if({j} = 0, cityHash64(tr, 100) % 5, cityHash64(tr, 100 + {j}) % 20)"  # noqa: E731
    inner = f"""
SELECT tr, n, k, t0, root_ns,
  intDiv(k + 1, 2) AS j, k % 2 = 1 AS is_client,
  if(is_client, cityHash64(tr, 20 + j) % j, 0) AS caller_pair,
  {svc_idx('j')} AS callee_idx, {svc_idx('caller_pair')} AS caller_idx,
  {apps}[if(is_client, caller_idx, callee_idx) + 1] AS svc,
  {nss}[if(is_client, caller_idx, callee_idx) + 1] AS ns,
  {apps}[callee_idx + 1] AS callee,
  multiIf(k = 0, '', is_client, lpad(lower(hex(cityHash64(tr, 1000 + 2 * caller_pair))), 16, '0'),
          lpad(lower(hex(cityHash64(tr, 1000 + k - 1))), 16, '0')) AS parent_id,
  lpad(lower(hex(cityHash64(tr, 1000 + k))), 16, '0') AS span_id,
  concat(lpad(lower(hex({h(2)})), 16, '0'), lpad(lower(hex({h(3)})), 16, '0')) AS trace_id,
  cityHash64(tr, 300 + k) % 50 = 0 AS failed,
  t0 + intDiv(root_ns * k, 2 * n) AS ts,
  toUInt64(greatest(1000, intDiv(root_ns * (n - k) * 9, n * 10) + if(k = 0, intDiv(root_ns, 10), 0))) AS dur,
  concat('/api/', callee, '/', toString(cityHash64(tr, 200 + j) % 4)) AS route,
  concat('v', toString(1 + cityHash64(svc) % 3)) AS ver,
  concat(svc, '-', substring(lower(hex(cityHash64(svc, ver))), 1, 9), '-', substring(lower(hex({h(7, 'k')})), 1, 5))
    AS pod
FROM (
  SELECT number AS tr, {n_expr} AS n, {start_ns} + number * {step_ns} AS t0,
    if(cityHash64(number, 3) % 100 = 0, (1000 + cityHash64(number, 4) % 2000) * 1000000,
       (5 + cityHash64(number, 4) % 295) * 1000000) AS root_ns
  FROM numbers({int(tr_offset)}, {int(tr_count)})
)
ARRAY JOIN range(n) AS k"""
    return f"""
INSERT INTO {db}.otel_traces (TenantId, Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName,
    ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage,
    `Events.Timestamp`, `Events.Name`, `Events.Attributes`, `Events.DroppedAttributesCount`,
    MeshNamespace, MeshWorkload, MeshApp, MeshVersion, MeshPeerService, MeshProtocol, MeshHttpMethod, MeshResponseCode)
SELECT '{TENANT}', fromUnixTimestamp64Nano(toInt64(ts)), trace_id, span_id, parent_id,
  if(is_client, concat('GET ', callee), concat('GET ', route)),
  if(is_client, 'SPAN_KIND_CLIENT', 'SPAN_KIND_SERVER'), svc,
  map('service.name', svc, 'service.version', ver, 'k8s.namespace.name', ns, 'k8s.pod.name', pod,
      'k8s.deployment.name', svc, 'telemetry.sdk.language', 'java'),
  'io.opentelemetry.http', '1.42.0',
  if(is_client,
     map('http.request.method', 'GET', 'server.address', callee, 'server.port', '8080',
         'url.full', concat('http://', callee, ':8080', route), 'http.response.status_code', if(failed, '503', '200')),
     map('http.request.method', 'GET', 'http.route', route, 'url.path', route, 'url.scheme', 'http',
         'http.response.status_code', if(failed, '500', '200'), 'user_agent.original', 'okhttp/4.12.0',
         'client.address', '10.1.2.3')),
  dur, if(failed, 'STATUS_CODE_ERROR', 'STATUS_CODE_UNSET'), if(failed, 'upstream failed', ''),
  if(failed, [fromUnixTimestamp64Nano(toInt64(ts + intDiv(dur, 2)))], []), if(failed, ['exception'], []),
  if(failed, [map('exception.type', 'java.io.IOException', 'exception.message', 'connection reset')], []),
  if(failed, [toUInt32(0)], []),
  ns, svc, svc, ver, if(is_client, callee, ''), 'http', 'GET', if(failed, if(is_client, '503', '500'), '200')
FROM ({inner})"""


def generate(store, size: int, chunk: int, log) -> dict:
    from meshscope.schema import apply_schema

    apply_schema(store)
    db = store.database
    anchor_ns = (time.time_ns() // MIN) * MIN
    start_ns = anchor_ns - SPAN_NS
    traces = int(size / AVG_SPANS)
    step = SPAN_NS // traces
    per_chunk = max(1, int(chunk / AVG_SPANS))
    t0 = time.perf_counter()
    for off in range(0, traces, per_chunk):
        cnt = min(per_chunk, traces - off)
        t = time.perf_counter()
        store.command(insert_sql(db, off, cnt, start_ns, step), settings={"max_partitions_per_insert_block": 0})
        log(f"# traces {off:,}..{off + cnt - 1:,} in {time.perf_counter() - t:.1f}s")
    # one trace of BIG_TRACE_SPANS spans, an hour before the anchor (trace number = traces: outside the range above)
    store.command(insert_sql(db, traces, 1, anchor_ns - 60 * MIN - traces * step, step, fixed_n=BIG_TRACE_SPANS),
                  settings={"max_partitions_per_insert_block": 0})
    insert_s = time.perf_counter() - t0
    rows = int(store.query(f"SELECT count() FROM {db}.otel_traces WHERE TenantId = {{t:String}}",
                           {"t": TENANT}).rows[0][0])
    big = store.query(f"SELECT TraceId FROM {db}.otel_traces WHERE TenantId = {{t:String}} GROUP BY TraceId "
                      f"HAVING count() >= {BIG_TRACE_SPANS} LIMIT 1", {"t": TENANT}).rows[0][0]
    index_rows = int(store.query(f"SELECT count() FROM {db}.otel_traces_trace_id_ts WHERE TenantId = {{t:String}}",
                                 {"t": TENANT}).rows[0][0])
    return dict(gen_version=GEN_VERSION, size=size, anchor_ns=anchor_ns, start_ns=start_ns, traces=traces + 1,
                rows=rows, index_rows=index_rows, big_trace=big, insert_s=round(insert_s, 1),
                generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def open_data(args, log):
    def gen(store):
        log(f"# generating {args.size:,} spans into {args.data}")
        return generate(store, args.size, args.chunk, log)
    return open_cached(args.data, {"gen_version": GEN_VERSION, "size": args.size}, gen, log, args.regenerate)


def run(args) -> int:
    import orjson

    from meshscope.query.traces import jaeger
    from meshscope.query.traces.red import red_series, red_summary
    from meshscope.query.traces.search import SearchQuery, TraceReader

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info()
    log(f"# {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB, python {info['python']}; "
        f"load average {load_avg()}")
    store, man, generated = open_data(args, log)
    if args.trace_id_projection and not man.get("trace_id_projection"):
        # What a projection sorted by trace id would give (not in the shipped schema; see BENCHMARKS.md).
        t = time.perf_counter()
        store.command(f"ALTER TABLE {store.database}.otel_traces ADD PROJECTION IF NOT EXISTS bench_trace_id "
                      f"(SELECT * ORDER BY TenantId, TraceId)")
        store.command(f"ALTER TABLE {store.database}.otel_traces MATERIALIZE PROJECTION bench_trace_id",
                      settings={"mutations_sync": 2})
        man["trace_id_projection"] = True
        man["projection_build_s"] = round(time.perf_counter() - t, 1)
        man_path = os.path.join(os.path.abspath(args.data), "manifest.json")
        with open(man_path + ".tmp", "w") as f:
            json.dump(man, f, indent=2)
        os.replace(man_path + ".tmp", man_path)
        log(f"# projection by trace id built in {man['projection_build_s']}s")
    merge_wait_s = wait_merges(store, log)
    # as shipped: never read a projection (a data dir may hold one from --trace-id-projection)
    reader = TraceReader(store, {"optimize_use_projections": 0})
    db = store.database
    figures: dict = {}
    details: dict = {}
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        print(f"WARNING {msg}", flush=True)

    def fig(name: str, value, unit: str = "s") -> None:
        figures[name] = value
        print(f"traces.{name} {value} {unit}", flush=True)

    def measure(name: str, fn, describe=None):
        t = time.perf_counter()
        res = fn(0)
        first = time.perf_counter() - t
        times = []
        for i in range(args.runs):
            t = time.perf_counter()
            res = fn(i + 1)
            times.append(time.perf_counter() - t)
        details[name] = dict(first_s=round(first, 4), runs_s=[round(x, 4) for x in times],
                             **(describe(res) if describe else {}))
        fig(f"{name}_s", round(statistics.median(times), 4))
        return res

    anchor = man["anchor_ns"]
    ids = [r[0] for r in store.query(
        f"SELECT TraceId FROM {db}.otel_traces_trace_id_ts WHERE TenantId = {{t:String}} "
        f"ORDER BY cityHash64(TraceId) LIMIT {args.runs + 1}", {"t": TENANT}).rows]

    def by_id(i: int, tid: str | None = None):
        tr = reader.get_trace(TENANT, tid or ids[i])
        body = orjson.dumps(jaeger.response([jaeger.trace_json(tr)])) if tr else b""
        return tr, len(body)

    measure("by_id", by_id, lambda r: dict(spans=len(r[0].spans), bytes=r[1]))
    if man.get("trace_id_projection"):
        with_proj = TraceReader(store)

        def by_id_proj(i: int):
            tr = with_proj.get_trace(TENANT, ids[i])
            return tr, len(orjson.dumps(jaeger.response([jaeger.trace_json(tr)])))

        measure("by_id_with_trace_id_projection", by_id_proj, lambda r: dict(spans=len(r[0].spans), bytes=r[1]))
    measure("by_id_unknown", lambda i: by_id(i, f"{i:032x}"[:-1] + "f"),
            lambda r: dict(found=r[0] is not None))
    big = measure("by_id_15k_spans", lambda i: by_id(i, man["big_trace"]),
                  lambda r: dict(spans=len(r[0].spans), total=r[0].total_spans, warnings=r[0].warnings,
                                 bytes=r[1]))
    if not big[0].truncated or len(big[0].spans) != 10_000:
        warn(f"15k-span trace not capped at 10000 spans ({len(big[0].spans)} of {big[0].total_spans})")

    slow = SearchQuery(anchor - SPAN_NS, anchor, service=APPS[0], min_duration_ns=S, limit=20)
    res = measure("search_service_minduration_6h", lambda i: reader.search(TENANT, slow),
                  lambda r: dict(traces=len(r), min_duration_ms=min((x.duration_ns / 1e6 for x in r), default=0)))
    expected = int(store.query(
        f"SELECT uniqExact(TraceId) FROM {db}.otel_traces WHERE TenantId = {{t:String}} AND ServiceName = {{s:String}} "
        f"AND Duration >= {S} AND Timestamp >= fromUnixTimestamp64Nano({{lo:Int64}}) "
        f"AND Timestamp <= fromUnixTimestamp64Nano({{hi:Int64}})",
        {"t": TENANT, "s": APPS[0], "lo": slow.start_ns, "hi": slow.end_ns}).rows[0][0])
    details["search_service_minduration_6h"]["matching_traces"] = expected
    if len(res) != min(expected, slow.limit) or any(x.duration_ns < S or not any(
            sv["name"] == APPS[0] for sv in x.services) for x in res):
        warn(f"search by service + minDuration: {len(res)} traces, expected {min(expected, slow.limit)} slow traces "
             f"of {APPS[0]}")

    def jaeger_find(i: int):
        tids = reader.find_trace_ids(TENANT, slow)
        traces = reader.get_traces(TENANT, tids)
        return len(orjson.dumps(jaeger.response([jaeger.trace_json(t) for t in traces]))), traces

    measure("jaeger_find_service_minduration_6h", jaeger_find,
            lambda r: dict(bytes=r[0], traces=len(r[1]), spans=sum(len(t.spans) for t in r[1])))
    last_hour = SearchQuery(anchor - 60 * MIN, anchor, service=APPS[7], limit=20)
    measure("search_service_1h", lambda i: reader.search(TENANT, last_hour), lambda r: dict(traces=len(r)))
    tagged = SearchQuery(anchor - SPAN_NS, anchor, service=APPS[11], tags=[("http.response.status_code", "500")],
                         limit=20)
    measure("search_service_tag_6h", lambda i: reader.search(TENANT, tagged), lambda r: dict(traces=len(r)))
    measure("red_per_service_1h", lambda i: red_summary(store, TENANT, anchor - 60 * MIN, anchor),
            lambda r: dict(groups=len(r), requests=sum(x.requests for x in r)))
    measure("red_series_per_operation_6h_5m",
            lambda i: red_series(store, TENANT, anchor - SPAN_NS, anchor, 300, by_operation=True),
            lambda r: dict(series=len(r), points=sum(len(s["points"]) for s in r)))
    store.close()
    out = dict(figures=figures, details=details, machine=info, warnings=warnings,
               data=dict(man, generated_now=generated, merge_wait_s=round(merge_wait_s, 1)),
               config=dict(size=args.size, runs=args.runs, data=os.path.abspath(args.data)),
               load_average_end=load_avg())
    write_json(args.json_out, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10_000_000, help="spans (about; default 10,000,000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure, after one first run (default 5)")
    ap.add_argument("--data", default=os.path.join(".", "bench-data", "traces"),
                    help="cache dir for the store (default ./bench-data/traces)")
    ap.add_argument("--json-out", default=os.path.join(HERE, "results", "traces.json"))
    ap.add_argument("--chunk", type=int, default=1_000_000, help="spans per generating INSERT (default 1,000,000)")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached data")
    ap.add_argument("--trace-id-projection", action="store_true",
                    help="also measure trace by id with a projection sorted by trace id (added to the cached data)")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 11 or args.chunk < 1 or args.size < 1000:
        ap.error("--runs 1..11, --chunk >= 1, --size >= 1000")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
