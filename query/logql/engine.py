"""Run LogQL against the store: the one entry point the HTTP API and the CLI use.

Flow of a query (see ``planner.py`` for the SQL): parse → select streams from ``otel_log_streams`` → fetch rows
with the pushed-down filters → run the remaining pipeline in Python → for a log query, merge by timestamp and
cut at the global limit; for a metric query, hand samples to the evaluator (``evaluator.py``).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from meshscope.store import Store, StoreError

from ..deadline import DeadlineExceeded, deadline, is_timeout, store_settings
from . import ast as A
from .evaluator import EvalError, Evaluator
from .lexer import LogQLSyntaxError
from .memsource import SeriesBuilder, fetch_range
from .parser import log_queries, parse, parse_matchers, walk
from .pipeline import BYTES_KINDS, COUNT_KINDS, Pipeline, PipelineError
from .planner import (LogPlan, bucketing_for, counts_sql, entries_sql, plan_log_query, streams_sql)

MAX_POINTS = 11000
PAGE_ROWS = 20000


class QueryError(Exception):
    """A request the user has to change; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class StreamInfo:
    fingerprint: int
    service: str
    labels: dict[str, str]
    entries: int
    bytes: int


@dataclass
class LogLine:
    """One log-query result entry, with its labels kept by category (Loki's categorize-labels flag)."""
    ts: int
    line: str
    stream: dict[str, str]
    metadata: dict[str, str]
    parsed: dict[str, str]

    def labels(self) -> dict[str, str]:
        return {**self.stream, **self.metadata, **self.parsed}


@dataclass
class Stats:
    lines_processed: int = 0
    bytes_processed: int = 0
    lines_post_filter: int = 0
    streams: int = 0
    exec_seconds: float = 0.0

    def as_loki(self, returned: int) -> dict:
        t = self.exec_seconds or 1e-9
        return {"summary": {
            "bytesProcessedPerSecond": int(self.bytes_processed / t),
            "linesProcessedPerSecond": int(self.lines_processed / t),
            "totalBytesProcessed": self.bytes_processed, "totalLinesProcessed": self.lines_processed,
            "execTime": self.exec_seconds, "queueTime": 0, "subqueries": 0,
            "totalEntriesReturned": returned, "splits": 0, "shards": 0,
            "totalPostFilterLines": self.lines_post_filter, "totalStructuredMetadataBytesProcessed": 0}}


@dataclass
class Result:
    """``result_type`` is streams | matrix | vector | scalar; ``data`` the matching Python value:
    streams → list[LogLine] in the requested order; matrix/vector/scalar → the evaluator's object."""
    result_type: str
    data: object
    stats: Stats = field(default_factory=Stats)


def _parse(query: str) -> A.Expr:
    """Parse, then build every pipeline once: a bad line-filter regex or ip() (which Loki accepts at parse time)
    is the user's error, a 400, before any SQL is sent."""
    try:
        expr = parse(query)
        for lq in log_queries(expr):
            Pipeline(lq.stages)
    except (LogQLSyntaxError, PipelineError) as err:
        raise QueryError(str(err)) from None
    return expr


QUERY_TIMEOUT_S = 60.0  # Loki's default query_timeout is 1m


