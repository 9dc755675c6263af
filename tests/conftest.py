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
