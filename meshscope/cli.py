"""The ``meshscope`` command.

``meshscope serve`` runs everything in one asyncio process on the embedded store (or a
server with ``--clickhouse``): the OTLP/HTTP receiver and the query HTTP server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from meshscope import config

log = logging.getLogger("meshscope")


def _duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> int:
    try:
        return config.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    try:
        p = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port {p} out of range 0-65535")
    return p


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("MESHSCOPE_DATA", "./meshscope-data"),
                   help="embedded store directory (default ./meshscope-data)")
    p.add_argument("--clickhouse", default=os.environ.get("MESHSCOPE_CLICKHOUSE"),
                   help="use a ClickHouse server instead: http(s)://user:pass@host:8123/db")
    p.add_argument("--retention", type=_duration, default=7 * 86400.0, help="keep data this long (default 7d)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshscope", description="Observability for service meshes.")
    parser.add_argument("--log-level", default=os.environ.get("MESHSCOPE_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run collector and query server in one process")
    add_store_args(serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--otlp-http-port", type=_port, default=4318, help="OTLP/HTTP receiver (default 4318)")
    serve.add_argument("--otlp-grpc-port", type=_port, default=4317, help="OTLP/gRPC receiver (default 4317)")
    serve.add_argument("--zipkin-port", type=_port, default=9411, help="Zipkin v2 receiver (default 9411)")
    serve.add_argument("--http-port", type=_port, default=3100, help="query API, UI and /metrics (default 3100)")
    serve.add_argument("--max-request-bytes", type=_size, default=32 * 1024 * 1024,
                       help="largest accepted request body, also after gzip inflation (default 32MiB)")
    serve.add_argument("--flush-rows", type=int, default=200_000, help="flush a buffer at this many rows")
    serve.add_argument("--flush-bytes", type=_size, default=40 * 1024 * 1024,
                       help="flush a buffer at this size (default 40MiB: bounds the memory of one insert)")
    serve.add_argument("--flush-interval", type=_duration, default=1.0,
                       help="flush a buffer this long after its first write (default 1s)")
    serve.add_argument("--insert-workers", type=int, default=1,
                       help="concurrent inserts per signal (default 1: one chDB insert already uses several "
                            "threads; a second one added memory, not throughput, on 2 cores)")
    serve.add_argument("--max-buffered-rows", type=int, default=2_000_000,
                       help="answer 429 once this many acknowledged rows await the store")
    serve.add_argument("--wal-max-bytes", type=_size, default=1024**3,
                       help="answer 429 once this much acknowledged data awaits the store (default 1GiB)")
    serve.add_argument("--demo", action="store_true",
                       help="also run the simulated bookinfo mesh (meshscope demo) against this server")
    serve.add_argument("--promql-cache-freshness", type=_duration, default=600.0,
                       help="range-query steps older than this are answered from the results cache at the "
                            "next identical request (default 10m, as Mimir's and Loki's; 0 turns it off)")
    serve.add_argument("--wal-fsync", action=argparse.BooleanOptionalAction, default=True,
                       help="acknowledge only after fsync (group commit); --no-wal-fsync trades crash safety "
                            "for speed (data still survives a killed process, not a power loss)")
    from meshscope.demo import add_demo_arguments

    demo = sub.add_parser("demo", help="send a simulated Istio bookinfo mesh's telemetry over OTLP")
    add_demo_arguments(demo)
    from meshscope.query.logcli import add_logs_parser

    add_logs_parser(sub)
    from meshscope.query.graphcli import add_graph_subparser

    add_graph_subparser(sub)
    from meshscope.query.tracecli import add_traces_subparser

    add_traces_subparser(sub)
    from meshscope.query.promcli import add_metrics_subparser

    add_metrics_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "serve":
        from meshscope.server import ServeOptions, run_serve

        if args.flush_rows < 1 or args.max_buffered_rows < 1 or not 1 <= args.insert_workers <= 16:
            parser.error("--flush-rows and --max-buffered-rows must be positive, --insert-workers 1-16")
        opts = ServeOptions(
            data_dir=args.data, clickhouse_url=args.clickhouse, retention_days=max(1, round(args.retention / 86400)),
            host=args.host, otlp_http_port=args.otlp_http_port, otlp_grpc_port=args.otlp_grpc_port,
            zipkin_port=args.zipkin_port, http_port=args.http_port,
            max_request_bytes=args.max_request_bytes, flush_rows=args.flush_rows, flush_bytes=args.flush_bytes,
            flush_interval=args.flush_interval, max_buffered_rows=args.max_buffered_rows,
            wal_max_bytes=args.wal_max_bytes, wal_fsync=args.wal_fsync, demo=args.demo,
            insert_workers=args.insert_workers, promql_cache_freshness=args.promql_cache_freshness,
        )
        return run_serve(opts)
    if args.command == "demo":
        from meshscope.demo import options_from_args, run_demo

        stats = run_demo(options_from_args(args))
        print(stats.summary())
        return 0 if stats.export_failures == 0 else 1
    if args.command == "logs":
        from meshscope.query.logcli import run_logs

        return run_logs(args)
    if args.command == "graph":
        from meshscope.query.graphcli import run_graph

        return run_graph(args)
    if args.command == "traces":
        from meshscope.query.tracecli import run_traces

        return run_traces(args)
    if args.command == "metrics":
        from meshscope.query.promcli import run_metrics

        return run_metrics(args)
    parser.print_help()
    return 2


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