def _with_deadline(method):
    """A public query: every store query it makes shares one deadline (``timeout_s`` from the start), so a query of
    many selectors cannot run on for minutes after its client has given up, holding one of the few workers."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with deadline(self.timeout_s):
            return method(self, *args, **kwargs)
    return wrapped


class LogQLEngine:
    def __init__(self, store: Store, *, max_entries: int = 5000, max_series: int = 500,
                 max_streams: int = 50000, max_rows_scanned: int = 50_000_000, timeout_s: float = QUERY_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.store = store
        self.db = store.database
        self.max_entries = max_entries
        self.max_series = max_series
        self.max_streams = max_streams
        self.max_rows_scanned = max_rows_scanned

    # ------------------------------------------------------------------------------------ public queries
    @_with_deadline
    def query_range(self, query: str, start_ns: int, end_ns: int, step_ns: int, *, limit: int = 100,
                    direction: str = "backward", interval_ns: int = 0, tenant: str = "default") -> Result:
        expr = _parse(query)
        t0 = time.perf_counter()
        if end_ns < start_ns:
            raise QueryError("end timestamp must not be before or equal to start time")
        if A.is_log(expr):
            res = self._log_query(self._as_log_query(expr), start_ns, end_ns, limit, direction, interval_ns,
                                  tenant)
        else:
            if step_ns <= 0:
                raise QueryError("zero or negative query resolution step widths are not accepted. "
                                 "Try a positive integer")
            if (end_ns - start_ns) // step_ns > MAX_POINTS:
                raise QueryError("exceeded maximum resolution of 11,000 points per time series. "
                                 "Try increasing the value of the step parameter")
            res = self._metric(expr, tenant, lambda ev: ev.eval_range(expr, start_ns, end_ns, step_ns), step_ns)
        res.stats.exec_seconds = time.perf_counter() - t0
        return res

    @_with_deadline
    def query_instant(self, query: str, time_ns: int, *, limit: int = 100, direction: str = "backward",
                      tenant: str = "default") -> Result:
        expr = _parse(query)
        if A.is_log(expr):
            raise QueryError("log queries are not supported as an instant query type, please change your query "
                             "to a range query type")
        t0 = time.perf_counter()
        res = self._metric(expr, tenant, lambda ev: ev.eval_instant(expr, time_ns), 0)
        res.stats.exec_seconds = time.perf_counter() - t0
        return res

    @_with_deadline
    def labels(self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = "default") -> list[str]:
        names = set()
        for s in self._streams_for(query, start_ns, end_ns, tenant):
            names.update(s.labels)
        return sorted(names)

    @_with_deadline
    def label_values(self, name: str, start_ns: int, end_ns: int, query: str | None = None,
                     tenant: str = "default") -> list[str]:
        vals = {s.labels[name] for s in self._streams_for(query, start_ns, end_ns, tenant) if name in s.labels}
        return sorted(vals)

    @_with_deadline
    def series(self, matchers: list[str], start_ns: int, end_ns: int, tenant: str = "default") -> list[dict]:
        seen: dict[int, dict] = {}
        for m in matchers or [None]:
            for s in self._streams_for(m, start_ns, end_ns, tenant):
                seen[s.fingerprint] = s.labels
        return sorted(seen.values(), key=lambda d: sorted(d.items()))

    @_with_deadline
    def index_stats(self, query: str, start_ns: int, end_ns: int, tenant: str = "default") -> dict:
        streams = self._streams_for(query, start_ns, end_ns, tenant)
        return {"streams": len(streams), "chunks": len(streams), "entries": sum(s.entries for s in streams),
                "bytes": sum(s.bytes for s in streams)}

    # ------------------------------------------------------------------------------------ streams
    @staticmethod
    def _as_log_query(expr: A.Expr) -> A.LogQuery:
        return expr if isinstance(expr, A.LogQuery) else A.LogQuery(expr, [])

    def _streams_for(self, query: str | None, start_ns: int, end_ns: int, tenant: str) -> list[StreamInfo]:
        if query is None or query.replace(" ", "") in ("", "{}"):
            selector = A.Selector([])
        else:
            try:
                selector = A.Selector(parse_matchers(query, validate_matchers=False))
            except LogQLSyntaxError as err:
                raise QueryError(str(err)) from None
        return self._select_streams(selector, start_ns, end_ns, tenant)

    def _select_streams(self, selector: A.Selector, start_ns: int, end_ns: int, tenant: str) -> list[StreamInfo]:
        sql, params = streams_sql(self.db, selector, tenant, start_ns, end_ns, self.max_streams + 1)
        rows = self._query(sql, params)
        if len(rows) > self.max_streams:
            raise QueryError(f"the selector matches more than {self.max_streams} streams; narrow it down")
        return [StreamInfo(int(fp), svc, dict(labels), int(n), int(b)) for fp, svc, labels, n, b in rows]

    def _time_left(self) -> dict | None:
        """Store settings that end a query at the request's deadline; raises when the deadline has passed."""
        try:
            return store_settings()
        except DeadlineExceeded:
            raise self._timed_out() from None

    def _timed_out(self) -> QueryError:
        return QueryError(f"query timed out after {self.timeout_s:g}s: narrow the stream selector or the time range",
                          504)

    def _store_error(self, err: Exception) -> QueryError:
        if is_timeout(err):
            return self._timed_out()
        return QueryError(f"store error: {err}", 500)

    def _query(self, sql: str, params: dict) -> list[tuple]:
        settings = self._time_left()
        try:
            return self.store.query(sql, parameters=params, settings=settings).rows
        except StoreError as err:
            raise self._store_error(err) from err

    def _stream_rows(self, sql: str, params: dict):
        """Column blocks of a possibly large result, without holding it all."""
        settings = self._time_left()
        try:
            with self.store.client().query_column_block_stream(sql, parameters=params, settings=settings) as blocks:
                for block in blocks:
                    self._time_left()
                    yield block
        except (StoreError, QueryError):
            raise
        except Exception as err:  # clickhouse-connect / chDB errors
            raise self._store_error(err) from err

    # ------------------------------------------------------------------------------------ log queries
    def _log_query(self, q: A.LogQuery, start_ns: int, end_ns: int, limit: int, direction: str,
                   interval_ns: int, tenant: str) -> Result:
        if limit <= 0:
            raise QueryError("limit must be a positive value")
        if limit > self.max_entries:
            raise QueryError(f"max entries limit per query exceeded, limit > max_entries_limit_per_query "
                             f"({limit} > {self.max_entries})")
        forward = direction.lower() == "forward"
        stats = Stats()
        plan = plan_log_query(q)
        try:
            pipe = Pipeline(plan.python_stages)
        except PipelineError as err:
            raise QueryError(str(err)) from None
        streams = {s.fingerprint: s for s in self._select_streams(q.selector, start_ns, end_ns - 1, tenant)}
        stats.streams = len(streams)
        out: list[LogLine] = []
        if not streams or end_ns <= start_ns:
            return Result("streams", out, stats)
        services = [s.service for s in streams.values()]
        total = sum(s.entries for s in streams.values())
        span = end_ns - start_ns
        # First window: where `limit` lines are expected if entries were spread evenly (x4 for the filters),
        # then widen 4x per page; a page is also capped in rows.
        window = span if total <= 0 else max(10**9, int(span * min(1.0, 4 * limit / total)))
        last_out: int | None = None
        lo, hi = start_ns, end_ns - 1
        while len(out) < limit and lo <= hi:
            a, b = (lo, min(hi, lo + window - 1)) if forward else (max(lo, hi - window + 1), hi)
            rows = self._query(*entries_sql(self.db, plan, tenant, services, list(streams), a, b, forward,
                                            PAGE_ROWS + 1, True))
            if len(rows) > PAGE_ROWS:
                # A full page: the last timestamp may be cut, so leave it for the next page.
                edge = rows[PAGE_ROWS][0]
                rows = [r for r in rows if r[0] != edge]
                if rows:
                    a, b = (a, edge - 1) if forward else (edge + 1, b)
                else:  # more than a page of lines share one timestamp: take that instant whole
                    rows = self._query(*entries_sql(self.db, plan, tenant, services, list(streams), edge, edge,
                                                    forward, None, True))
                    a = b = edge
            else:
                window *= 4
            for ts, fp, body, md in rows:
                stats.lines_processed += 1
                stats.bytes_processed += len(body)
                e = pipe.process(ts, body, streams[fp].labels, md)
                if e is None:
                    continue
                stats.lines_post_filter += 1
                if interval_ns and last_out is not None and abs(ts - last_out) < interval_ns:
                    continue
                last_out = ts
                lb = e.labels
                out.append(LogLine(ts, e.line, lb.stream, lb.metadata, _with_error(lb)))
                if len(out) >= limit:
                    break
            if forward:
                lo = b + 1
            else:
                hi = a - 1
            if stats.lines_processed > self.max_rows_scanned:
                raise QueryError(f"the query scanned more than {self.max_rows_scanned} lines; narrow the time "
                                 f"range or the selector")
        return Result("streams", out, stats)

    # ------------------------------------------------------------------------------------ metric queries
    def _metric(self, expr: A.Expr, tenant: str, run, step_ns: int) -> Result:
        source = StoreSampleSource(self, tenant, step_ns, _pushed_groupings(expr))
        ev = Evaluator(source, max_series=self.max_series, max_points=MAX_POINTS)
        try:
            data = run(ev)
        except EvalError as err:
            raise QueryError(str(err)) from None
        except PipelineError as err:
            raise QueryError(str(err)) from None
        kind = type(data).__name__.lower()
        return Result(kind, data, source.stats)


