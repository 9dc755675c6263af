"""The LogQL engine against the real embedded store: stream selection, SQL push-down, paging, metric queries.

The oracle for metric queries is the same query evaluated over the same entries held in memory
(``MemorySource``: pipeline and evaluator only, no SQL), so every push-down (line filters, counting per bucket,
early grouping) must give exactly what the plain Python path gives.
"""
from __future__ import annotations

import random
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meshscope.query.logql import parse
from meshscope.query.logql.engine import LogQLEngine, QueryError
from meshscope.query.logql.evaluator import Evaluator
from meshscope.query.logql.memsource import MemorySource
from meshscope.query.logql import engine as engine_mod
from meshscope.query.logql.planner import plan_log_query

S = 10**9
T0 = (int(time.time()) // 3600 - 3) * 3600 * S  # recent: older rows would fall to the retention TTL


def _insert(store, rows, tenant):
    """rows: (ts_ns, service, severity_number, body, resource_attrs, log_attrs[, scope])."""
    values = []
    params = {}
    for i, r in enumerate(rows):
        ts, svc, sev, body, ra, la = r[:6]
        scope = r[6] if len(r) > 6 else "test"
        params |= {f"b{i}": body, f"s{i}": svc, f"sc{i}": scope,
                   f"rk{i}": list(ra), f"rv{i}": list(ra.values()), f"lk{i}": list(la), f"lv{i}": list(la.values())}
        values.append(f"('{tenant}', fromUnixTimestamp64Nano(toInt64({ts})), {{s{i}:String}}, {{b{i}:String}}, {sev}, "
                      f"{{sc{i}:String}}, mapFromArrays({{rk{i}:Array(String)}}, {{rv{i}:Array(String)}}), "
                      f"mapFromArrays({{lk{i}:Array(String)}}, {{lv{i}:Array(String)}}))")
    store.command("INSERT INTO otel.otel_logs (TenantId, Timestamp, ServiceName, Body, SeverityNumber, ScopeName, "
                  "ResourceAttributes, LogAttributes) VALUES " + ", ".join(values), parameters=params)


def _res(svc, ns="shop", pod="p1"):
    return {"service.name": svc, "k8s.namespace.name": ns, "k8s.pod.name": pod, "host.name": "node-1"}


@pytest.fixture(scope="module")
def data(store):
    """A tenant of its own with a few hundred entries over 10 minutes, from three services."""
    tenant = "t" + uuid.uuid4().hex[:8]
    rng = random.Random(7)
    rows = []
    for i in range(600):
        svc = ["cart", "checkout", "payments"][i % 3]
        status = rng.choice([200, 200, 200, 404, 500, 503])
        lvl = 17 if status >= 500 else 9
        body = (f'{{"msg":"request {i}","status":{status},"path":"/api/{svc}","latency":"{rng.randint(1, 900)}ms"}}'
                if svc != "payments" else f"level={'error' if lvl == 17 else 'info'} status={status} took={i}ms id={i}")
        ts = T0 + i * S + rng.randint(0, 999_999)
        rows.append((ts, svc, lvl, body, _res(svc, pod=f"p{i % 2}"), {"http.status": str(status)} if i % 2 else {}))
    # two lines at exactly the same instant in different streams, one Loki-pushed stream
    rows.append((T0 + 700 * S, "cart", 9, "same instant A", _res("cart"), {}))
    rows.append((T0 + 700 * S, "checkout", 9, "same instant B", _res("checkout"), {}))
    rows.append((T0 + 701 * S, "job1", 0, "pushed line", {"service.name": "job1", "job": "job1", "env": "dev"},
                 {"trace_id_attr": "x"}, "loki-push"))
    _insert(store, rows, tenant)
    return tenant, rows


def _engine(store):
    return LogQLEngine(store)


def test_log_query_backward_global_limit_and_order(store, data):
    tenant, rows = data
    eng = _engine(store)
    res = eng.query_range('{k8s_namespace_name="shop"}', T0, T0 + 800 * S, 0, limit=7, tenant=tenant)
    assert res.result_type == "streams"
    ts = [e.ts for e in res.data]
    assert len(ts) == 7 and ts == sorted(ts, reverse=True)
    newest = sorted((r[0] for r in rows if r[1] != "job1"), reverse=True)[:7]
    assert ts == newest
    assert res.data[0].stream["k8s_namespace_name"] == "shop"
    assert "host_name" in res.data[0].metadata  # a resource attribute that is not a stream label


def test_log_query_forward_and_half_open_range(store, data):
    tenant, rows = data
    eng = _engine(store)
    start = rows[10][0]
    end = rows[20][0]
    res = eng.query_range('{service_name=~"cart|checkout|payments"}', start, end, 0, limit=100,
                          direction="forward", tenant=tenant)
    got = [e.ts for e in res.data]
    want = sorted(r[0] for r in rows if start <= r[0] < end and r[1] != "job1")
    assert got == want  # start inclusive, end exclusive


def test_pushed_line_filters_match_python(store, data):
    tenant, rows = data
    eng = _engine(store)
    q = '{service_name="payments"} |= "status=5" != "id=1" |~ "took=[0-9]+0ms"'
    plan = plan_log_query(parse(q))
    assert len(plan.sql_filters) == 3 and not plan.python_stages
    res = eng.query_range(q, T0, T0 + 800 * S, 0, limit=1000, tenant=tenant)
    import re
    want = sorted((r[0] for r in rows if r[1] == "payments" and "status=5" in r[3] and "id=1" not in r[3]
                   and re.search("took=[0-9]+0ms", r[3])), reverse=True)
    assert [e.ts for e in res.data] == want and want


def test_parser_and_label_filter_in_python_with_paging(store, data, monkeypatch):
    tenant, rows = data
    monkeypatch.setattr(engine_mod, "PAGE_ROWS", 5)  # force many pages, and page edges at equal timestamps
    eng = _engine(store)
    res = eng.query_range('{k8s_namespace_name="shop"} | json | status >= 500', T0, T0 + 800 * S, 0, limit=40,
                          tenant=tenant)
    import json
    want = sorted((r[0] for r in rows if r[3].startswith("{") and json.loads(r[3])["status"] >= 500),
                  reverse=True)[:40]
    assert [e.ts for e in res.data] == want
    assert all(e.parsed["status"] in ("500", "503") for e in res.data)


def test_equal_timestamps_across_a_page_edge(store, data, monkeypatch):
    tenant, _ = data
    monkeypatch.setattr(engine_mod, "PAGE_ROWS", 1)
    eng = _engine(store)
    res = eng.query_range('{k8s_namespace_name="shop"} |= "same instant"', T0 + 699 * S, T0 + 701 * S, 0,
                          limit=10, tenant=tenant)
    assert sorted(e.line for e in res.data) == ["same instant A", "same instant B"]


def test_structured_metadata_filter_without_parser(store, data):
    tenant, rows = data
    eng = _engine(store)
    res = eng.query_range('{service_name="cart"} | http_status="500"', T0, T0 + 800 * S, 0, limit=1000,
                          tenant=tenant)
    want = sorted((r[0] for r in rows if r[1] == "cart" and r[5].get("http.status") == "500"), reverse=True)
    assert [e.ts for e in res.data] == want and want


def test_loki_pushed_stream_keeps_its_labels(store, data):
    tenant, _ = data
    eng = _engine(store)
    res = eng.query_range('{job="job1", env="dev"}', T0, T0 + 800 * S, 0, limit=10, tenant=tenant)
    assert [e.line for e in res.data] == ["pushed line"]
    assert res.data[0].stream == {"job": "job1", "env": "dev", "service_name": "job1"}
    assert res.data[0].metadata == {"trace_id_attr": "x"}


def test_labels_values_series_stats(store, data):
    tenant, rows = data
    eng = _engine(store)
    names = eng.labels(T0, T0 + 800 * S, tenant=tenant)
    assert {"service_name", "k8s_namespace_name", "k8s_pod_name", "level", "job"} <= set(names)
    assert "host_name" not in names  # structured metadata is not a stream label
    assert eng.label_values("service_name", T0, T0 + 800 * S, tenant=tenant) == ["cart", "checkout", "job1",
                                                                                  "payments"]
    assert eng.label_values("level", T0, T0 + 800 * S, query='{service_name="cart"}', tenant=tenant) == [
        "error", "info"]
    series = eng.series(['{service_name="payments"}'], T0, T0 + 800 * S, tenant=tenant)
    assert {s["k8s_pod_name"] for s in series} == {"p0", "p1"} and len(series) == 4
    stats = eng.index_stats('{service_name="payments"}', T0, T0 + 800 * S, tenant=tenant)
    assert stats["entries"] == 200 and stats["streams"] == 4
    assert stats["bytes"] == sum(len(r[3].encode()) for r in rows if r[1] == "payments")


def test_tenants_are_isolated(store, data):
    _, _ = data
    eng = _engine(store)
    assert eng.query_range('{k8s_namespace_name="shop"}', T0, T0 + 800 * S, 0, tenant="nobody").data == []
    assert eng.labels(T0, T0 + 800 * S, tenant="nobody") == []


def _memory_source(rows):
    """The stored rows as in-memory streams, with the same stream-label/metadata split as the store."""
    from meshscope.query.logql.planner import STREAM_RESOURCE_ATTRIBUTES

    def san(k):
        import re
        return re.sub("[^A-Za-z0-9_]", "_", k)
    streams = {}
    for r in rows:
        ts, svc, sev, body, ra, la = r[:6]
        scope = r[6] if len(r) > 6 else "test"
        if scope == "loki-push":
            labels = {san(k): v for k, v in ra.items()}
            md = {san(k): v for k, v in la.items()}
        else:
            labels = {san(k): v for k, v in ra.items() if k in STREAM_RESOURCE_ATTRIBUTES}
            labels["level"] = {9: "info", 17: "error"}[sev]
            md = {san(k): v for k, v in la.items()} | {san(k): v for k, v in ra.items()
                                                         if k not in STREAM_RESOURCE_ATTRIBUTES}
        key = (tuple(sorted(labels.items())), tuple(sorted(md.items())))
        streams.setdefault(key, (labels, md, []))[2].append((ts, body))
    return MemorySource(streams.values())


METRIC_QUERIES = [
    'count_over_time({k8s_namespace_name="shop"}[1m])',
    'sum by (level) (count_over_time({k8s_namespace_name="shop"}[1m]))',
    'sum by (http_status) (count_over_time({k8s_namespace_name="shop"} |= "status" [90s]))',
    'sum(rate({service_name="cart"} != "404" [2m]))',
    'sum by (service_name) (bytes_over_time({k8s_namespace_name="shop"}[1m] offset 30s))',
    'sum by (status) (count_over_time({service_name="checkout"} | json | status >= 500 [1m]))',
    'max by (service_name) (max_over_time({service_name="payments"} | logfmt | unwrap duration(took) | __error__="" [2m]))',
    'sum without (k8s_pod_name) (count_over_time({service_name=~"cart|payments"} |~ "status.?5" [45s]))',
    'topk(2, sum by (k8s_pod_name, service_name) (count_over_time({k8s_namespace_name="shop"}[5m])))',
    'sum by (level) (count_over_time({k8s_namespace_name="shop"}[1m])) / '
    'ignoring(level) group_left sum(count_over_time({k8s_namespace_name="shop"}[1m]))',
]


@pytest.mark.parametrize("query", METRIC_QUERIES)
def test_metric_queries_equal_the_in_memory_evaluation(store, data, query):
    tenant, rows = data
    eng = _engine(store)
    shop = [r for r in rows if r[1] != "job1"]
    start, end, step = T0 + 30 * S, T0 + 660 * S, 37 * S
    got = eng.query_range(query, start, end, step, tenant=tenant).data
    want = Evaluator(_memory_source(shop)).eval_range(parse(query), start, end, step)
    assert _norm(got) == _norm(want)
    assert got.series, "the query should produce data"
    inst = eng.query_instant(query, T0 + 400 * S, tenant=tenant).data
    want_i = Evaluator(_memory_source(shop)).eval_instant(parse(query), T0 + 400 * S)
    assert _norm(inst) == _norm(want_i)


def _norm(result):
    if hasattr(result, "series"):
        return sorted((tuple(sorted(lab.items())), tuple((t, round(v, 9)) for t, v in pts))
                      for lab, pts in result.series)
    return sorted((tuple(sorted(lab.items())), t, round(v, 9)) for lab, t, v in result.samples)


def test_user_errors_are_query_errors(store, data):
    tenant, _ = data
    eng = _engine(store)
    cases = [
        ('{a="b"', "parse error"),
        ('count_over_time({a="b"}[1m])', "zero or negative query resolution step"),
    ]
    for q, msg in cases:
        with pytest.raises(QueryError, match=msg) as ei:
            eng.query_range(q, T0, T0 + 60 * S, 0, tenant=tenant)
        assert ei.value.status == 400
    with pytest.raises(QueryError, match="log queries are not supported as an instant query"):
        eng.query_instant('{a="b"}', T0, tenant=tenant)
    with pytest.raises(QueryError, match="exceeded maximum resolution of 11,000 points"):
        eng.query_range('count_over_time({a="b"}[1m])', T0, T0 + 20000 * S, S, tenant=tenant)
    with pytest.raises(QueryError, match="max entries limit per query exceeded"):
        eng.query_range('{a="b"}', T0, T0 + 60 * S, 0, limit=5001, tenant=tenant)
    with pytest.raises(QueryError, match="pipeline error: 'JSONParserErr'"):
        eng.query_range('count_over_time({service_name="payments"} | json [1m])', T0, T0 + 120 * S, 60 * S,
                        tenant=tenant)


NASTY = st.lists(st.sampled_from(list("ab'\"\\`{}()%_*?$;-\n\t\x00é") + ["\\'", "'); DROP", "{p0:String}"]),
                 max_size=12).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=NASTY, needle=NASTY)
