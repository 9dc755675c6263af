#!/usr/bin/env python3
"""Log-search benchmark: LogQL over the embedded store against ``grep -F`` over the same raw text.

    python bench/logsearch.py [--lines 10000000] [--runs 5] [--data ./bench-data/logsearch]
                              [--json-out bench/results/logsearch.json] [--regenerate]

1. **Data** (cached in ``--data``; reused while its manifest matches ``--lines`` and the generator version and the
   data is less than 6 days old, since the store's TTL is 7 days): ``--lines`` log records generated *inside*
   ClickHouse by ``INSERT INTO otel.otel_logs (...) SELECT ... FROM numbers(offset, count)`` in chunks of
   ``--chunk`` rows. Every value is a deterministic function (``cityHash64(number, k)``) of the row number, so
   the same ``--lines`` always gives the same rows; only the time anchor (the minute of generation) moves
   (data made under other DDL for the log tables is not reused: the manifest keeps a hash of it). The
   rows go through the real table, so the MATERIALIZED stream-label columns, the ``text`` index and the
   ``otel_log_streams`` materialized view all fire. Then every ``Body`` is written, one per line, to
   ``raw.log`` for grep, and the needle counts of the table and of grep are checked to agree.
2. **Measure**, ``--runs`` timed runs per figure after a first run kept out of the median (``*.first_s``):
   (a) ``{service_name="<svc>"} |= "<needle>"`` (limit 5000, the whole data range) vs
       ``LC_ALL=C grep -F -c <needle> raw.log`` (page cache warmed by one untimed grep), and the same needle
       without a service selector; ratio = grep time / our time (> 1: we are faster). Each run searches a string
       not searched before (the needle minus 1, 2, ... characters), since ClickHouse's query condition cache would
       otherwise answer from the granules it remembers; ``*_repeat`` repeats the full needle to show that cache;
   (b) ``sum by (level) (count_over_time({k8s_namespace_name="shop"}[1m]))`` over the last 1 h and 24 h of the
       data, step 60 s, and over 24 h at Loki's default step (``max(floor(range / 250), 1 s)`` = 345 s);
   (c) ``{k8s_namespace_name="shop"} | json | status >= 500`` as a log query (limit 100, backward) over 1 h and
       ``sum(count_over_time({k8s_namespace_name="shop"} | json | status >= 500 [1m]))`` over 1 h, step 60 s.

Figures are printed one per line (``logsearch.<name> <value> <unit>``) and written with machine info to
``--json-out``. Every query's result is checked against a ground truth computed in SQL; a mismatch prints a
WARNING line. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import time

from benchutil import load_avg, machine_info, open_cached, remove, wait_merges, write_json  # bench/'s shared helpers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, REPO)

GEN_VERSION = 1
S = 10**9
SPAN_NS = 25 * 3600 * S          # the data covers the 25 h before the anchor
NEEDLE = "c0ffee42-dead-4bad-beef-5ca1ab1e0042"  # a request id: grep and |= look for this exact text
TARGET_NS = "shop"
TENANT = "default"

# service, namespace, weight (percent of all lines), logger prefix
SERVICES = [
    ("frontend", "shop", 9, "web.frontend"),
    ("cart", "shop", 6, "com.shop.cart"),
    ("checkout", "shop", 6, "com.shop.checkout"),
    ("catalog", "shop", 7, "com.shop.catalog"),
    ("inventory", "shop", 5, "com.shop.inventory"),
    ("orders", "shop", 6, "com.shop.orders"),
    ("recommendation", "shop", 4, "ml.recommendation"),
    ("payment", "payments", 5, "com.pay.payment"),
    ("fraud-check", "payments", 3, "com.pay.fraud"),
    ("ledger", "payments", 3, "com.pay.ledger"),
    ("invoice", "payments", 2, "com.pay.invoice"),
    ("auth", "identity", 7, "io.identity.auth"),
    ("user-profile", "identity", 4, "io.identity.profile"),
    ("session", "identity", 5, "io.identity.session"),
    ("shipping", "logistics", 4, "net.logistics.shipping"),
    ("tracking", "logistics", 3, "net.logistics.tracking"),
    ("warehouse", "logistics", 2, "net.logistics.warehouse"),
    ("api-gateway", "platform", 10, "platform.gateway"),
    ("notification", "platform", 3, "platform.notify"),
    ("search", "platform", 6, "platform.search"),
]
assert sum(w for _, _, w, _ in SERVICES) == 100
PODS_PER_SERVICE = 3

PATHS = ["/api/v1/orders/{id}", "/api/v1/cart/{id}/items", "/api/v1/products/{id}", "/api/v1/users/{id}",
         "/api/v1/payments/{id}/capture", "/api/v1/search", "/api/v1/shipments/{id}/track", "/healthz",
         "/api/v1/sessions", "/api/v1/recommendations/{id}", "/api/v1/invoices/{id}", "/api/v1/stock/{id}"]
MSG_OK = ["request completed", "handled request", "cache hit for key", "served from replica",
          "response sent", "fetched rows from primary"]
MSG_WARN = ["slow request: exceeded 250ms budget", "retrying upstream call (attempt 2 of 3)",
            "cache miss, falling back to database", "deprecated API version used by client"]
MSG_ERR = ["upstream connect error or disconnect/reset before headers", "context deadline exceeded",
           "connection reset by peer", "database transaction rolled back: serialization failure"]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "okhttp/4.12.0", "Go-http-client/1.1", "python-requests/2.31.0", "envoy/1.29.2",
]


# ------------------------------------------------------------------------------------------------ generator
def _arr(items) -> str:
    def lit(v):
        if isinstance(v, int):
            return str(v)
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "[" + ", ".join(lit(v) for v in items) + "]"


def insert_sql(db: str, offset: int, count: int, start_ns: int, step_ns: int, needle_every: int) -> str:
    """One chunk: rows ``offset .. offset+count-1`` of the data set, every value a function of ``number``.

    Row ``number`` sits at ``start + number*step`` plus a jitter inside its step, so a chunk is a contiguous
    time slice (like real ingest). ~45 % JSON app logs, ~25 % logfmt app logs, ~30 % Envoy/Istio access logs
    (container ``istio-proxy``); ~3 % 5xx, ~5 % 4xx; the needle replaces the request id of one row in
    ``needle_every``."""
    svc_pick = [i for i, s in enumerate(SERVICES) for _ in range(s[2])]  # 100 entries: weighted choice
    names = _arr([s[0] for s in SERVICES])
    nss = _arr([s[1] for s in SERVICES])
    loggers = _arr([s[3] for s in SERVICES])
    h = lambda k: f"cityHash64(number, {k})"  # noqa: E731
    inner = f"""