def _with_error(lb) -> dict[str, str]:
    parsed = dict(lb.parsed)
    if lb.error is not None:
        parsed["__error__"] = lb.error
    if lb.error_details is not None:
        parsed["__error_details__"] = lb.error_details
    return parsed


def _pushed_groupings(expr: A.Expr) -> dict[int, A.Grouping]:
    """Range aggregations directly under ``sum [by|without] (...)`` may reduce their labels early (Loki does
    the same): summing per reduced label set in the window equals summing the per-series values afterwards."""
    out: dict[int, A.Grouping] = {}
    for node, _ in walk(expr):
        if isinstance(node, A.VectorAggregation) and node.op == "sum" and isinstance(node.expr, A.RangeAggregation):
            inner = node.expr
            if inner.grouping is None and (inner.op in COUNT_KINDS | BYTES_KINDS | {"sum_over_time"}):
                out[id(inner)] = node.grouping or A.Grouping(False, [])
    return out


_KEEP_ALWAYS = ("__error__", "__error_details__")


def reduce_labels(labels: dict[str, str], g: A.Grouping) -> dict[str, str]:
    if g.without:
        return {k: v for k, v in labels.items() if k not in g.labels or k in _KEEP_ALWAYS}
    return {k: v for k, v in labels.items() if k in g.labels or k in _KEEP_ALWAYS}


