#!/usr/bin/env python3
"""Service-graph benchmark: edges over 1M and 10M stored spans, from the per-minute rollup and from raw spans.

    python bench/graph.py [--sizes 1000000,10000000] [--runs 5] [--data ./bench-data/graph]
                          [--json-out bench/results/graph.json] [--regenerate]

1. **Data** (cached in ``--data``; reused while its manifest matches ``--sizes`` and the generator version and it
   is less than 6 days old, the store's TTL being 7): one tenant per size (``bench-<size>``) in one embedded store
   (chDB opens one data path per process). Spans are generated *inside* ClickHouse by ``INSERT INTO otel_traces
   ... SELECT ... FROM numbers()``, 10 spans per trace, traces evenly spread over the 6 h 15 min before the anchor
   (a whole minute): ingress gateway (Envoy SERVER root + CLIENT) -> workload A (sidecar SERVER, app SERVER, app
   CLIENT, sidecar CLIENT) -> workload B (sidecar SERVER, app SERVER, app CLIENT to PostgreSQL) and A's app CLIENT
   to an external API; A and B are two of 20 workloads in 4 namespaces, 3 % of B's answers are 503. Envoy and app
   attributes as they arrive (~14 attributes on Envoy spans), and the ``Mesh*`` columns filled as the collector's
   insert would fill them. Every value is a function of the row number (``cityHash64``), so a size always gives
   the same spans; only the anchor moves. Then the rollup is built for the whole range (``EdgeRollup.compute``,
   one hour per call) and background merges are let to settle.
2. **Measure**, per size, for a 10 min and a 6 h window ending at the anchor: ``fetch_edges`` from the rollup
   (``source="rollup"``, whole minutes), from the raw spans (``source="raw"``), and ``source="auto"`` over the same
   window shifted by 17 s (whole minutes from the rollup, the two ragged ends from raw spans: what a "last 10
   minutes" graph does). One untimed first run, then ``--runs`` timed runs; the figure is the median. The rollup
   and raw answers are compared (edge set and request totals); a mismatch prints a WARNING line. Also timed: one
   rollup job run (``run_once``, the last 5 minutes) over the 10M data, and the rollup build.

Figures are printed one per line (``graph.<size>.<window>.<source>_s <value> s``) and written with machine info
to ``--json-out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import time

from benchutil import load_avg, machine_info, open_cached, wait_merges, write_json  # bench/'s shared helpers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, REPO)

GEN_VERSION = 1
S = 10**9
MIN = 60 * S
SPAN_NS = (6 * 60 + 15) * MIN
SPANS_PER_TRACE = 10
CLUSTER = "prod-eu-1"
NAMESPACES = ["shop", "payments", "identity", "logistics"]
APPS = ["frontend", "cart", "checkout", "catalog", "inventory", "orders", "recommendation", "payment", "fraud",
        "ledger", "invoice", "auth", "profile", "session", "shipping", "tracking", "warehouse", "search",
        "notification", "pricing"]
WINDOWS = {"10m": 10 * MIN, "6h": 6 * 60 * MIN}


def _arr(items) -> str:
    return "[" + ", ".join("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in items) + "]"


def insert_sql(db: str, tenant: str, offset: int, count: int, start_ns: int, step_ns: int) -> str:
    """Rows ``offset .. offset+count-1`` of a size's spans; see the module docstring."""
    apps = _arr(APPS)
    nss = _arr([NAMESPACES[i % len(NAMESPACES)] for i in range(len(APPS))])
    h = lambda k: f"cityHash64(tr, {k})"  # noqa: E731
    # per span index k: parent index, kind, emitter (0 gateway, 1 A, 2 B), envoy?, measured duration parts
    parents = "[-1, 0, 1, 2, 3, 4, 5, 6, 7, 3]"
    kinds = _arr(["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_SERVER", "SPAN_KIND_SERVER",
                  "SPAN_KIND_CLIENT", "SPAN_KIND_CLIENT", "SPAN_KIND_SERVER", "SPAN_KIND_SERVER",
                  "SPAN_KIND_CLIENT", "SPAN_KIND_CLIENT"])
    who = "[0, 0, 1, 1, 1, 1, 2, 2, 2, 1]"
    envoy = "[1, 1, 1, 0, 0, 1, 1, 0, 0, 0]"
    inner = f"""
SELECT number, intDiv(number, {SPANS_PER_TRACE}) AS tr, number % {SPANS_PER_TRACE} AS k,
  {start_ns} + tr * {step_ns} AS t0,
  {h(1)} % 20 AS ai, (ai + 1 + {h(2)} % 19) % 20 AS bi,
  {parents}[k + 1] AS pk, {kinds}[k + 1] AS kind, {who}[k + 1] AS w, {envoy}[k + 1] = 1 AS is_envoy,
  if(w = 0, 'istio-ingressgateway', {apps}[if(w = 1, ai, bi) + 1]) AS app,
  if(w = 0, 'istio-system', {nss}[if(w = 1, ai, bi) + 1]) AS ns,
  if(w = 0, '', concat('v', toString(1 + {h(7)} % 2))) AS ver,
  concat(app, if(ver = '', '', concat('-', ver))) AS workload,
  {apps}[bi + 1] AS b_app, concat({apps}[bi + 1], '.', {nss}[bi + 1], '.svc.cluster.local') AS b_fqdn,
  concat({apps}[ai + 1], '.', {nss}[ai + 1], '.svc.cluster.local') AS a_fqdn,
  {h(5)} % 100 < 3 AS failed,
  if(failed, 503, 200) AS b_code,
  2 + {h(6)} % 50 + if(failed, 30, 0) AS b_ms,
  multiIf(k IN (6, 7), b_code, k IN (4, 5), b_code, 200) AS code,
  multiIf(k = 9, 80 + {h(8)} % 40, k = 8, 1 + {h(9)} % 3, k IN (6, 7, 4, 5), b_ms + (6 - least(k, 6)) * 0.5,
          b_ms + 10 + (3 - least(k, 3))) AS dur_ms,
  t0 + k * 100000 AS ts,
  lower(concat(hex({h(3)}), hex({h(4)}))) AS trace_id,
  lower(hex(cityHash64(tr, 10 + k))) AS span_id,
  if(pk < 0, '', lower(hex(cityHash64(tr, 10 + pk)))) AS parent_id,
  concat(app, '-', substring(lower(hex(cityHash64(app, ver))), 1, 9), '-', substring(lower(hex({h(11)})), 1, 5)) AS pod,
  multiIf(k = 1, a_fqdn, k IN (4, 5), b_fqdn, k = 9, 'api.example.com', '') AS peer
FROM numbers({int(offset)}, {int(count)})"""
    envoy_attrs = ("map('node_id', concat(if(w = 0, 'router', 'sidecar'), '~10.1.2.3~', pod, '.', ns, '~', ns, "
                   "'.svc.cluster.local'), 'component', 'proxy', 'upstream_cluster', "
                   "if(kind = 'SPAN_KIND_CLIENT' OR w = 0, concat('outbound|80||', peer), 'inbound|80||'), "
                   "'http.method', 'GET', 'http.status_code', toString(code), 'response_flags', '-', "
                   "'request_size', '0', 'response_size', toString(300 + {h} % 4000), 'guid:x-request-id', "
                   "toString(generateUUIDv4(tr)), 'istio.canonical_service', app, 'istio.canonical_revision', "
                   "if(ver = '', 'latest', ver), 'istio.namespace', ns, 'istio.cluster_id', '" + CLUSTER + "', "
                   "'istio.mesh_id', 'cluster.local')").replace("{h}", h(12))
    app_attrs = ("multiIf(k = 8, map('db.system.name', 'postgresql', 'db.namespace', 'orders', 'server.address', "
                 "'postgres', 'db.operation.name', 'SELECT'), "
                 "kind = 'SPAN_KIND_CLIENT', map('http.request.method', 'GET', 'http.response.status_code', "
                 "toString(code), 'server.address', if(k = 9, peer, b_app), 'url.full', "
                 "concat('http://', if(k = 9, peer, b_app), '/api/v1/items')), "
                 "map('http.request.method', 'GET', 'http.response.status_code', toString(code), 'http.route', "
                 "'/api/v1/items', 'url.path', '/api/v1/items', 'user_agent.original', 'okhttp/4.12.0'))")
    return f"""
INSERT INTO {db}.otel_traces (TenantId, Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind,
    ServiceName, ResourceAttributes, SpanAttributes, Duration, StatusCode, MeshCluster, MeshNamespace, MeshWorkload,
    MeshApp, MeshVersion, MeshProxy, MeshPeerService, MeshProtocol, MeshHttpMethod, MeshResponseCode,
    MeshResponseFlags, MeshDbSystem, MeshDbNamespace)
SELECT '{tenant}', fromUnixTimestamp64Nano(toInt64(ts)), trace_id, span_id, parent_id, '',
  if(is_envoy, concat(if(k = 9, peer, if(kind = 'SPAN_KIND_CLIENT', peer, concat(app, '.', ns, '.svc.cluster.local'))),
     ':80/*'), if(k = 8, 'SELECT orders', 'GET /api/v1/items')),
  kind, if(is_envoy, concat(app, '.', ns), app),
  if(is_envoy, map('service.name', concat(app, '.', ns)),
     map('service.name', app, 'service.version', ver, 'k8s.namespace.name', ns, 'k8s.deployment.name', workload,
         'k8s.pod.name', pod, 'k8s.cluster.name', '{CLUSTER}')),
  if(is_envoy, {envoy_attrs}, {app_attrs}),
  toUInt64(dur_ms * 1000000), if(code >= 500, 'STATUS_CODE_ERROR', 'STATUS_CODE_UNSET'),
  '{CLUSTER}', ns, workload, app, if(is_envoy AND ver = '', 'latest', ver), if(is_envoy, 'envoy', ''),
  multiIf(kind = 'SPAN_KIND_CLIENT' AND k != 8, if(is_envoy, peer, if(k = 9, peer, b_app)), k = 8, 'postgres', ''),
  if(k = 8, '', 'http'), if(k = 8, '', 'GET'), if(k = 8, '', toString(code)), if(is_envoy, '-', ''),
  if(k = 8, 'postgresql', ''), if(k = 8, 'orders', '')
FROM ({inner})"""