SELECT number,
  {start_ns} + number * {step_ns} + {h(1)} % {step_ns} AS ts_ns,
  {_arr([i + 1 for i in svc_pick])}[1 + {h(2)} % 100] AS si,
  {names}[si] AS svc, {nss}[si] AS ns, {loggers}[si] AS logger,
  {h(3)} % 100 AS fmt_r,
  multiIf(fmt_r < 45, 'json', fmt_r < 70, 'logfmt', 'envoy') AS fmt,
  {h(4)} % 1000 AS st_r,
  multiIf(st_r < 30, [500, 502, 503, 504][1 + {h(5)} % 4],
          st_r < 80, [400, 401, 403, 404, 404, 429][1 + {h(5)} % 6],
          [200, 200, 200, 200, 200, 200, 201, 204][1 + {h(5)} % 8]) AS status,
  {h(6)} % 100 AS lv_r,
  if(fmt = 'envoy',
     multiIf(status >= 500, 'error', status >= 400, 'warn', 'info'),
     multiIf(status >= 500, 'error', lv_r < 6, 'warn', lv_r < 16, 'debug', 'info')) AS level,
  multiIf(level = 'debug', 5, level = 'info', 9, level = 'warn', 13, 17) AS sevnum,
  1 + {h(7)} % {PODS_PER_SERVICE} AS pod_i,
  concat(svc, '-', substring(lower(hex(cityHash64(si, 11))), 1, 10), '-',
         substring(lower(hex(cityHash64(si, 12, pod_i))), 1, 5)) AS pod,
  ['GET', 'GET', 'GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE'][1 + {h(8)} % 8] AS method,
  replaceOne({_arr(PATHS)}[1 + {h(9)} % {len(PATHS)}], '{{id}}', toString(1000 + {h(10)} % 999000)) AS path,
  round(if(status >= 500, 200 + {h(11)} % 2800, 1 + {h(11)} % 180) + ({h(12)} % 1000) / 1000, 3) AS latency_ms,
  toUInt32(latency_ms) AS latency_int,
  concat('u', toString(1 + {h(13)} % 250000)) AS user_id,
  {h(14)} % {needle_every} = 0 AS is_needle,
  if(is_needle, '{NEEDLE}', toString(generateUUIDv4({h(15)}))) AS request_id,
  lower(concat(hex({h(16)}), hex({h(17)}))) AS trace_id,
  lower(hex({h(18)})) AS span_id,
  multiIf(status >= 500, {_arr(MSG_ERR)}[1 + {h(19)} % {len(MSG_ERR)}],
          level = 'warn', {_arr(MSG_WARN)}[1 + {h(19)} % {len(MSG_WARN)}],
          {_arr(MSG_OK)}[1 + {h(19)} % {len(MSG_OK)}]) AS msg,
  300 + {h(20)} % 48000 AS resp_bytes,
  formatDateTime(toDateTime(intDiv(ts_ns, 1000000000), 'UTC'), '%Y-%m-%dT%H:%i:%S', 'UTC') AS t_s,
  concat(t_s, '.', leftPad(toString(intDiv(ts_ns % 1000000000, 1000000)), 3, '0'), 'Z') AS t_ms,
  concat('10.', toString({h(21)} % 4), '.', toString({h(22)} % 256), '.', toString(1 + {h(23)} % 254)) AS peer_ip,
  concat('10.', toString(4 + si % 4), '.', toString(si * 7 % 256), '.', toString(10 + pod_i)) AS pod_ip