class StoreSampleSource:
    """The evaluator's sample source over the store (see ``evaluator.SampleSource``)."""

    def __init__(self, engine: LogQLEngine, tenant: str, step_ns: int, groupings: dict[int, A.Grouping]):
        self.engine, self.tenant, self.step_ns, self.groupings = engine, tenant, step_ns, groupings
        self.stats = Stats()

    def samples(self, node: A.RangeAggregation, start_ns: int, end_ns: int) -> list:
        eng = self.engine
        lo, hi = fetch_range(node, start_ns, end_ns)
        q = node.range.query
        plan = plan_log_query(q)
        streams = {s.fingerprint: s for s in eng._select_streams(q.selector, lo, hi, self.tenant)}
        self.stats.streams += len(streams)
        reduce = self.groupings.get(id(node))
        builder = SeriesBuilder(node)
        if not streams:
            return builder.series()
        services = [s.service for s in streams.values()]
        if not plan.python_stages and node.range.unwrap is None and node.op in COUNT_KINDS | BYTES_KINDS:
            self._counted(node, plan, streams, services, lo, hi, start_ns, end_ns, reduce, builder)
        else:
            self._per_line(node, plan, streams, services, lo, hi, reduce, builder)
        return builder.series()

    def _counted(self, node, plan: LogPlan, streams, services, lo, hi, start_ns, end_ns, reduce, builder) -> None:
        bk = bucketing_for(node, start_ns, end_ns, self.step_ns)
        use_bytes = node.op in BYTES_KINDS
        group_labels, metadata = None, True
        if reduce is not None and not reduce.without:
            if all(all(n in s.labels for n in reduce.labels) for s in streams.values()):
                group_labels = list(reduce.labels)  # ClickHouse merges the streams the sum merges
            else:
                metadata = list(reduce.labels)  # only metadata that survives the grouping
        sql, params = counts_sql(self.engine.db, plan, self.tenant, services, list(streams), lo, hi,
                                 bk.base_ns, bk.bucket_ns, with_bytes=use_bytes, group_labels=group_labels,
                                 metadata=metadata)
        for row in self.engine._query(sql, params):
            key, b, n, nbytes = row[0], row[1], row[2], row[3]
            self.stats.lines_processed += n
            self.stats.bytes_processed += nbytes
            if group_labels is not None:
                labels = {k: v for k, v in zip(group_labels, key) if v != ""}
            else:
                labels = {**streams[key].labels, **(row[4] if len(row) > 4 else {})}
                if reduce is not None:
                    labels = reduce_labels(labels, reduce)
            builder.add_sample(bk.bucket_end(b), labels, float(nbytes if use_bytes else n))

    def _per_line(self, node, plan: LogPlan, streams, services, lo, hi, reduce, builder) -> None:
        pipe_extract = builder.extractor
        pipe_extract.pipeline = Pipeline(plan.python_stages)
        names = visible_metadata(node, reduce)
        sql, params = entries_sql(self.engine.db, plan, self.tenant, services, list(streams), lo, hi, True, None,
                                  True if names is None else names)
        for block in self.engine._stream_rows(sql, params):
            ts_col, fp_col, body_col, md_col = block
            for i in range(len(ts_col)):
                body = body_col[i]
                self.stats.lines_processed += 1
                self.stats.bytes_processed += len(body)
                got = pipe_extract.extract(ts_col[i], body, streams[fp_col[i]].labels, md_col[i])
                if got is None:
                    continue
                labels, value = got
                if reduce is not None:
                    labels = reduce_labels(labels, reduce)
                builder.add_sample(ts_col[i], labels, value)
            if self.stats.lines_processed > self.engine.max_rows_scanned:
                raise QueryError(f"the query scanned more than {self.engine.max_rows_scanned} lines; narrow "
                                 f"the time range or the selector")


