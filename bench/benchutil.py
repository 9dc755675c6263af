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


# ------------------------------------------------------------------------------------------------ cached data sets
MAX_AGE_NS = 6 * 24 * 3600 * 10**9  # the store's default retention is 7 days: older data would be TTL'd away


def remove(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def open_cached(data_dir: str, want: dict, generate, log, regenerate: bool = False,
                extra_files: tuple[str, ...] = ()):
    """A benchmark's generated data set, reused while its manifest still matches ``want``.

    ``data_dir`` holds ``store/`` (an embedded store), ``manifest.json`` and any ``extra_files``; the manifest is
    written last, so its presence means a complete data set. ``generate(store)`` fills a fresh store and returns
    the manifest, which must contain ``want``'s items, ``anchor_ns`` and ``generated_at``. Returns
    (store, manifest, generated)."""
    import json

    from meshscope.store import EmbeddedStore

    data_dir = os.path.abspath(data_dir)
    man_path = os.path.join(data_dir, "manifest.json")
    store_dir = os.path.join(data_dir, "store")
    man = None
    if os.path.exists(man_path) and not regenerate:
        with open(man_path) as f:
            man = json.load(f)
        why = None
        differ = {k: man.get(k) for k, v in want.items() if man.get(k) != v}
        if differ:
            why = f"parameters differ ({differ})"
        elif time.time_ns() - man["anchor_ns"] > MAX_AGE_NS:
            why = "older than 6 days (the store's TTL is 7)"
        elif not os.path.isdir(store_dir) or not all(os.path.exists(os.path.join(data_dir, f)) for f in extra_files):
            why = "files missing"
        if why:
            log(f"# cached data not reused: {why}")
            man = None
    if man is not None:
        log(f"# reusing {data_dir} (generated {man['generated_at']})")
        return EmbeddedStore(store_dir), man, False
    os.makedirs(data_dir, exist_ok=True)
    remove(man_path)
    remove(store_dir)
    store = EmbeddedStore(store_dir)
    man = generate(store)
    write_manifest(data_dir, man)
    return store, man, True


def write_manifest(data_dir: str, man: dict) -> None:
    import json

    path = os.path.join(os.path.abspath(data_dir), "manifest.json")
    with open(path + ".tmp", "w") as f:
        json.dump(man, f, indent=2)
    os.replace(path + ".tmp", path)


def write_json(path: str | None, out: dict) -> None:
    """The benchmark's figures and context as JSON, for scripts that compare runs (no file when path is empty)."""
    import json
    import sys

    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"# wrote {path}", file=sys.stderr, flush=True)
