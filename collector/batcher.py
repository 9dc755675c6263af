"""Per-signal buffers of acknowledged requests, flushed to the store as one insert each.

A buffer is a *segment file* under ``<data>/wal/<signal>/``: length-delimited
envelope records (``otlp_wire.envelope``), which is exactly the input ClickHouse's
``Protobuf`` format reads. So the buffer is already columnar-ready, costs no Python
objects per span, and the same file is the insert payload: a flush is "close the
segment, run one INSERT ... SELECT over it per destination table, delete it".

Flush triggers: ``flush_rows`` rows, ``flush_bytes`` bytes or ``flush_interval``
seconds since the first unflushed write. Backpressure: once acknowledged-but-not-
inserted rows pass ``max_buffered_rows`` the receiver answers 429 with Retry-After
(``BufferFull``) instead of growing without bound.

Segments left on disk by a previous run (crash, kill -9) are inserted at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field

from meshscope.collector import otlp_sql
from meshscope.collector.otlp_wire import TENANT_FIELD, WIRE, envelope, read_varint, record_body
from meshscope.selfmetrics import SelfMetrics
from meshscope.store import Store, StoreError

log = logging.getLogger("meshscope.batcher")

SIGNALS = ("traces", "logs", "metrics")
ISOLATE_AFTER = 3  # attempts before a segment the store refuses (not an outage) is taken apart
FINAL_ATTEMPTS = 3  # attempts per segment during the shutdown flush before leaving it to the next start


class BufferFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"ingest buffer is full; retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass
class FlushPolicy:
    rows: int = 200_000
    bytes: int = 40 * 1024 * 1024
    interval: float = 1.0
    max_buffered_rows: int = 2_000_000
    max_wal_bytes: int = 1024**3  # acknowledged bytes on disk awaiting the store; past this: 429
    fsync: bool = True
    sync_interval: float = 0.002
    # A trickle is held longer: every insert has a fixed cost (~0.3 s of CPU to analyse the statement), which at
    # a few hundred rows per second would keep a core half busy. Segments under `small_rows` rows flush after
    # `idle_factor` x `interval` instead.
    small_rows: int = 10_000
    idle_factor: float = 5.0


@dataclass
class Segment:
    path: str
    rows: int = 0
    bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # metrics: points per kind
    done: set[str] = field(default_factory=set)  # tables already inserted (partial progress)


def statements(signal: str, database: str) -> dict[str, str]:
    if signal == "traces":
        return {"otel_traces": otlp_sql.traces_insert(database)}
    if signal == "logs":
        return {"otel_logs": otlp_sql.logs_insert(database)}
    return otlp_sql.metrics_inserts(database)


_SEGMENT_RE = re.compile(r"(\d+)-([0-9a-f]+)\.seg")


class SignalBuffer:
    """The open segment of one signal plus the closed segments waiting for the store.

    Durability is a group commit: ``append`` writes the record and returns a future that
    resolves once an ``fsync`` covering it has finished; one fsync serves every request
    that arrived within ``sync_interval``. Acknowledge only after the future resolves.
    """

    def __init__(self, signal: str, directory: str, fsync: bool = True, sync_interval: float = 0.002) -> None:
        self.signal = signal
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.pending: list[Segment] = []
        self.current: Segment | None = None
        self._file = None
        # A fresh run id per process keeps segment names (and so dedup tokens) unique across restarts.
        self._run = os.urandom(4).hex()
        self._seq = self._next_seq()
        self.first_write: float | None = None
        self.fsync = fsync
        self.sync_interval = sync_interval
        self._waiters: list[asyncio.Future] = []
        self._dirty = asyncio.Event()
        self._file_lock = asyncio.Lock()

    def _next_seq(self) -> int:
        nums = [int(m.group(1)) for n in os.listdir(self.dir) if (m := _SEGMENT_RE.fullmatch(n))]
        return max(nums, default=0) + 1

    def recover(self) -> list[Segment]:
        """Segments left by an earlier process, oldest first, with their rows counted again."""
        found = sorted((int(m.group(1)), n) for n in os.listdir(self.dir) if (m := _SEGMENT_RE.fullmatch(n)))
        segs = []
        for _, n in found:
            path = os.path.join(self.dir, n)
            rows, kinds = count_records(self.signal, _records(path))
            segs.append(Segment(path, rows=rows, bytes=os.path.getsize(path), kinds=kinds))
        self.pending.extend(s for s in segs if s.bytes > 0)
        for s in segs:
            if s.bytes == 0:
                os.unlink(s.path)
        return segs

    @property
    def buffered_rows(self) -> int:
        cur = self.current.rows if self.current else 0
        return cur + sum(max(s.rows, 0) for s in self.pending)

    @property
    def buffered_bytes(self) -> int:
        cur = self.current.bytes if self.current else 0
        return cur + sum(s.bytes for s in self.pending)

    def append(self, record: bytes, rows: int, kinds: dict[str, int] | None = None) -> asyncio.Future | None:
        if self.current is None:
            path = os.path.join(self.dir, f"{self._seq:012d}-{self._run}.seg")
            self._seq += 1
            self._file = open(path, "ab", buffering=0)
            if self.fsync:
                _fsync_dir(self.dir)  # the new name must survive a crash too
            self.current = Segment(path)
            self.first_write = time.monotonic()
        self._file.write(record)
        seg = self.current
        seg.rows += rows
        seg.bytes += len(record)
        if kinds:
            for k, n in kinds.items():
                seg.kinds[k] = seg.kinds.get(k, 0) + n
        if not self.fsync:
            return None
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._dirty.set()
        return fut

    async def sync_loop(self) -> None:
        """Group commit: one fsync for every append that arrived during the last interval."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.sync_interval)
            self._dirty.clear()
            async with self._file_lock:
                await self._sync_current()

    async def _sync_current(self) -> None:
        waiters, self._waiters = self._waiters, []
        if self._file is not None and waiters:
            await asyncio.to_thread(os.fsync, self._file.fileno())
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def rotate(self) -> Segment | None:
        async with self._file_lock:
            seg = self.current
            if seg is None:
                return None
            if self.fsync:
                await self._sync_current()
            self._file.close()
            self._file = None
            self.current = None
            self.first_write = None
            self.pending.append(seg)
            return seg

    def due(self, policy: FlushPolicy, now: float) -> bool:
        seg = self.current
        if seg is None:
            return False
        wait = policy.interval if seg.rows >= policy.small_rows else policy.interval * policy.idle_factor
        return (
            seg.rows >= policy.rows
            or seg.bytes >= policy.bytes
            or (self.first_write is not None and now - self.first_write >= wait)
        )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Batcher:
    """Owns the buffers and the flush loop; the receivers call ``submit``."""

    def __init__(self, store: Store, data_dir: str, policy: FlushPolicy, metrics: SelfMetrics,
                 insert_workers: int = 1) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.wal_dir = os.path.join(data_dir, "wal")
        self.buffers = {
            s: SignalBuffer(s, os.path.join(self.wal_dir, s), policy.fsync, policy.sync_interval) for s in SIGNALS
        }
        self._statements = {s: statements(s, store.database) for s in SIGNALS}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.insert_workers = insert_workers
        self._workers = {s: 0 for s in SIGNALS}
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.failures_in_a_row = 0
        # Tests only: while this file exists every insert fails, as if the store were down.
        self._fault_file = os.environ.get("MESHSCOPE_TEST_STORE_FAULT_FILE")

    # -- intake --------------------------------------------------------------------------
    def check_capacity(self, signal: str) -> None:
        buf = self.buffers[signal]
        wal_bytes = sum(b.buffered_bytes for b in self.buffers.values())
        if buf.buffered_rows >= self.policy.max_buffered_rows or wal_bytes >= self.policy.max_wal_bytes:
            retry = 1 if self.failures_in_a_row == 0 else min(30, 2 ** min(self.failures_in_a_row, 5))
            raise BufferFull(retry)

    async def submit(self, signal: str, record: bytes, rows: int, kinds: dict[str, int] | None = None) -> None:
        """Append one envelope record; returns once it is durably in the WAL (acknowledgeable)."""
        buf = self.buffers[signal]
        durable = buf.append(record, rows, kinds)
        self.metrics.buffered.labels(signal).set(buf.buffered_rows)
        self.metrics.buffered_bytes.labels(signal).set(buf.buffered_bytes)
        if buf.due(self.policy, time.monotonic()):
            self._wake.set()
        if durable is not None:
            await durable

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        for signal, buf in self.buffers.items():
            old = buf.recover()
            if old:
                log.info("replaying %d %s segment(s) left by an earlier run", len(old), signal)
        self._task = asyncio.create_task(self._loop(), name="meshscope-flush")
        self._sync_tasks = [asyncio.create_task(b.sync_loop(), name=f"meshscope-wal-sync-{s}")
                            for s, b in self.buffers.items() if b.fsync]
        self._wake.set()

    async def stop(self) -> int:
        """Flush everything that was acknowledged, then stop the loop. Returns the segments left in the WAL."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        for signal, buf in self.buffers.items():
            await buf.rotate()
            await self._drain(signal, final=True)
        for t in getattr(self, "_sync_tasks", []):
            t.cancel()
        return sum(len(b.pending) for b in self.buffers.values())

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(0.25, self.policy.interval))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            for signal, buf in self.buffers.items():
                if buf.due(self.policy, now):
                    await buf.rotate()
                # Up to `insert_workers` inserts per signal at once (separate chDB connections run in parallel;
                # on 2 cores one insert already keeps both busy, so the default is 1).
                idle = sum(1 for s in buf.pending if s.path not in self._inflight)
                while idle > 0 and self._workers[signal] < self.insert_workers:
                    self._workers[signal] += 1
                    idle -= 1
                    task = asyncio.create_task(self._drain(signal))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self, signal: str, final: bool = False) -> None:
        """Insert pending segments of one signal until none is left that no other worker holds.

        A failing insert is retried with backoff. A segment the store keeps refusing for a reason that is not
        an outage (``retryable`` is false) is taken apart record by record after ``ISOLATE_AFTER`` attempts, so
        one bad request cannot hold back the others. Workers give up once shutdown starts; the final drain
        tries a few times, then leaves what is left in the WAL for the next start."""
        buf = self.buffers[signal]
        attempts: dict[str, int] = {}
        try:
            while True:
                if self._stopping and not final:
                    return
                seg = next((s for s in buf.pending if s.path not in self._inflight), None)
                if seg is None:
                    return
                self._inflight.add(seg.path)
                try:
                    await self._insert_segment(signal, seg)
                except StoreError as e:
                    self.failures_in_a_row += 1
                    self.metrics.insert_failures.labels(signal).inc()
                    n = attempts[seg.path] = attempts.get(seg.path, 0) + 1
                    if _looks_unparseable(str(e)) or (not e.retryable and n >= ISOLATE_AFTER):
                        log.warning("store refuses %s segment %s (%s); inserting its requests one by one", signal,
                                    os.path.basename(seg.path), e)
                        await self._isolate(signal, seg)
                        continue
                    if final and n >= FINAL_ATTEMPTS:
                        log.error("giving up on %s at shutdown (%s); %d segment(s) stay in %s for the next start",
                                  signal, e, len(buf.pending), buf.dir)
                        return
                    delay = 0.5 if final else min(30.0, 0.5 * 2 ** min(self.failures_in_a_row, 6))
                    log.warning("insert of %s segment %s failed (%s); retrying in %.1fs", signal,
                                os.path.basename(seg.path), e, delay)
                    await self._sleep_unless_stopping(delay, final)
                    continue
                finally:
                    self._inflight.discard(seg.path)
                self.failures_in_a_row = 0
                buf.pending.remove(seg)
                os.unlink(seg.path)
                self.metrics.buffered.labels(signal).set(buf.buffered_rows)
                self.metrics.buffered_bytes.labels(signal).set(buf.buffered_bytes)
        except Exception:  # never let a worker die silently with acknowledged data behind it
            log.exception("flush worker for %s failed; the WAL keeps the data for the next attempt", signal)
        finally:
            if not final:
                self._workers[signal] -= 1

    async def _sleep_unless_stopping(self, delay: float, final: bool) -> None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and (final or not self._stopping):
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    async def _insert_segment(self, signal: str, seg: Segment) -> None:
        wire = WIRE[signal]
        for table, sql in self._statements[signal].items():
            if table in seg.done:
                continue
            if signal == "metrics" and seg.rows >= 0:
                kind = next(k for k, t in otlp_sql.METRIC_KIND_TABLES.items() if t == table)
                if not seg.kinds.get(kind):
                    continue
            if self._fault_file and os.path.exists(self._fault_file):
                raise StoreError("injected store fault (MESHSCOPE_TEST_STORE_FAULT_FILE exists)", retryable=True)
            # The token makes a replay after a crash between insert and segment deletion a no-op.
            token = f"{os.path.basename(seg.path)}:{table}"
            t0 = time.perf_counter()
            await asyncio.to_thread(self.store.insert_wire, sql, wire.structure, wire.proto, wire.envelope, seg.path,
                                    token)
            self.metrics.insert_seconds.labels(signal).observe(time.perf_counter() - t0)
            seg.done.add(table)
            if signal == "metrics":
                kind = next(k for k, t in otlp_sql.METRIC_KIND_TABLES.items() if t == table)
                n = seg.kinds.get(kind, 0)
            else:
                n = seg.rows
            if n > 0:
                self.metrics.inserted.labels(signal, table).inc(n)

    async def _isolate(self, signal: str, seg: Segment) -> None:
        """The store refuses a segment: bisect it until the requests it refuses are found, insert the rest.

        Halves are named after their record range, so a replay after a crash splits the same way and the
        dedup tokens still match. A single refused request is re-encoded once (``sanitize_record``) and
        otherwise moved to ``wal/quarantine``."""
        records = list(_records(seg.path))
        await self._insert_range(signal, seg, records, 0, len(records))
        self.buffers[signal].pending.remove(seg)
        os.unlink(seg.path)

    async def _insert_range(self, signal: str, seg: Segment, records: list[bytes], lo: int, hi: int) -> None:
        if lo >= hi:
            return
        piece = _write_piece(signal, f"{seg.path}.{lo}-{hi}.piece", records[lo:hi])
        try:
            await self._insert_segment(signal, piece)
            return
        except StoreError as e:
            error = e
        finally:
            os.unlink(piece.path)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            await self._insert_range(signal, seg, records, lo, mid)
            await self._insert_range(signal, seg, records, mid, hi)
            return
        # upb accepted it but ClickHouse does not: typically a known field sent with another wire type, which
        # upb keeps as an unknown field. Re-encode without unknown fields and try once more.
        try:
            clean = _write_piece(signal, f"{seg.path}.{lo}.clean", [sanitize_record(signal, records[lo])])
            try:
                await self._insert_segment(signal, clean)
                return
            finally:
                os.unlink(clean.path)
        except (StoreError, ValueError) as e:
            qdir = os.path.join(self.wal_dir, "quarantine")
            os.makedirs(qdir, exist_ok=True)
            log.error("quarantining one %s request the store cannot read: %s / %s", signal, error, e)
            self.metrics.quarantined.labels(signal).inc()
            with open(os.path.join(qdir, f"{signal}-{os.path.basename(seg.path)}.{lo}"), "wb") as f:
                f.write(records[lo])


def _write_piece(signal: str, path: str, records: list[bytes]) -> Segment:
    with open(path, "wb") as f:
        for rec in records:
            f.write(rec)
    rows, kinds = count_records(signal, records)
    return Segment(path, rows=rows, bytes=sum(len(r) for r in records), kinds=kinds)


def count_records(signal: str, records) -> tuple[int, dict[str, int]]:
    """Rows the store will take from these envelope records (the receivers' rules), per metric kind too."""
    from meshscope.collector import validate

    rows = 0
    kinds: dict[str, int] = {}
    for rec in records:
        try:
            c = validate.count(signal, validate.parse(signal, record_body(rec)))
        except validate.DecodeFailed:
            continue
        rows += c.accepted
        for k, n in c.kinds.items():
            kinds[k] = kinds.get(k, 0) + n
    return rows, kinds


def _records(path: str):
    """Yield each length-delimited record of a segment (with its length prefix)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        got = read_varint(data, pos)
        if got is None:
            return  # torn tail write: the request was never acknowledged
        n, body_start = got
        end = body_start + n
        if end > len(data):
            return  # torn tail write
        yield data[pos:end]
        pos = end


def sanitize_record(signal: str, record: bytes) -> bytes:
    """Re-encode one envelope record through upb, dropping unknown fields (slow path, rare)."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    from meshscope.collector import validate

    msg = validate.parse(signal, record_body(record))
    # the envelope's tenant is the last field 15 (the receivers keep no top-level unknown fields of their own)
    tenants = [f.data for f in UnknownFieldSet(msg) if f.field_number == TENANT_FIELD and isinstance(f.data, bytes)]
    if not tenants:
        raise ValueError("record has no tenant field")
    tenant = tenants[-1].decode(errors="replace")
    msg.DiscardUnknownFields()
    return envelope(msg.SerializeToString(), tenant)


def _looks_unparseable(msg: str) -> bool:
    m = msg.lower()
    return "protobuf" in m or "cannot parse" in m or "cannot_parse" in m
