"""Apply the SQL under ``deploy/clickhouse`` idempotently at start-up.

Every statement there is written to be re-runnable (``IF NOT EXISTS``); files run in
name order. The retention is applied on every start with ``MODIFY TTL`` so changing
``--retention`` takes effect on existing tables (without rewriting old parts).

Backfill: a table that materialized views feed and that is created with the comment
``BACKFILL_PENDING`` (``otel_metrics_series``) is filled once from the tables those views
read, with the views' own SELECTs, after every file has run; the comment is then changed, so
later starts skip it, and a start that stopped half-way does it again. The views exist by
then, so rows inserted meanwhile (another node of a cluster) are never missed; such tables
hold only idempotent aggregates (any, min, max), so rows seen by both count once.
"""

from __future__ import annotations

import re
from importlib import resources
from string import Template

from meshscope.store import Store, StoreError

# table -> the expression its TTL counts from
TTL_COLUMNS = {
    "otel_traces": "toDateTime(Timestamp)",
    "otel_traces_trace_id_ts": "toDateTime(Start)",
    "otel_logs": "TimestampTime",
    "otel_log_streams": "Hour",
    "otel_metrics_series": "Hour",
    "otel_metrics_gauge": "toDateTime(TimeUnix)",
    "otel_metrics_sum": "toDateTime(TimeUnix)",
    "otel_metrics_histogram": "toDateTime(TimeUnix)",
    "otel_metrics_exponential_histogram": "toDateTime(TimeUnix)",
    "otel_metrics_summary": "toDateTime(TimeUnix)",
    "otel_service_edges_1m": "Minute",
}


BACKFILL_PENDING = "meshscope: backfill pending"
BACKFILLED = "meshscope: backfilled"
_VIEW = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS\s+\S+\s+(?:ON CLUSTER\s+\S+\s+)?"
                   r"TO\s+(\S+)\s+AS\s+(SELECT\b.*)", re.S | re.I)


def schema_files() -> list[tuple[str, str]]:
    folder = resources.files("meshscope.deploy").joinpath("clickhouse")
    files = sorted((p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql"))
    return files


def split_statements(sql: str) -> list[str]:
    """Split on semicolons at line ends; the schema files keep one statement per block."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def render(sql: str, database: str, ttl_days: int, cluster: str = "") -> str:
    engine = "ReplicatedMergeTree" if cluster else "MergeTree"
    return Template(sql).substitute(
        DB=database,
        TTL_DAYS=str(int(ttl_days)),
        ENGINE=engine,
        AGGREGATING_ENGINE="ReplicatedAggregatingMergeTree" if cluster else "AggregatingMergeTree",
        ON_CLUSTER=f"ON CLUSTER {cluster}" if cluster else "",
    )


def apply_schema(store: Store, ttl_days: int = 7, cluster: str = "") -> list[str]:
    """Create what is missing and set the retention. Returns the statements run."""
    if ttl_days < 1:
        raise StoreError("--retention must be at least 1 day")
    db = store.database
    ran = []
    feeds: dict[str, list[str]] = {}  # table -> SELECTs of the views that write into it
    for _name, text in schema_files():
        for stmt in split_statements(render(text, db, ttl_days, cluster)):
            store.command(stmt)
            ran.append(stmt)
            m = _VIEW.match(stmt)
            if m:
                feeds.setdefault(m.group(1), []).append(m.group(2))
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    for table, selects in feeds.items():
        ran += _backfill(store, table, selects, on_cluster)
    for table, expr in TTL_COLUMNS.items():
        stmt = f"ALTER TABLE {db}.{table}{on_cluster} MODIFY TTL {expr} + toIntervalDay({int(ttl_days)})"
        store.command(stmt, settings={"materialize_ttl_after_modify": 0})
        ran.append(stmt)
    return ran


def _backfill(store: Store, table: str, selects: list[str], on_cluster: str) -> list[str]:
    """Fill ``table`` from its views' sources once, when its comment says the backfill is pending."""
    database, _, name = table.partition(".")
    rows = store.query("SELECT comment FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                       parameters={"d": database, "t": name}).rows
    if not rows or rows[0][0] != BACKFILL_PENDING:
        return []
    ran = []
    for select in selects:
        stmt = f"INSERT INTO {table} {select}"
        # old data can span every day of the retention (one partition per day)
        store.command(stmt, settings={"max_partitions_per_insert_block": 0})
        ran.append(stmt)
    stmt = f"ALTER TABLE {table}{on_cluster} MODIFY COMMENT '{BACKFILLED}'"
    store.command(stmt)
    ran.append(stmt)
    return ran