FROM numbers({int(offset)}, {int(count)})"""
    body = f"""multiIf(
  fmt = 'json', concat('{{"ts":"', t_ms, '","level":"', level, '","logger":"', logger, '.HttpHandler","msg":"', msg,
    '","method":"', method, '","path":"', path, '","status":', toString(status), ',"latency_ms":',
    toString(latency_ms), ',"user_id":"', user_id, '","request_id":"', request_id, '","trace_id":"', trace_id,
    '","bytes":', toString(resp_bytes), '}}'),
  fmt = 'logfmt', concat('ts=', t_ms, ' level=', level, ' caller=handlers/', replaceAll(svc, '-', '_'), '.go:',
    toString(40 + {h(24)} % 700), ' msg="', msg, '" method=', method, ' path=', path, ' status=', toString(status),
    ' latency_ms=', toString(latency_int), ' user_id=', user_id, ' request_id=', request_id, ' trace_id=', trace_id),
  concat('[', t_ms, '] "', method, ' ', path, ' HTTP/1.1" ', toString(status), ' - via_upstream - "-" ',
    toString(if(method = 'GET', 0, 120 + {h(25)} % 2000)), ' ', toString(resp_bytes), ' ', toString(latency_int), ' ',
    toString(greatest(latency_int, 1) - 1), ' "', peer_ip, '" "', {_arr(USER_AGENTS)}[1 + {h(26)} % {len(USER_AGENTS)}],
    '" "', request_id, '" "', svc, '.', ns, '.svc.cluster.local:8080" "', pod_ip, ':8080" inbound|8080|| 127.0.0.6:',
    toString(32768 + {h(27)} % 28000), ' ', pod_ip, ':8080 ', peer_ip, ':', toString(32768 + {h(28)} % 28000),
    ' outbound_.8080_._.', svc, '.', ns, '.svc.cluster.local default'))"""
    return f"""
INSERT INTO {db}.otel_logs (Timestamp, ObservedTimestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber,
    ServiceName, Body, ResourceAttributes, ScopeName, ScopeVersion, LogAttributes)
SELECT fromUnixTimestamp64Nano(toInt64(ts_ns)), fromUnixTimestamp64Nano(toInt64(ts_ns + 1000000 + {h(29)} % 50000000)),
  if(fmt = 'envoy', '', trace_id), if(fmt = 'envoy', '', span_id), if(fmt = 'envoy', 0, 1),
  upper(level), sevnum, svc, {body},
  map('service.name', svc, 'service.version', concat('1.', toString(si % 7), '.', toString(si * 3 % 11)),
      'k8s.namespace.name', ns, 'k8s.pod.name', pod,
      'k8s.container.name', if(fmt = 'envoy', 'istio-proxy', svc), 'k8s.cluster.name', 'prod-eu-1',
      'k8s.node.name', concat('ip-10-0-', toString(si % 6), '-', toString(20 + pod_i), '.ec2.internal')),
  if(fmt = 'envoy', 'envoy.access_log', concat(logger, '.HttpHandler')), if(fmt = 'envoy', '1.29.2', '1.0.0'),
  if(fmt = 'envoy', map('log.iostream', 'stdout'), map('code.namespace', logger, 'thread.name',
      concat('worker-', toString(1 + {h(30)} % 16))))