def _label_names(f: A.LabelFilter):
    if isinstance(f, A.BinaryLabelFilter):
        yield from _label_names(f.left)
        yield from _label_names(f.right)
    elif isinstance(f, A.StringLabelFilter):
        yield f.matcher.name
    else:
        yield f.name


def visible_metadata(node: A.RangeAggregation, reduce: A.Grouping | None) -> list[str] | None:
    """The metadata labels that can change a metric query's result, or None when any of them can.

    A metadata label matters when the query names it: in a label filter, drop/keep, unwrap or the grouping
    that survives (a parser's clash with metadata only renames a label to ``x_extracted``, which matters only
    if ``x`` or ``x_extracted`` is named). Templates can read any label, and without a ``by`` grouping every
    label reaches the result, so then all metadata is needed."""
    if reduce is None or reduce.without:
        return None
    names = set(reduce.labels)
    r = node.range
    for st in r.query.stages:
        if isinstance(st, (A.LineFormat, A.LabelFormat)):
            return None
        if isinstance(st, A.LabelFilterStage):
            names.update(_label_names(st.filter))
        elif isinstance(st, (A.Drop, A.Keep)):
            names.update(it.name for it in st.labels)
        elif isinstance(st, (A.JSONParser, A.LogfmtParser)):
            names.update(e.name for e in st.params)
    if r.unwrap is not None:
        names.add(r.unwrap.label)
        for f in r.unwrap.post_filters:
            names.update(_label_names(f))
    names.update(n[: -len("_extracted")] for n in list(names) if n.endswith("_extracted"))
    names.discard("__error__")
    names.discard("__error_details__")
    return sorted(names)
