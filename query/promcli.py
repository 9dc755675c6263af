"""``meshscope metrics query|query-range|series|labels``: PromQL against a meshscope server, like promtool's
``query instant|range|series|labels``.

The server evaluates (``/api/v1/...``); this side parses flags, formats and turns every failure into one line on
stderr with exit code 1. Times: RFC3339, unix seconds, ``now``, or ``now-1h``-style relative to now.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

from meshscope.query.cliutil import CliError, run_guarded

DEFAULT_ADDR = "http://localhost:3100"
_REL = re.compile(r"now(?:-(\d+(?:\.\d+)?)(ms|s|m|h|d|w))?")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_metrics_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``meshscope metrics``."""
    p = subparsers.add_parser("metrics", help="query metrics with PromQL (Prometheus API of a meshscope server)")
    sub = p.add_subparsers(dest="metrics_command", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--addr", default=os.environ.get("MESHSCOPE_ADDR") or DEFAULT_ADDR,
                        help="server address (env MESHSCOPE_ADDR; default %(default)s)")
        sp.add_argument("--org-id", default=os.environ.get("MESHSCOPE_ORG_ID"),
                        help="tenant, sent as X-Scope-OrgID (env MESHSCOPE_ORG_ID)")
        sp.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="output format (default %(default)s)")

    q = sub.add_parser("query", help="instant query (promtool query instant)")
    q.add_argument("expr", help="PromQL expression")
    q.add_argument("--time", help="evaluation time (RFC3339, unix seconds, now, now-5m; default now)")
    common(q)
    r = sub.add_parser("query-range", help="range query (promtool query range)")
    r.add_argument("expr", help="PromQL expression")
    r.add_argument("--start", help="start (default: end - 1h)")
    r.add_argument("--end", help="end (default now)")
    r.add_argument("--step", help="resolution, e.g. 15s, 1m or seconds (default: range / 250, at least 1s)")
    common(r)
    s = sub.add_parser("series", help="series matching selectors (promtool query series)")
    s.add_argument("--match", action="append", default=[], required=True, metavar="SELECTOR",
                   help="series selector (repeatable)")
    s.add_argument("--start", help="start (default: all time)")
    s.add_argument("--end", help="end (default: all time)")
    common(s)
    lb = sub.add_parser("labels", help="label names, or the values of one label (promtool query labels)")
    lb.add_argument("name", nargs="?", help="label name (omit to list label names)")
    lb.add_argument("--match", action="append", default=[], metavar="SELECTOR", help="only series matching this")
    lb.add_argument("--start", help="start (default: all time)")
    lb.add_argument("--end", help="end (default: all time)")
    common(lb)
    return p


# ------------------------------------------------------------------------------------------------ flags
def parse_time_flag(value: str, now: float | None = None) -> str:
    """A time flag as the API parameter (unix seconds, or RFC3339 passed through)."""
    now = time.time() if now is None else now
    v = value.strip()
    m = _REL.fullmatch(v)
    if m:
        ago = float(m.group(1)) * _UNIT_S[m.group(2)] if m.group(1) else 0.0
        return f"{now - ago:.3f}"
    try:
        t = float(v)
    except ValueError:
        pass
    else:
        if not math.isfinite(t):
            raise CliError(f"invalid time {value!r}")
        return v
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", v):
        return v
    raise CliError(f"invalid time {value!r}: use RFC3339, unix seconds, now or now-<duration>")