FROM ({inner})"""


def log_schema_hash() -> str:
    """Hash of the schema files that define the log tables: data generated under other DDL is not reused."""
    import hashlib

    from meshscope.schema import schema_files

    h = hashlib.sha256()
    for name, text in schema_files():
        if "otel_logs" in text or "otel_log_streams" in text:
            h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]




def generate(store, data_dir: str, lines: int, chunk: int, log) -> dict:
    """Fill the (fresh) store and write raw.log; return the manifest (ground truths included)."""
    from meshscope.schema import apply_schema

    apply_schema(store)
    db = store.database
    anchor_ns = (time.time_ns() // (60 * S)) * 60 * S
    start_ns = anchor_ns - SPAN_NS
    step_ns = SPAN_NS // lines
    needle_every = max(1, min(100_000, lines // 100))  # ~100 needle lines, 1 per 100k at 10M
    t0 = time.perf_counter()
    for off in range(0, lines, chunk):
        n = min(chunk, lines - off)
        t = time.perf_counter()
        store.command(insert_sql(db, off, n, start_ns, step_ns, needle_every),
                      settings={"max_partitions_per_insert_block": 0})
        log(f"# inserted rows {off:,}..{off + n - 1:,} in {time.perf_counter() - t:.1f}s")
    insert_s = time.perf_counter() - t0
    rows = store.query(f"SELECT count(), sum(length(Body)), countIf(position(Body, {{n:String}}) > 0), "
                       f"uniqExact(StreamFingerprint) FROM {db}.otel_logs", {"n": NEEDLE}).rows[0]
    count, body_bytes, needles, streams = (int(x) for x in rows)
    per_service = dict(store.query(
        f"SELECT ServiceName, count() FROM {db}.otel_logs WHERE position(Body, {{n:String}}) > 0 "
        f"GROUP BY ServiceName ORDER BY count() DESC, ServiceName", {"n": NEEDLE}).rows)
    raw = os.path.join(data_dir, "raw.log")
    t = time.perf_counter()
    remove(raw)
    store.command(f"INSERT INTO FUNCTION file({_quote(raw)}, 'LineAsString') SELECT Body FROM {db}.otel_logs",
                  settings={"engine_file_truncate_on_insert": 1})
    raw_s = time.perf_counter() - t
    raw_bytes = os.path.getsize(raw)
    log(f"# wrote {raw} ({raw_bytes / 2**30:.2f} GiB) in {raw_s:.1f}s")
    grep_count = _grep(raw)[0]
    return dict(gen_version=GEN_VERSION, schema_hash=log_schema_hash(), lines=lines, chunk=chunk, anchor_ns=anchor_ns, start_ns=start_ns,
                step_ns=step_ns, needle=NEEDLE, needle_every=needle_every, rows=count, body_bytes=body_bytes,
                raw_bytes=raw_bytes, needle_rows=needles, needle_rows_grep=grep_count,
                needle_per_service=per_service, streams=streams, insert_s=round(insert_s, 1),
                raw_write_s=round(raw_s, 1),
                generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _grep(path: str) -> tuple[int, float]:
    t = time.perf_counter()
    p = subprocess.run(["grep", "-F", "-c", NEEDLE, path], capture_output=True, text=True,
                       env={**os.environ, "LC_ALL": "C"})
    dt = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {p.stderr.strip()}")
    return int(p.stdout.strip() or 0), dt


def open_data(args, log):
    """Reuse the cached data set when its manifest matches, else generate it. Returns (store, manifest, new)."""
    def gen(store):
        log(f"# generating {args.lines:,} lines into {args.data}")
        return generate(store, os.path.abspath(args.data), args.lines, args.chunk, log)
    want = {"gen_version": GEN_VERSION, "lines": args.lines, "schema_hash": log_schema_hash()}
    return open_cached(args.data, want, gen, log, args.regenerate, extra_files=("raw.log",))


def timed_runs(fn, runs: int, check=None) -> tuple[float, list[float], object]:
    """A first run (kept out of the median), then ``runs`` timed runs: ``fn(i)`` for i = 0 .. runs.
    ``check`` sees every result. Returns (first_s, times, last result)."""
    first, times, res = 0.0, [], None
    for i in range(runs + 1):
        t = time.perf_counter()
        res = fn(i)
        dt = time.perf_counter() - t
        if check is not None:
            check(res)
        if i == 0:
            first = dt
        else:
            times.append(dt)
    return first, times, res


def needle_variants(kind: str, n: int) -> list[str]:
    """``n`` different search strings that match exactly the needle lines: the needle with 1, 2, ... characters
    cut from the left (``kind`` = "left") or the right. ClickHouse's query condition cache remembers which
    granules matched a filter it has already run, so repeating one string measures that cache, not a search;
    a string never searched before in the process is what a user looking up a new request id gets."""
    if n > 12:
        raise ValueError("at most 12 fresh needle variants (use --runs <= 11)")
    return [NEEDLE[i:] if kind == "left" else NEEDLE[:len(NEEDLE) - i] for i in range(1, n + 1)]


def _matrix_total(res) -> tuple[int, float]:
    series = res.data.series
    return len(series), sum(v for _, pts in series for _, v in pts)


def run(args) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info(("pyarrow", "google-re2"))
    try:
        info["grep"] = subprocess.run(["grep", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        info["grep"] = ""
    log(f"# {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB, python {info['python']}, "
        f"chdb {info['chdb_version']}; load average {load_avg()}")
    store, man, generated = open_data(args, log)
    from meshscope.query.logql.engine import LogQLEngine

    db = store.database
    merge_wait_s = wait_merges(store, log)
    parts = int(store.query(f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'otel_logs' "
                            f"AND active").rows[0][0])
    raw = os.path.join(os.path.abspath(args.data), "raw.log")
    end = man["anchor_ns"]
    data_lo, data_hi = man["start_ns"], end + S  # the whole data range
    warnings: list[str] = []
    figures: dict = {}
    units: dict = {}
    details: dict = {}

    def warn(msg: str) -> None:
        warnings.append(msg)
        print(f"WARNING {msg}", flush=True)

    if man["raw_bytes"] < 2 * 10**9 and args.lines >= 10_000_000:
        warn(f"raw file is {man['raw_bytes']:,} bytes, under 2 GB")
    if man["needle_rows"] != man["needle_rows_grep"]:
        warn(f"needle rows in the table {man['needle_rows']} != grep count {man['needle_rows_grep']}")

    def fig(name: str, value, unit: str) -> None:
        figures[name] = value
        units[name] = unit
        print(f"logsearch.{name} {value} {unit}", flush=True)

    def measure(name: str, fn, check=None, **extra) -> float:
        last: dict = {}
        first, times, _ = timed_runs(fn, args.runs, None if check is None else lambda r: last.update(check(r) or {}))
        med = statistics.median(times)
        details[name] = dict(first_s=round(first, 4), runs_s=[round(t, 4) for t in times],
                             min_s=round(min(times), 4), max_s=round(max(times), 4), **extra, **last)
        fig(f"{name}.median_s", round(med, 4), "s")
        fig(f"{name}.first_s", round(first, 4), "s")
        return med

    eng = LogQLEngine(store)
    step60 = 60 * S

    def log_query(q, lo, hi, limit):
        """``q`` a string, or a function of the run index giving the query."""
        return lambda i: eng.query_range(q(i) if callable(q) else q, lo, hi, step60, limit=limit,
                                         direction="backward", tenant=TENANT)

    def metric_query(q, lo, hi, step):
        return lambda i: eng.query_range(q, lo, hi, step, tenant=TENANT)

    def stats_of(res) -> dict:
        st = res.stats
        return dict(lines_processed=st.lines_processed, bytes_processed=st.bytes_processed,
                    lines_post_filter=st.lines_post_filter, streams=st.streams)

    # ---- (a) needle vs grep
    svc = next(iter(man["needle_per_service"]), SERVICES[0][0])  # the service with the most needle lines
    want_svc = int(man["needle_per_service"].get(svc, 0))

    def q_svc(needle: str) -> str:
        return f'{{service_name="{svc}"}} |= "{needle}"'

    def q_all(needle: str) -> str:
        return f'{{k8s_namespace_name=~".+"}} |= "{needle}"'

    # fresh strings per run (left-cut for the service query, right-cut for all data: never the same condition)
    v_svc, v_all = needle_variants("left", args.runs + 1), needle_variants("right", args.runs + 1)

    def check_lines(want, name):
        def check(res):
            got = len(res.data)
            if got != want or any(NEEDLE not in ln.line for ln in res.data):
                warn(f"{name}: query returned {got} lines, expected {want} lines holding the needle")
            return dict(returned=got, expected=want, **stats_of(res))
        return check

    t_svc = measure("a.needle_service", log_query(lambda i: q_svc(v_svc[i]), data_lo, data_hi, 5000),
                    check_lines(want_svc, "a.needle_service"), needles=v_svc)
    t_all = measure("a.needle_all", log_query(lambda i: q_all(v_all[i]), data_lo, data_hi, 5000),
                    check_lines(man["needle_rows"], "a.needle_all"), needles=v_all)
    # the same query again and again (a dashboard refresh): served by the query condition cache after the first
    t_svc_rep = measure("a.needle_service_repeat", log_query(q_svc(NEEDLE), data_lo, data_hi, 5000),
                        check_lines(want_svc, "a.needle_service_repeat"))
    t_all_rep = measure("a.needle_all_repeat", log_query(q_all(NEEDLE), data_lo, data_hi, 5000),
                        check_lines(man["needle_rows"], "a.needle_all_repeat"))
    grep_count = _grep(raw)[0]  # warm the page cache
    gtimes = []
    for _ in range(args.runs):
        c, dt = _grep(raw)
        gtimes.append(dt)
        if c != grep_count:
            warn(f"grep counted {c}, then {grep_count}")
    t_grep = statistics.median(gtimes)
    details["a.grep"] = dict(runs_s=[round(t, 4) for t in gtimes], count=grep_count,
                             command=f"LC_ALL=C grep -F -c {NEEDLE} {raw}")
    if grep_count != man["needle_rows"]:
        warn(f"grep counted {grep_count} needle lines, the table holds {man['needle_rows']}")
    fig("a.grep.median_s", round(t_grep, 4), "s")
    fig("a.needle_service.grep_ratio", round(t_grep / t_svc, 2), "x")
    fig("a.needle_all.grep_ratio", round(t_grep / t_all, 2), "x")
    fig("a.needle_service_repeat.grep_ratio", round(t_grep / t_svc_rep, 2), "x")
    fig("a.needle_all_repeat.grep_ratio", round(t_grep / t_all_rep, 2), "x")
    fig("a.needle_lines_grep", grep_count, "lines")
    fig("a.needle_lines_query", details["a.needle_all"]["returned"], "lines")
    fig("a.needle_lines_service_query", details["a.needle_service"]["returned"], "lines")

    # ---- (b) metric query, per level, over 1 h and 24 h
    q_b = f'sum by (level) (count_over_time({{k8s_namespace_name="{TARGET_NS}"}}[1m]))'

    def check_counts(lo, hi, step, rng_s=60):
        # windows (t - 1m, t] for t = lo, lo+step, ..., hi; ground truth: the same windows counted in SQL
        truth = 0
        ts = lo
        sql = (f"SELECT count() FROM {db}.otel_logs WHERE ResourceAttributes['k8s.namespace.name'] = {{ns:String}} "
               f"AND Timestamp > fromUnixTimestamp64Nano({{a:Int64}}) "
               f"AND Timestamp <= fromUnixTimestamp64Nano({{b:Int64}})")
        if step == rng_s * S:  # adjacent windows: one query
            truth = int(store.query(sql, {"ns": TARGET_NS, "a": lo - rng_s * S, "b": hi}).rows[0][0])
        else:
            while ts <= hi:
                truth += int(store.query(sql, {"ns": TARGET_NS, "a": ts - rng_s * S, "b": ts}).rows[0][0])
                ts += step

        def check(res):
            n, total = _matrix_total(res)
            if int(total) != truth:
                warn(f"metric total {int(total)} != {truth} counted in SQL")
            return dict(series=n, total=int(total), expected_total=truth, **stats_of(res))
        return check

    loki_step_24h = max(24 * 3600 // 250, 1) * S
    for name, lo, step in (("b.count_by_level_1h", end - 3600 * S, step60),
                           ("b.count_by_level_24h", end - 24 * 3600 * S, step60),
                           ("b.count_by_level_24h_loki_step", end - 24 * 3600 * S, loki_step_24h)):
        measure(name, metric_query(q_b, lo, end, step), check_counts(lo, end, step))

    # ---- (c) json | status >= 500
    sel = f'{{k8s_namespace_name="{TARGET_NS}"}}'
    q_c_log = f"{sel} | json | status >= 500"
    q_c_metric = f"sum(count_over_time({sel} | json | status >= 500 [1m]))"
    lo_1h = end - 3600 * S
    truth_5xx = int(store.query(
        f"SELECT count() FROM {db}.otel_logs WHERE ResourceAttributes['k8s.namespace.name'] = {{ns:String}} "
        f"AND Timestamp > fromUnixTimestamp64Nano({{a:Int64}}) AND Timestamp <= fromUnixTimestamp64Nano({{b:Int64}}) "
        f"AND startsWith(Body, '{{') AND JSONExtractInt(Body, 'status') >= 500",
        {"ns": TARGET_NS, "a": lo_1h - 60 * S, "b": end}).rows[0][0])

    truth_5xx_log = int(store.query(
        f"SELECT count() FROM {db}.otel_logs WHERE ResourceAttributes['k8s.namespace.name'] = {{ns:String}} "
        f"AND Timestamp >= fromUnixTimestamp64Nano({{a:Int64}}) AND Timestamp < fromUnixTimestamp64Nano({{b:Int64}}) "
        f"AND startsWith(Body, '{{') AND JSONExtractInt(Body, 'status') >= 500",
        {"ns": TARGET_NS, "a": lo_1h, "b": end}).rows[0][0])

    def check_c_log(res):
        got, want = len(res.data), min(100, truth_5xx_log)
        if got != want:
            warn(f"json 5xx log query returned {got} lines, expected {want}")
        bad = [ln for ln in res.data if '"status":5' not in ln.line]
        if bad:
            warn(f"{len(bad)} lines of the json query do not have a 5xx status")
        return dict(returned=got, expected=want, **stats_of(res))

    def check_c_metric(res):
        n, total = _matrix_total(res)
        if int(total) != truth_5xx:
            warn(f"5xx metric total {int(total)} != {truth_5xx} counted in SQL")
        return dict(series=n, total=int(total), expected_total=truth_5xx, **stats_of(res))

    measure("c.json_5xx_lines_1h", log_query(q_c_log, lo_1h, end, 100), check_c_log)
    measure("c.json_5xx_rate_1h", metric_query(q_c_metric, lo_1h, end, step60), check_c_metric)

    fig("data.lines", man["rows"], "lines")
    fig("data.raw_gb", round(man["raw_bytes"] / 1e9, 3), "GB")
    fig("data.avg_line_bytes", round(man["body_bytes"] / max(1, man["rows"]), 1), "bytes")
    fig("data.lines_per_s_insert", round(man["rows"] / max(man["insert_s"], 1e-9)), "lines/s")
    store_bytes = int(store.query(
        f"SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{db}' AND active").rows[0][0])
    fig("data.store_gb", round(store_bytes / 1e9, 3), "GB")
    store.close()

    out = dict(figures=figures, units=units, details=details, machine=info, warnings=warnings,
               data=dict(man, generated_now=generated, merge_wait_s=round(merge_wait_s, 1), active_parts=parts,
                         store_bytes=store_bytes, raw_path=raw),
               queries={"a.needle_service": q_svc(NEEDLE), "a.needle_all": q_all(NEEDLE), "b": q_b,
                        "c.log": q_c_log,
                        "c.metric": q_c_metric},
               config=dict(lines=args.lines, runs=args.runs, chunk=args.chunk, data=os.path.abspath(args.data),
                           target_namespace=TARGET_NS, needle_service=svc, step_s=60,
                           loki_default_step_24h_s=loki_step_24h // S,
                           ranges=dict(a="whole data range (25 h)", b="1 h, 24 h", c="1 h")),
               load_average_end=load_avg())
    write_json(args.json_out, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=10_000_000, help="log lines to generate (default 10,000,000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure, after one first run (default 5)")
    ap.add_argument("--data", default=os.path.join(".", "bench-data", "logsearch"),
                    help="cache dir for the store and raw.log (default ./bench-data/logsearch)")
    ap.add_argument("--json-out", default=os.path.join(HERE, "results", "logsearch.json"))
    ap.add_argument("--chunk", type=int, default=1_000_000, help="rows per generating INSERT (default 1,000,000)")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached data")
    args = ap.parse_args(argv)
    if args.lines < 1000 or not 1 <= args.runs <= 11 or args.chunk < 1:
        ap.error("--lines must be >= 1000, --runs 1..11, --chunk >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