def test_fuzz_user_text_only_reaches_sql_as_bound_values(store, value, needle):
    """Whatever the label value or line-filter text, the SQL text stays the same and the store runs it."""
    from meshscope.query.logql.ast import q as quote
    from meshscope.query.logql.planner import entries_sql, streams_sql
    query = f'{{service_name={quote(value or "x")}}} |= {quote(needle)} |~ {quote("a")}'
    e = parse(query)
    plan = plan_log_query(e)
    sql1, params1 = streams_sql("otel", e.selector, "t'x", 0, 10 * S, 10)
    sql2, params2 = entries_sql("otel", plan, "t'x", ["s"], [1], 0, 10 * S, False, 5, True)
    # A needle of the same shape (token characters vs separators) must give the same SQL text: the
    # text-index prefilter depends on where the tokens are, never on what they say.
    shape = "".join("a" if (c.isascii() and c.isalnum()) or not c.isascii() else "-" for c in needle)
    base = parse(f'{{service_name="x"}} |= "{shape}" |~ "a"')
    ref1, _ = streams_sql("otel", base.selector, "t", 0, 10 * S, 10)
    ref2, _ = entries_sql("otel", plan_log_query(base), "t", ["s"], [1], 0, 10 * S, False, 5, True)
    assert sql1 == ref1 and sql2 == ref2  # user text changes only the bound values
    store.query(sql1, parameters=params1)
    store.query(sql2, parameters=params2)