def _seconds(api_time: str) -> float:
    try:
        return float(api_time)
    except ValueError:
        from datetime import datetime
        return datetime.fromisoformat(api_time.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()


def parse_step(value: str) -> str:
    v = value.strip()
    try:
        if float(v) > 0:
            return v
    except ValueError:
        if re.fullmatch(r"(\d+(y|w|d|h|m|s|ms))+", v):
            return v
    raise CliError(f"invalid step {value!r}: use a duration like 15s or 1m, or seconds")


# ------------------------------------------------------------------------------------------------ HTTP
def request(args, path: str, params: list[tuple[str, str]]) -> object:
    """POST the form (as promtool does), return ``data``; a Prometheus error envelope becomes a CliError."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    addr = args.addr.rstrip("/")
    if "://" not in addr:
        addr = "http://" + addr
    headers = {"User-Agent": "meshscope-metrics", "Content-Type": "application/x-www-form-urlencoded"}
    if args.org_id:
        headers["X-Scope-OrgID"] = args.org_id
    method = "GET" if path.startswith("/api/v1/label/") else "POST"
    body = urlencode(params).encode()
    url = f"{addr}{path}" + (f"?{body.decode()}" if method == "GET" and params else "")
    try:
        req = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=300) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            env = json.loads(raw)
            msg = f"{env.get('errorType', 'error')}: {env.get('error', '')}"
        except ValueError:
            msg = " ".join(raw.decode("utf-8", "replace").split()) or str(err.reason)
        raise CliError(f"{msg} (status {err.code})") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            raise CliError(f"cannot connect to {addr}: connection refused (is meshscope serve running? set --addr "
                           f"or MESHSCOPE_ADDR)") from None
        raise CliError(f"cannot reach {addr}: {err.reason}") from None
    except (TimeoutError, OSError) as err:
        raise CliError(f"cannot reach {addr}: {err}") from None
    try:
        env = json.loads(raw)
    except ValueError:
        raise CliError(f"{addr} did not answer with JSON (is it a meshscope server?)") from None
    if not isinstance(env, dict) or env.get("status") != "success":
        raise CliError(f"{env.get('errorType', 'error')}: {env.get('error', 'unexpected answer')}"
                       if isinstance(env, dict) else "unexpected answer")
    for w in env.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    return env.get("data")


# ------------------------------------------------------------------------------------------------ output
def labels_text(metric: dict) -> str:
    """``{__name__="x", job="y"}`` with the name outside the braces, as Prometheus prints series."""
    name = metric.get("__name__", "")
    rest = ", ".join(f'{k}={json.dumps(v, ensure_ascii=False)}' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


def _ts_text(ts) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(ts))) + f".{int(round(float(ts) * 1000)) % 1000:03d}Z"


def print_result(data: dict, out) -> None:
    kind, result = data.get("resultType"), data.get("result")
    if kind in ("scalar", "string"):
        print(f"{result[1]} @ {_ts_text(result[0])}", file=out)
    elif kind == "vector":
        for r in result:
            print(f"{labels_text(r['metric'])} => {r['value'][1]} @ {_ts_text(r['value'][0])}", file=out)
    elif kind == "matrix":
        for r in result:
            print(labels_text(r["metric"]), file=out)
            for ts, v in r["values"]:
                print(f"  {_ts_text(ts)}  {v}", file=out)


def run_metrics(args, parser: argparse.ArgumentParser | None = None) -> int:
    return run_guarded(lambda: _run(args))


def _run(args) -> int:
    out = sys.stdout
    cmd = args.metrics_command
    if cmd == "query":
        params = [("query", args.expr)]
        if args.time:
            params.append(("time", parse_time_flag(args.time)))
        data = request(args, "/api/v1/query", params)
    elif cmd == "query-range":
        end = parse_time_flag(args.end) if args.end else parse_time_flag("now")
        start = parse_time_flag(args.start) if args.start else f"{_seconds(end) - 3600:.3f}"
        if _seconds(end) < _seconds(start):
            raise CliError("--end must not be before --start")
        step = parse_step(args.step) if args.step else str(max(1, math.ceil((_seconds(end) - _seconds(start)) / 250)))
        data = request(args, "/api/v1/query_range", [("query", args.expr), ("start", start), ("end", end),
                                                      ("step", step)])
    elif cmd == "series":
        params = [("match[]", m) for m in args.match] + _range(args)
        data = request(args, "/api/v1/series", params)
    elif cmd == "labels":
        params = [("match[]", m) for m in args.match] + _range(args)
        if args.name:
            from urllib.parse import quote
            data = request(args, f"/api/v1/label/{quote(args.name, safe='')}/values", params)
        else:
            data = request(args, "/api/v1/labels", params)
    else:  # pragma: no cover - argparse refuses it
        raise CliError(f"unknown command {cmd!r}")
    if args.output == "json":
        print(json.dumps(data, ensure_ascii=False), file=out)
    elif cmd in ("query", "query-range"):
        print_result(data, out)
    elif cmd == "series":
        for s in data:
            print(labels_text(s), file=out)
    else:
        for v in data:
            print(v, file=out)
    return 0


def _range(args) -> list[tuple[str, str]]:
    out = []
    if args.start:
        out.append(("start", parse_time_flag(args.start)))
    if args.end:
        out.append(("end", parse_time_flag(args.end)))
    return out