def generate(store, sizes: list[int], chunk: int, log) -> dict:
    from meshscope.query.graph.edges import EdgeRollup
    from meshscope.schema import apply_schema

    apply_schema(store)
    db = store.database
    anchor_ns = (time.time_ns() // MIN) * MIN
    start_ns = anchor_ns - SPAN_NS
    man: dict = dict(gen_version=GEN_VERSION, sizes=sizes, anchor_ns=anchor_ns, start_ns=start_ns, tenants={},
                     edge_columns_materialized="at insert", span_hashes_materialized="at insert",
                     generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    for n in sizes:
        tenant = f"bench-{n}"
        traces = n // SPANS_PER_TRACE
        step = SPAN_NS // traces
        t0 = time.perf_counter()
        for off in range(0, traces * SPANS_PER_TRACE, chunk):
            cnt = min(chunk, traces * SPANS_PER_TRACE - off)
            t = time.perf_counter()
            store.command(insert_sql(db, tenant, off, cnt, start_ns, step),
                          settings={"max_partitions_per_insert_block": 0})
            log(f"# {tenant}: rows {off:,}..{off + cnt - 1:,} in {time.perf_counter() - t:.1f}s")
        insert_s = time.perf_counter() - t0
        rows = int(store.query(f"SELECT count() FROM {db}.otel_traces WHERE TenantId = {{t:String}}",
                               {"t": tenant}).rows[0][0])
        man["tenants"][str(n)] = dict(tenant=tenant, rows=rows, insert_s=round(insert_s, 1))
    wait_merges(store, log)
    t0 = time.perf_counter()
    job = EdgeRollup(store)
    for lo in range(start_ns, anchor_ns + MIN, 60 * MIN):
        t = time.perf_counter()
        job.compute(lo, min(lo + 60 * MIN, anchor_ns + MIN))
        log(f"# rollup of an hour in {time.perf_counter() - t:.1f}s")
    man["rollup_build_s"] = round(time.perf_counter() - t0, 1)
    man["rollup_rows"] = int(store.query(f"SELECT count() FROM {db}.otel_service_edges_1m").rows[0][0])
    return man


def open_data(args, sizes: list[int], log):
    def gen(store):
        log(f"# generating {', '.join(f'{n:,}' for n in sizes)} spans into {args.data}")
        return generate(store, sizes, args.chunk, log)
    return open_cached(args.data, {"gen_version": GEN_VERSION, "sizes": sizes}, gen, log, args.regenerate)


# columns that later schema files added to otel_traces, by the manifest key that says they are written to disk
MATERIALIZED_LATER = {
    "edge_columns_materialized": ("MeshRequestBytes", "MeshResponseBytes", "MeshCaller", "MeshPeerName",  # 007
                                  "MeshMessagingDestination", "MeshUpstreamCluster", "MeshUrlHost"),
    "span_hashes_materialized": ("SpanHash", "ParentHash", "EdgeNodeHash", "EdgeResponseHash",  # 009
                                 "EdgePeerHash"),
}


def materialize_edge_columns(data_dir: str, store, man: dict, log) -> None:
    """Data cached before a schema file added columns the graph reads (deploy/clickhouse/007_edge_columns.sql,
    009_span_hashes.sql): add them and write them to disk once (a mutation), so the figures are those of data
    inserted by the current collector, not of old parts computing them on read."""
    from benchutil import write_manifest

    from meshscope.schema import apply_schema

    apply_schema(store)
    for key, columns in MATERIALIZED_LATER.items():
        if man.get(key):
            continue
        t = time.perf_counter()
        for col in columns:
            store.command(f"ALTER TABLE {store.database}.otel_traces MATERIALIZE COLUMN {col}",
                          settings={"mutations_sync": 2})
        man[key] = round(time.perf_counter() - t, 1)
        write_manifest(os.path.abspath(data_dir), man)
        log(f"# {', '.join(columns)} written to the cached spans in {man[key]}s")


def _totals(edges) -> dict:
    return {(e.source, e.dest, e.protocol): round(e.requests, 3) for e in edges}


def run(args) -> int:
    from meshscope.query.graph.edges import EdgeRollup, fetch_edges

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    sizes = [int(x) for x in args.sizes.split(",")]
    info = machine_info()
    log(f"# {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB, python {info['python']}; "
        f"load average {load_avg()}")
    store, man, generated = open_data(args, sizes, log)
    materialize_edge_columns(args.data, store, man, log)
    merge_wait_s = wait_merges(store, log)
    figures: dict = {}
    details: dict = {}
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        print(f"WARNING {msg}", flush=True)

    def fig(name: str, value, unit: str = "s") -> None:
        figures[name] = value
        print(f"graph.{name} {value} {unit}", flush=True)

    def measure(name: str, fn):
        t = time.perf_counter()
        res = fn()
        first = time.perf_counter() - t
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t)
        details[name] = dict(first_s=round(first, 4), runs_s=[round(x, 4) for x in times], edges=len(res),
                             requests=round(sum(e.requests for e in res), 1))
        fig(f"{name}_s", round(statistics.median(times), 4))
        return res

    anchor = man["anchor_ns"]
    for n in sizes:
        tenant = man["tenants"][str(n)]["tenant"]
        label = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else str(n)
        for wname, wns in WINDOWS.items():
            lo, hi = anchor - wns, anchor
            roll = measure(f"{label}.{wname}.rollup", lambda: fetch_edges(store, tenant, lo, hi, source="rollup"))
            raw = measure(f"{label}.{wname}.raw", lambda: fetch_edges(store, tenant, lo, hi, source="raw"))
            if _totals(roll) != _totals(raw):
                warn(f"{label} {wname}: rollup and raw disagree ({len(roll)} vs {len(raw)} edges, "
                     f"{sum(e.requests for e in roll)} vs {sum(e.requests for e in raw)} requests)")
            measure(f"{label}.{wname}.auto_ragged",
                    lambda: fetch_edges(store, tenant, lo - 17 * S, hi - 17 * S, source="auto"))
            details[f"{label}.{wname}.spans_in_window"] = int(store.query(
                f"SELECT count() FROM {store.database}.otel_traces WHERE TenantId = {{t:String}} "
                "AND Timestamp >= fromUnixTimestamp64Nano({a:Int64}) AND Timestamp < fromUnixTimestamp64Nano({b:Int64})",
                {"t": tenant, "a": lo, "b": hi}).rows[0][0])
    # one rollup job run over the last 5 minutes of the data (every tenant), as `meshscope serve` runs it
    job = EdgeRollup(store, lookback_minutes=5, backfill_hours=0)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        job.run_once(anchor + 30 * S)
        times.append(time.perf_counter() - t)
    details["rollup_job_5min"] = dict(runs_s=[round(x, 4) for x in times])
    fig("rollup_job_5min_s", round(statistics.median(times), 4))
    fig("rollup_build_s", man["rollup_build_s"])
    fig("rollup_rows", man["rollup_rows"], "rows")
    store.close()
    out = dict(figures=figures, details=details, machine=info, warnings=warnings,
               data=dict(man, generated_now=generated, merge_wait_s=round(merge_wait_s, 1)),
               config=dict(sizes=sizes, runs=args.runs, data=os.path.abspath(args.data),
                           windows={k: v // S for k, v in WINDOWS.items()}),
               load_average_end=load_avg())
    write_json(args.json_out, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="spans per data set (default 1000000,10000000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure, after one first run (default 5)")
    ap.add_argument("--data", default=os.path.join(".", "bench-data", "graph"),
                    help="cache dir for the store (default ./bench-data/graph)")
    ap.add_argument("--json-out", default=os.path.join(HERE, "results", "graph.json"))
    ap.add_argument("--chunk", type=int, default=1_000_000, help="rows per generating INSERT (default 1,000,000)")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached data")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 11 or args.chunk < 1:
        ap.error("--runs 1..11, --chunk >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
