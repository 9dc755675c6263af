"""``meshscope graph``: output formats (table, json, dot, svg) against a real HTTP server running the graph routes,
the formatting functions on their own, and errors as one line on stderr with exit code 1."""
from __future__ import annotations

import argparse
import asyncio
import threading
import xml.etree.ElementTree as ET

import orjson
import pytest
from aiohttp import web

from meshscope.query.graph.model import GraphOptions, build_graph
from meshscope.query.graph.types import EdgeStats, NodeIdentity
from meshscope.query.graph_api import GraphService
from meshscope.query.graphcli import add_graph_subparser, edge_rows, format_dot, format_table, run_graph

W = 600.0


def wl(name, app, ns="bookinfo"):
    return NodeIdentity(cluster="east", namespace=ns, workload=name, app=app, version="v1", service=app)


PP, RV, DB = wl("productpage-v1", "productpage"), wl("reviews-v1", "reviews"), NodeIdentity(
    cluster="east", namespace="bookinfo", service="mysql", kind="service", virtual="db")


def edges():
    return [
        EdgeStats(NodeIdentity(kind="unknown"), PP, "http", W, requests=600, responses={"200": 600}),
        EdgeStats(PP, RV, "http", W, requests=1200, responses={"200": 1140, "503": 60}, latency_ms={"p95": 12.0},
                  mtls_requests=1200),
        EdgeStats(RV, DB, "tcp", W, requests=3, bytes_sent=600 * 4096),
    ]


class ThreadServer:
    """The graph routes on a real socket, served from a thread (the CLI blocks in urllib)."""

    def __init__(self, fetch):
        self.calls = []
        self.svc = GraphService("STORE", self._record(fetch))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _record(self, fetch):
        def f(store, tenant, start_ns, end_ns, **kw):
            self.calls.append(dict(tenant=tenant, start_ns=start_ns, end_ns=end_ns, **kw))
            return fetch()
        return f

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.add_routes(self.svc.routes())
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        async def down():
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.svc.close()


@pytest.fixture
def server():
    srv = ThreadServer(edges)
    yield srv
    srv.stop()


def cli(*argv):
    parser = argparse.ArgumentParser(prog="meshscope")
    sub = parser.add_subparsers(dest="command")
    add_graph_subparser(sub)
    return run_graph(parser.parse_args(["graph", *argv]))


def doc(**opts):
    return build_graph(edges(), GraphOptions(**opts)).to_kiali_json()


# ------------------------------------------------------------------------------------------- formatting
def test_table_rows_and_alignment():
    rows = edge_rows(doc())
    assert rows == [
        ["bookinfo/productpage-v1", "bookinfo/reviews-v1", "http", "2.00rps", "5.0%", "12ms", "100%", "Degraded"],
        ["bookinfo/reviews-v1", "bookinfo/mysql (se)", "tcp", "4.00kps", "-", "-", "-", "Healthy"],
        ["unknown", "bookinfo/productpage-v1", "http", "1.00rps", "0%", "-", "-", "Healthy"],
    ]
    text = format_table(doc())
    lines = text.splitlines()
    assert lines[0].split() == ["SOURCE", "DESTINATION", "PROTOCOL", "RATE", "ERR", "P95", "MTLS", "HEALTH"]
    assert len(lines) == 4
    # columns line up: every row has its arrow and its protocol at the same offsets
    assert len({ln.index("\u2192") for ln in lines[1:]}) == 1
    assert len({ln.index(" http ") if " http " in ln else ln.index(" tcp ") for ln in lines[1:]}) == 1
    assert format_table(doc(), "avg").splitlines()[0].split()[5] == "AVG"


def test_dot_output_is_graphviz_with_escaping():
    evil = NodeIdentity(cluster="east", namespace="bookinfo", workload='we"ird\\name\n', app="x", version="v1",
                        service="x")
    d = build_graph(edges() + [EdgeStats(evil, PP, "http", W, requests=60, responses={"200": 60})],
                    GraphOptions()).to_kiali_json()
    text = format_dot(d)
    assert text.startswith("digraph meshscope {\n  rankdir=LR;")
    assert text.rstrip().endswith("}")
    assert '"bookinfo/we\\"ird\\\\name\\n"' in text
    assert "shape=box" not in text and "shape=ellipse" in text and "shape=trapezium" in text
    assert 'label="mTLS 2.00rps / 5.0% / 12ms"' in text
    assert text.count(" -> ") == 4
    # every statement line is balanced (no quote left open by a name)
    for line in text.splitlines()[1:-1]:
        assert line.replace('\\"', "").count('"') % 2 == 0


# ------------------------------------------------------------------------------------------- against a server
def test_table_against_a_server(server, capsys):
    assert cli("--addr", server.url, "-n", "bookinfo,shop", "-n", "more", "--since", "1h", "--type", "app",
               "--org-id", "team-b") == 0
    out = capsys.readouterr()
    assert "bookinfo/productpage" in out.out and "\u2192" in out.out
    c = server.calls[-1]
    assert c["tenant"] == "team-b" and c["namespaces"] == ["bookinfo", "shop", "more"]
    assert c["end_ns"] - c["start_ns"] == 3600 * 10**9 and c["source"] == "auto"


def test_json_dot_and_svg_against_a_server(server, capsys):
    assert cli("--addr", server.url, "-o", "json", "--type", "versionedApp") == 0
    d = orjson.loads(capsys.readouterr().out)
    assert d["graphType"] == "versionedApp" and d["elements"]["edges"]
    assert cli("--addr", server.url.replace("http://", ""), "-o", "dot") == 0
    assert capsys.readouterr().out.startswith("digraph meshscope {")
    assert cli("--addr", server.url, "-o", "svg", "--query-time", "1750000000") == 0
    root = ET.fromstring(capsys.readouterr().out)
    assert root.get("data-timestamp") == "1750000000"


def test_empty_graph_says_so_on_stderr(capsys):
    srv = ThreadServer(list)
    try:
        assert cli("--addr", srv.url) == 0
    finally:
        srv.stop()
    out = capsys.readouterr()
    assert out.err == "no traffic in this window\n"
    assert out.out.split() == ["SOURCE", "DESTINATION", "PROTOCOL", "RATE", "ERR", "P95", "MTLS", "HEALTH"]


def test_errors_are_one_line_and_exit_1(server, capsys):
    assert cli("--addr", server.url, "--since", "forever") == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: invalid duration 'forever'") and err.count("\n") == 1 and "(status 400)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("addr,needle", [("http://127.0.0.1:1", "connection refused"),
                                         ("http://[::1", "invalid --addr")])
def test_unreachable_server(addr, needle, capsys):
    assert cli("--addr", addr) == 1
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_server_failure_is_reported(capsys):
    def broken():
        raise RuntimeError("store went away")
    srv = ThreadServer(broken)
    try:
        assert cli("--addr", srv.url, "-o", "svg") == 1
    finally:
        srv.stop()
    err = capsys.readouterr().err
    assert "store went away" in err and "(status 500)" in err and err.count("\n") == 1


def test_env_addr(monkeypatch, server, capsys):
    monkeypatch.setenv("MESHSCOPE_ADDR", server.url)
    assert cli("-o", "json") == 0
    assert orjson.loads(capsys.readouterr().out)["graphType"] == "workload"
