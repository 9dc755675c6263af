"""Shared fixtures: the real embedded store, and real ``meshscope serve`` processes.

chDB opens one data directory per process, so every in-process test shares the
session's ``store``; tests that need a running server start ``meshscope serve`` as a
subprocess on free ports with its own directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pytest

from meshscope.schema import apply_schema
from meshscope.store import EmbeddedStore


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    st = EmbeddedStore(str(tmp_path_factory.mktemp("store")))
    apply_schema(st)
    yield st
    st.close()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen, so the kernel cannot hand one out twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    data_dir: str
    otlp_port: int
    http_port: int
    proc: subprocess.Popen
    log_path: str
    args: list[str] = field(default_factory=list)
    grpc_port: int = 0
    zipkin_port: int = 0

    @property
    def otlp_url(self) -> str:
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"meshscope serve did not exit within {timeout}s:\n{self.log()}")
        return self.proc.returncode


def start_server(data_dir: str, *extra: str, log_path: str | None = None, wait: bool = True) -> Server:
    # A chosen free port can still be taken by another process before the server binds it;
    # retry on a fresh set rather than fail the test for a race outside the code under test.
    for attempt in range(3):
        try:
            return _start_server_once(data_dir, *extra, log_path=log_path, wait=wait)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(AssertionError):
    pass


def _start_server_once(data_dir: str, *extra: str, log_path: str | None, wait: bool) -> Server:
    otlp_port, http_port, grpc_port, zipkin_port = free_ports(4)
    log_path = log_path or os.path.join(data_dir + ".log")
    args = [sys.executable, "-m", "meshscope", "serve", "--data", data_dir, "--host", "127.0.0.1",
            "--otlp-http-port", str(otlp_port), "--http-port", str(http_port), "--otlp-grpc-port", str(grpc_port),
            "--zipkin-port", str(zipkin_port), *extra]
    logf = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
    srv = Server(data_dir, otlp_port, http_port, proc, log_path, args, grpc_port, zipkin_port)
    if wait:
        wait_ready(srv)
    return srv


def wait_ready(srv: Server, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if srv.proc.poll() is not None:
            log = srv.log()
            err = PortTaken if "Address already in use" in log else AssertionError
            raise err(f"meshscope serve exited with {srv.proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(srv.http_url + "/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    srv.stop(signal.SIGKILL)
    raise AssertionError(f"meshscope serve not ready after {timeout}s:\n{srv.log()}")


def read_store(data_dir: str, sql: str) -> list[tuple]:
    """Query a stopped server's data directory from a fresh process (chDB: one path per process)."""
    code = (
        "import sys, json, orjson\n"
        "from meshscope.store import EmbeddedStore\n"
        "st = EmbeddedStore(sys.argv[1])\n"
        "r = st.query(sys.argv[2])\n"
        "sys.stdout.buffer.write(orjson.dumps([list(row) for row in r.rows], default=str))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, data_dir, sql], capture_output=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(out.stderr.decode(errors="replace"))
    import orjson

    return [tuple(r) for r in orjson.loads(out.stdout)]


@pytest.fixture
def server_factory(tmp_path):
    started: list[Server] = []

    def make(*extra: str, name: str = "data", wait: bool = True) -> Server:
        srv = start_server(str(tmp_path / name), *extra, wait=wait)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL, timeout=30)


@pytest.fixture
def server(server_factory):
    """A running ``meshscope serve`` with a short flush interval."""
    return server_factory("--flush-interval", "0.2")


# ---------------------------------------------------------------------------------------------------------------
# Browser tests: one `meshscope serve --demo` and one headless Debian Chromium (driven by Playwright) per session.

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts", "ui")
CHROMIUM = os.environ.get("MESHSCOPE_TEST_CHROMIUM", "/usr/bin/chromium")


def _get_json(url: str, timeout: float = 5):
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """``meshscope serve --demo`` with enough traffic stored that every page has something to show."""
    srv = start_server(str(tmp_path_factory.mktemp("demo") / "data"), "--demo", "--flush-interval", "0.5")
    deadline = time.time() + 120
    seen = {}
    try:
        while time.time() < deadline:
            try:
                graph = _get_json(srv.http_url + "/api/graph?duration=5m")
                seen["nodes"] = len(graph.get("elements", {}).get("nodes", []))
                traces = _get_json(srv.http_url + "/api/traces?service=productpage&lookback=1h&limit=5")
                seen["traces"] = len(traces.get("data", []))
                q = urllib.parse.urlencode({"query": '{service_name="productpage"}', "limit": "5"})
                logs = _get_json(srv.http_url + "/loki/api/v1/query_range?" + q)
                seen["log streams"] = len(logs["data"]["result"])
                # Dashboards rate() Istio's counters per service: wait until every bookinfo service has two samples.
                q = urllib.parse.urlencode({"query": 'count(sum by (destination_service_name) '
                                            '(rate(istio_requests_total{reporter="destination"}[1m])))'})
                rated = _get_json(srv.http_url + "/api/v1/query?" + q)["data"]["result"]
                seen["rated services"] = int(float(rated[0]["value"][1])) if rated else 0
                if seen["nodes"] >= 4 and seen["traces"] and seen["log streams"] and seen["rated services"] >= 4:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"demo data did not arrive within 120s ({seen}):\n{srv.log()[-3000:]}")
        yield srv
    finally:
        srv.stop()


class UiSession:
    """One browser page that records console errors and uncaught exceptions; a test fails on any it did not allow."""

    def __init__(self, page, base_url: str, name: str) -> None:
        import re

        self.page, self.base_url, self.name = page, base_url, name
        self.errors: list[str] = []
        self._allowed: list = []
        self._re = re
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def allow(self, pattern: str) -> None:
        """Expected errors, e.g. Chromium's own log line for a 400 answer a test provoked on purpose."""
        self._allowed.append(self._re.compile(pattern))

    def goto(self, path: str):
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")
        return self.page

    def shot(self, label: str = "") -> str:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, f"{self.name}{'-' + label if label else ''}.png")
        self.page.screenshot(path=path, full_page=True)
        return path

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self._allowed)]


@pytest.fixture(scope="module")
def browser():
    # Module scope: Playwright's sync API keeps an event loop running in this thread while it is open, which
    # would break later tests that call asyncio.run(); one Chromium per UI test file costs about a second.
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium package, as .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def ui(browser, demo_server, request):
    """A 1280×800 page on the demo server. Screenshots land in test-artifacts/ui/; console errors fail the test."""
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(20_000)
    # two cores shared with the demo's ingest: assertions get the actions' 20 s, not Playwright's 5 s
    expect.set_options(timeout=20_000)
    page = ctx.new_page()
    session = UiSession(page, demo_server.http_url, request.node.name)
    yield session
    try:
        session.shot("final")
    finally:
        ctx.close()
        expect.set_options(timeout=5_000)  # Playwright's default
    errors = session.unexpected_errors()
    assert not errors, "browser errors:\n" + "\n".join(errors)
