"""The one store interface that collector and query share.

Two back ends, one API (``clickhouse-connect`` underneath both):

* ``EmbeddedStore``: chDB in this process, data under ``--data DIR``. chDB lets one
  process open a directory; within it, separate connections run queries in parallel
  and release the GIL, so every thread gets its own connection.
* ``ServerStore``: a ClickHouse server or cluster over HTTP(S), from ``--clickhouse URL``.

Both know how to run an OTLP insert (``insert_wire``): the statement from
``collector.otlp_sql`` reads length-delimited envelope records. The embedded store
points ``file()`` at the WAL segment on disk; the server store streams the same bytes
as the body of an ``INSERT ... SELECT ... FROM input(...)``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlparse

import clickhouse_connect

from meshscope.sqlutil import quote_string


# ClickHouse error codes that mean "try again later" rather than "this data cannot go in".
_RETRYABLE_CODES = {
    159,  # TIMEOUT_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209, 210,  # SOCKET_TIMEOUT, NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    243,  # NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS (merges behind)
    319,  # UNKNOWN_STATUS_OF_INSERT
    425,  # SYSTEM_ERROR
}


class StoreError(RuntimeError):
    """A store operation failed; the message is safe to show to a user.

    ``retryable``: an outage or overload (connection, disk, memory, merges behind), as opposed to the store
    refusing this particular data."""

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is None:
            m = re.search(r"Code: (\d+)", message)
            retryable = m is None or int(m.group(1)) in _RETRYABLE_CODES
        self.retryable = retryable


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


class Store:
    """Common surface. Subclasses provide ``_client()`` and ``_wire_source``."""

    kind = "abstract"
    database = "otel"

    def __init__(self) -> None:
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections --------------------------------------------------------------------
    def _new_client(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            if self._closed:
                raise StoreError("store is closed")
            c = self._new_client()
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for c in self._clients:
                try:
                    c.close()
                except Exception:
                    pass
            self._clients.clear()

    def knows_settings(self, names: tuple[str, ...]) -> bool:
        """Whether this ClickHouse has every one of these settings (an older server rejects a query that sends
        a setting it does not know). Asked once per store and tuple."""
        known = self.__dict__.setdefault("_known_settings", {})
        if names not in known:
            r = self.query("SELECT count() FROM system.settings WHERE name IN {n:Array(String)}",
                           {"n": list(names)})
            known[names] = r.rows[0][0] == len(set(names))
        return known[names]

    # -- queries -------------------------------------------------------------------------
    def command(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> Any:
        try:
            return self.client().command(sql, parameters=parameters, settings=settings)
        except Exception as e:
            raise StoreError(_short(e)) from e

    def query(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> QueryResult:
        try:
            r = self.client().query(sql, parameters=parameters, settings=settings)
        except Exception as e:
            raise StoreError(_short(e)) from e
        return QueryResult(list(r.column_names), [tuple(row) for row in r.result_rows])

    def insert_wire(self, statement: str, structure: str, proto: str, envelope: str, payload_path: str,
                    dedup_token: str | None = None) -> None:
        """Run an ``otlp_sql`` statement over a file of length-delimited envelope records."""
        raise NotImplementedError

    def schema_settings(self, proto: str, envelope: str) -> dict[str, Any]:
        """How ClickHouse finds the wire schema: inline text (servers cache it on their side)."""
        return {"format_schema_source": "string", "format_schema": proto, "format_schema_message_name": envelope}

    def wire_settings(self, proto: str, envelope: str, dedup_token: str | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = dict(self.schema_settings(proto, envelope))
        if dedup_token:
            extra |= {
                "insert_deduplicate": 1,
                "insert_deduplication_token": dedup_token,
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            }
        return extra | {
            "input_format_protobuf_oneof_presence": 1,
            # Backfills and clock skew can span many days (one partition per day); never refuse them for that.
            "max_partitions_per_insert_block": 0,
            # Decode a segment a few MB at a time, not whole: peak memory of a 100k-span insert 1.19 -> 0.64 GiB
            # at the same speed, still one part per insert (the insert squashes blocks back together).
            "input_format_max_block_size_bytes": 4_000_000,
            # multiIf over oneof members is cheaper evaluated flat than with per-row branch masks (measured)
            "short_circuit_function_evaluation": "disable",
        }

    def describe(self) -> str:
        return self.kind


class EmbeddedStore(Store):
    kind = "embedded"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.realpath(path)
        self.schema_dir = os.path.join(self.path, "format_schemas")
        self._schema_files: set[str] = set()
        os.makedirs(self.schema_dir, exist_ok=True)
        self.client()  # open now so a locked directory fails at start, not at first request

    def _new_client(self) -> Any:
        try:
            # Inline protobuf schemas are cached in format_schema_path; keep it inside the data dir, not the cwd.
            return clickhouse_connect.get_client(
                interface="chdb", path=self.path,
                chdb_options={"format_schema_path": self.schema_dir})
        except Exception as e:
            msg = _short(e)
            if "lock" in msg.lower():
                raise StoreError(f"data directory {self.path} is in use by another process ({msg})") from e
            raise StoreError(msg) from e

    def schema_settings(self, proto: str, envelope: str) -> dict[str, Any]:
        # chDB caches inline ("string") schemas in ./__cache__ of the process's working directory; a schema file
        # inside the data directory keeps the user's cwd clean. The name carries a hash, so it never goes stale.
        name = f"meshscope_{envelope}_{hashlib.sha256(proto.encode()).hexdigest()[:16]}.proto"
        path = os.path.join(self.schema_dir, name)
        with self._lock:
            if path not in self._schema_files:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(proto)
                os.replace(tmp, path)
                self._schema_files.add(path)
        return {"format_schema_source": "file", "format_schema": f"{path}:{envelope}"}

    def insert_wire(self, statement: str, structure: str, proto: str, envelope: str, payload_path: str,
                    dedup_token: str | None = None) -> None:
        source = f"file({quote_string(os.path.realpath(payload_path))}, 'Protobuf', {quote_string(structure)})"
        self.command(statement.replace("{source}", source), settings=self.wire_settings(proto, envelope, dedup_token))

    def describe(self) -> str:
        return f"embedded chDB at {self.path}"


class ServerStore(Store):
    kind = "server"

    def __init__(self, url: str) -> None:
        super().__init__()
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise StoreError(f"--clickhouse must be an http(s) URL like http://user:pass@host:8123/db, got {url!r}")
        self.url = url
        self._params = {
            "host": u.hostname,
            "port": u.port or (8443 if u.scheme == "https" else 8123),
            "username": unquote(u.username or "default"),
            "password": unquote(u.password or ""),
            "secure": u.scheme == "https",
        }
        db = u.path.strip("/")
        if db:
            self.database = db
        q = parse_qs(u.query)
        self.cluster = q.get("cluster", [""])[0]
        self.client()

    def _new_client(self) -> Any:
        try:
            return clickhouse_connect.get_client(**self._params, compress="lz4")
        except Exception as e:
            raise StoreError(f"cannot reach ClickHouse at {self._params['host']}:{self._params['port']}: {_short(e)}") from e

    def insert_wire(self, statement: str, structure: str, proto: str, envelope: str, payload_path: str,
                    dedup_token: str | None = None) -> None:
        source = f"input({quote_string(structure)})"
        sql = statement.replace("{source}", source) + " FORMAT Protobuf"
        with open(payload_path, "rb") as f:
            data = f.read()
        try:
            self.client().command(sql, settings=self.wire_settings(proto, envelope, dedup_token), data=data)
        except Exception as e:
            raise StoreError(_short(e)) from e

    def describe(self) -> str:
        return f"ClickHouse server at {self._params['host']}:{self._params['port']}"


def open_store(data_dir: str | None = None, clickhouse_url: str | None = None) -> Store:
    if clickhouse_url:
        return ServerStore(clickhouse_url)
    return EmbeddedStore(data_dir or "./meshscope-data")


def _short(e: BaseException) -> str:
    msg = str(e).strip()
    # ClickHouse messages carry a stack trace and version trailer; the first line says it.
    first = msg.splitlines()[0] if msg else type(e).__name__
    return first[:2000]


@contextmanager
def timed() -> Iterator[list[float]]:
    box = [0.0]
    t = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t