def test_text_index_prefilter_keeps_substring_semantics(store):
    """`|=` adds a hasAllTokens() prefilter for the needle's interior tokens; results must stay those of a plain
    substring search, whatever sits at the needle's edges (partial tokens, non-ASCII, '_' which separates)."""
    from meshscope.query.logql.planner import interior_tokens
    assert interior_tokens("c0ffee42-dead-4bad-beef-5ca1") == ["dead", "4bad", "beef"]
    assert interior_tokens("needle") == [] and interior_tokens("-x-") == ["x"]
    tenant = "tok" + uuid.uuid4().hex[:6]
    bodies = ["xc0ffee42-dead-4bad-beef-5ca1y", "c0ffee42 dead 4bad beef 5ca1", "DEAD-4bad-beef", "a_dead_4bad_beef_b",
              "naïve-café-ok", "café-ok", "ERR x-dead-y", "under_score x", ""]
    rows = [(T0 + i * S, "tok", 9, b, _res("tok"), {}) for i, b in enumerate(bodies)]
    _insert(store, rows, tenant)
    eng = _engine(store)
    for needle in ["-dead-4bad-", "c0ffee42-dead-4bad-beef-5ca1", "_dead_", "x-dead-y", "naïve-café-", "-café-ok",
                   "e42-dead-4b", " dead ", "score x"]:
        q = '{service_name="tok"} |= ' + _logql_string(needle)
        got = sorted(e.line for e in eng.query_range(q, T0, T0 + 60 * S, 0, limit=100, tenant=tenant).data)
        assert got == sorted(b for b in bodies if needle in b), needle


def _logql_string(s: str) -> str:
    from meshscope.query.logql.ast import q
    return q(s)
