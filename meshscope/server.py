"""``meshscope serve``: wire store, schema, batcher, receivers and query API into one event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from aiohttp import web

from meshscope.collector.batcher import Batcher, FlushPolicy
from meshscope.collector.otlp_grpc import OtlpGrpcReceiver
from meshscope.collector.loki_push import LokiPushReceiver
from meshscope.collector.otlp_http import OtlpHttpReceiver
from meshscope.collector.zipkin import ZipkinReceiver
from meshscope.query.graph.edges import EdgeRollup
from meshscope.query.graph_api import GraphService
from meshscope.query.http_api import QueryApi
from meshscope.query.prom_api import PromApi
from meshscope.query.traces_api import TracesService
from meshscope.query.logql.engine import LogQLEngine
from meshscope.query.loki_api import LokiApi
from meshscope.schema import apply_schema
from meshscope.selfmetrics import SelfMetrics
from meshscope.selfscrape import SelfScrape
from meshscope.ui.routes import UiRoutes
from meshscope.store import StoreError, open_store

log = logging.getLogger("meshscope.server")


@dataclass
class ServeOptions:
    data_dir: str = "./meshscope-data"
    clickhouse_url: str | None = None
    retention_days: int = 7
    host: str = "0.0.0.0"
    otlp_http_port: int = 4318
    otlp_grpc_port: int = 4317
    zipkin_port: int = 9411
    http_port: int = 3100
    max_request_bytes: int = 32 * 1024 * 1024
    flush_rows: int = 200_000
    flush_bytes: int = FlushPolicy.bytes
    flush_interval: float = 1.0
    max_buffered_rows: int = 2_000_000
    wal_max_bytes: int = 1024**3
    wal_fsync: bool = True
    demo: bool = False
    insert_workers: int = 1
    promql_cache_freshness: float = 600.0


async def serve(opts: ServeOptions, stop: asyncio.Event) -> None:
    metrics = SelfMetrics()
    store = await asyncio.to_thread(open_store, opts.data_dir, opts.clickhouse_url)
    os.makedirs(opts.data_dir, exist_ok=True)
    try:
        cluster = getattr(store, "cluster", "")
        await asyncio.to_thread(apply_schema, store, opts.retention_days, cluster)
        policy = FlushPolicy(rows=opts.flush_rows, bytes=opts.flush_bytes, interval=opts.flush_interval,
                             max_buffered_rows=opts.max_buffered_rows, max_wal_bytes=opts.wal_max_bytes,
                             fsync=opts.wal_fsync)
        batcher = Batcher(store, opts.data_dir, policy, metrics, insert_workers=opts.insert_workers)
        await batcher.start()
        receiver = OtlpHttpReceiver(batcher, metrics, opts.max_request_bytes)
        grpc_receiver = OtlpGrpcReceiver(batcher, metrics, opts.max_request_bytes)
        zipkin = ZipkinReceiver(batcher, metrics, opts.max_request_bytes)
        api = QueryApi(metrics)
        loki = LokiPushReceiver(batcher, metrics, opts.max_request_bytes)
        api.extra_routes += loki.routes()
        loki_api = LokiApi(LogQLEngine(store), running=lambda: api.ready)
        api.extra_routes += loki_api.routes()
        graph_api = GraphService(store)
        api.extra_routes += graph_api.routes()
        traces_api = TracesService(store, max_range_s=opts.retention_days * 86400)
        api.extra_routes += traces_api.routes()
        prom_api = PromApi(store, retention=f"{opts.retention_days}d",
                           results_cache_freshness_s=opts.promql_cache_freshness)
        api.extra_routes += prom_api.routes()
        api.extra_routes += UiRoutes().routes()

        runners, sites = [], []
        inflight = InflightRequests()
        apps = ((receiver.app(), opts.otlp_http_port), (zipkin.app(), opts.zipkin_port), (api.app(), opts.http_port))
        for app, port in apps:
            app.middlewares.append(inflight.middleware)
            # The receiver inflates gzip itself, within --max-request-bytes; aiohttp's own decoding has no limit.
            runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                                   shutdown_timeout=2.0)
            await runner.setup()
            site = web.TCPSite(runner, opts.host, port, reuse_address=True)
            await site.start()
            runners.append(runner)
            sites.append(site)
        await grpc_receiver.start(opts.host, opts.otlp_grpc_port)
        api.ready = True
        # Per-minute service-graph edges from spans, recomputed for the last minutes so late spans count.
        rollup_task = asyncio.create_task(EdgeRollup(store).run(stop), name="edge-rollup")
        # meshscope's own /metrics, stored like any OTLP metrics so the self-monitoring dashboard can chart them
        self_task = asyncio.create_task(SelfScrape(metrics, batcher).run(stop), name="self-scrape")
        demo = None
        if opts.demo:
            from meshscope.demo import DemoOptions, start_demo_thread

            demo = start_demo_thread(DemoOptions(otlp=f"http://127.0.0.1:{opts.otlp_http_port}"))
            log.info("demo traffic: a simulated bookinfo mesh is sending to this server")
        log.info("meshscope serving on %s: OTLP/HTTP :%d, OTLP/gRPC :%d, Zipkin :%d, query :%d, store %s", opts.host,
                 opts.otlp_http_port, opts.otlp_grpc_port, opts.zipkin_port, opts.http_port, store.describe())
        await stop.wait()
        log.info("shutting down: refusing new data, flushing buffers")
        if demo is not None:
            demo_thread, demo_stop = demo
            demo_stop.set()
            await asyncio.to_thread(demo_thread.join, 30)  # its final flush still reaches us
        receiver.accepting = False
        grpc_receiver.accepting = False
        zipkin.accepting = False
        loki.accepting = False
        api.ready = False
        # Stop listening, let requests already being read or answered finish, then close the connections.
        for site in sites:
            await site.stop()
        await inflight.drained(timeout=15)
        for runner in runners:
            await runner.cleanup()
        await grpc_receiver.stop(5)
        try:
            await asyncio.wait_for(rollup_task, 30)  # it ends at stop; a run in progress finishes first
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - never block the flush of buffers
            log.warning("edge rollup did not stop cleanly: %s", e)
        try:
            await asyncio.wait_for(self_task, 10)
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001
            log.warning("self-monitoring did not stop cleanly: %s", e)
        loki_api.close()
        graph_api.close()
        traces_api.close()
        prom_api.close()
        left = await batcher.stop()
        if left:
            log.warning("the store did not take everything: %d segment(s) stay in the WAL and are inserted at the "
                        "next start", left)
        else:
            log.info("all acknowledged data is in the store; bye")
    finally:
        store.close()


class InflightRequests:
    """Counts requests being handled, so shutdown can wait for uploads that already started."""

    def __init__(self) -> None:
        self.count = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.count += 1
        try:
            return await handler(request)
        finally:
            self.count -= 1

    async def drained(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


def run_serve(opts: ServeOptions) -> int:
    from meshscope.cli import install_signal_handlers

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(asyncio.get_running_loop(), stop)
        try:
            await serve(opts, stop)
        except StoreError as e:
            log.error("%s", e)
            return 1
        except OSError as e:
            log.error("cannot start: %s", e)
            return 1
        return 0

    return asyncio.run(main())
