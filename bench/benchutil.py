"""What every benchmark in bench/ shares: the machine it ran on, the load, and waiting for merges to settle.

Benchmarks run as scripts (``python bench/x.py``), so this module is imported from the script's own folder.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time

BASE_PACKAGES = ("chdb", "chdb-core", "clickhouse-connect")


def _first_field(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(prefix)), "")
    except OSError:
        return ""


def machine_info(packages: tuple[str, ...] = ()) -> dict:
    """CPU model and count, memory, Python and the versions of the packages that decide the figures."""
    from importlib import metadata

    versions = {}
    for pkg in BASE_PACKAGES + tuple(packages):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    mem_kib = _first_field("/proc/meminfo", "MemTotal:").split(" ")[0]
    return dict(nproc=os.cpu_count(), sched_cpus=len(os.sched_getaffinity(0)),
                cpu_model=_first_field("/proc/cpuinfo", "model name"),
                mem_gib=round(int(mem_kib) / 2**20, 1) if mem_kib.isdigit() else None,
                python=platform.python_version(), platform=platform.platform(), versions=versions,
                chdb_version=versions["chdb"], date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def wait_merges(store, log, timeout: float = 600.0) -> float:
    """Let background merges of freshly generated parts settle so they do not run under the timed queries."""
    t0 = time.perf_counter()
    quiet = 0
    while time.perf_counter() - t0 < timeout:
        n = int(store.query("SELECT count() FROM system.merges").rows[0][0])
        quiet = quiet + 1 if n == 0 else 0
        if quiet >= 3:
            break
        time.sleep(1.0)
    waited = time.perf_counter() - t0
    if waited > 5:
        log(f"# waited {waited:.0f}s for background merges")
    return waited
