"""``meshscope traces``: search traces, show one as a text waterfall, RED per service or operation, logs of a trace.

The server does the work (``/api/search/traces``, ``/api/traces/<id>`` in Jaeger's JSON, ``/api/red``,
``/api/traces/<id>/logs``); this side only formats. Module-level imports stay light: the parser is built at every
start of ``meshscope``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from meshscope.query.cliutil import CliError, run_guarded

DEFAULT_ADDR = "http://localhost:3100"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--addr", default=os.environ.get("MESHSCOPE_ADDR") or DEFAULT_ADDR,
                   help="server address (env MESHSCOPE_ADDR; default %(default)s)")
    p.add_argument("--org-id", default=os.environ.get("MESHSCOPE_ORG_ID"),
                   help="tenant, sent as X-Scope-OrgID (env MESHSCOPE_ORG_ID)")


def _window(p: argparse.ArgumentParser, since: str) -> None:
    p.add_argument("--since", default=since, help=f"window ending now or at --to, e.g. 15m, 2h, 1d (default {since})")
    p.add_argument("--from", dest="start", help="start: RFC3339 or unix time (s, ms, µs or ns)")
    p.add_argument("--to", dest="end", help="end: RFC3339 or unix time (default now)")


def add_traces_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``meshscope traces`` with ``search``, ``get``, ``red`` and ``logs``."""
    p = subparsers.add_parser("traces", help="search traces, show one as a waterfall, RED per service")
    sub = p.add_subparsers(dest="traces_command", metavar="{search,get,red,logs}")
    sub.required = True

    s = sub.add_parser("search", help="find traces: one summary line per trace, newest first")
    _common(s)
    _window(s, "1h")
    s.add_argument("-s", "--service", help="a span of this service ...")
    s.add_argument("--operation", help="... with this operation (span name)")
    s.add_argument("--kind", help="... of this kind: server, client, producer, consumer, internal")
    s.add_argument("--status", choices=("error", "ok", "unset"), help="... with this status")
    s.add_argument("--min-duration", help="... lasting at least this long, e.g. 100ms")
    s.add_argument("--max-duration", help="... lasting at most this long")
    s.add_argument("-t", "--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="... with this span or resource attribute, or promoted column (MeshNamespace=...); "
                        "repeatable")
    s.add_argument("--limit", type=int, default=20, help="most traces to list (1-1500, default %(default)s)")
    s.add_argument("-o", "--output", choices=("table", "json"), default="table")

    g = sub.add_parser("get", help="show one trace as a waterfall (or JSON)")
    _common(g)
    g.add_argument("trace_id", help="trace id (1-32 hex digits)")
    g.add_argument("-o", "--output", choices=("waterfall", "jaeger", "otlp"), default="waterfall",
                   help="waterfall text, Jaeger JSON or OTLP JSON (default %(default)s)")
    g.add_argument("--width", type=int, default=40, help="bar width in characters (default %(default)s)")

    r = sub.add_parser("red", help="rate, errors and duration percentiles per service or operation")
    _common(r)
    _window(r, "15m")
    r.add_argument("-s", "--service", help="only this service")
    r.add_argument("--by", choices=("service", "operation"), default="service")
    r.add_argument("--kind", default="", help="span kinds counted: server (default: server and consumer), client, "
                                              "all, or a comma list")
    r.add_argument("-o", "--output", choices=("table", "json"), default="table")

    lg = sub.add_parser("logs", help="the log records of a trace (by TraceId)")
    _common(lg)
    lg.add_argument("trace_id")
    lg.add_argument("--limit", type=int, default=1000)
    lg.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


# ------------------------------------------------------------------------------------------- HTTP
def fetch(args, path: str, params: list[tuple[str, str]] | None = None) -> bytes:
    """GET ``path``; any failure becomes a one-line ``CliError`` (Jaeger error JSON is unwrapped)."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    addr = args.addr.rstrip("/")
    if "://" not in addr:
        addr = "http://" + addr
    headers = {"User-Agent": "meshscope-traces"}
    if args.org_id:
        headers["X-Scope-OrgID"] = args.org_id
    url = f"{addr}{path}" + (f"?{urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=300) as resp:
            return resp.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        try:
            import orjson

            text = "; ".join(e.get("msg", "") for e in orjson.loads(text).get("errors") or []) or text
        except Exception:  # noqa: BLE001 - plain text bodies
            pass
        raise CliError(f"{' '.join(text.split()) or err.reason} (status {err.code})") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            raise CliError(f"cannot connect to {addr}: connection refused (is meshscope serve running? set --addr "
                           f"or MESHSCOPE_ADDR)") from None
        raise CliError(f"cannot reach {addr}: {err.reason}") from None
    except ValueError as err:
        raise CliError(f"invalid --addr {args.addr!r}: {err}") from None
    except (TimeoutError, OSError) as err:
        raise CliError(f"cannot reach {addr}: {err}") from None


def _json(body: bytes, what: str):
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CliError(f"the server did not answer {what} JSON") from None


def _window_params(args) -> list[tuple[str, str]]:
    out = []
    if args.start:
        out.append(("start", args.start))
    else:
        out.append(("since", args.since))
    if args.end:
        out.append(("end", args.end))
    return out


# ------------------------------------------------------------------------------------------- formatting
def fmt_duration(ns: float) -> str:
    """Short human durations: 850µs, 12.3ms, 1.52s, 2m03s."""
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        ms = ns / 1e6
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    s = ns / 1e9
    if s < 60:
        return f"{s:.2f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def fmt_time(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for row in [head, *rows]:
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_search(doc: dict) -> str:
    rows = []
    for t in doc.get("traces") or []:
        services = t.get("services") or []
        rows.append([t["traceID"], fmt_time(int(t["startTimeUnixNano"])), fmt_duration(int(t["durationNano"])),
                     str(t["spanCount"]), str(t["errorCount"]), str(len(services)),
                     f"{t['rootServiceName']}: {t['rootTraceName']}" + (" (root missing)" if t.get("rootMissing")
                                                                         else "")])
    return _table(["TRACE ID", "START", "DURATION", "SPANS", "ERRORS", "SVCS", "ROOT"], rows, {2, 3, 4, 5})


def _tag(span: dict, key: str):
    for t in span.get("tags") or []:
        if t.get("key") == key:
            return t.get("value")
    return None


def waterfall_rows(trace: dict) -> list[tuple[int, dict]]:
    """(depth, span) in tree order: children after their parent by start time; spans whose parent is not in the
    trace start new roots."""
    spans = trace.get("spans") or []
    by_id = {s["spanID"]: s for s in spans}
    children: dict[str, list[dict]] = {}
    roots = []
    for s in spans:
        parent = next((r["spanID"] for r in s.get("references") or [] if r.get("refType") == "CHILD_OF"), None)
        if parent and parent in by_id and parent != s["spanID"]:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    out: list[tuple[int, dict]] = []
    seen: set[str] = set()
    stack = [(0, s) for s in sorted(roots, key=lambda s: (s["startTime"], s["spanID"]), reverse=True)]
    while stack:
        depth, s = stack.pop()
        if s["spanID"] in seen:
            continue
        seen.add(s["spanID"])
        out.append((depth, s))
        for c in sorted(children.get(s["spanID"], []), key=lambda s: (s["startTime"], s["spanID"]), reverse=True):
            stack.append((depth + 1, c))
    for s in spans:  # cycles: show them anyway
        if s["spanID"] not in seen:
            out.append((0, s))
    return out


def format_waterfall(trace: dict, width: int = 40, name_width: int = 60) -> str:
    """Indentation by depth, service and operation, offset from the trace start, duration, and a bar."""
    spans = trace.get("spans") or []
    if not spans:
        return "empty trace\n"
    processes = trace.get("processes") or {}
    t0 = min(s["startTime"] for s in spans)
    t1 = max(s["startTime"] + s["duration"] for s in spans)
    total = max(t1 - t0, 1)
    width = max(10, min(width, 400))
    rows = waterfall_rows(trace)
    services = {processes.get(s.get("processID"), {}).get("serviceName", "?") for s in spans}
    errors = sum(1 for s in spans if _tag(s, "error") is True)
    lines = [f"trace {trace.get('traceID')}  {fmt_time(t0 * 1000)}  {fmt_duration(total * 1000)}  "
             f"{len(spans)} spans, {len(services)} services, {errors} errors"]
    for w in trace.get("warnings") or []:
        lines.append(f"warning: {w}")
    labels = []
    for depth, s in rows:
        svc = processes.get(s.get("processID"), {}).get("serviceName", "?")
        label = "  " * min(depth, 30) + f"{svc}: {s['operationName']}"
        if _tag(s, "error") is True:
            label += " !"
        if len(label) > name_width:
            label = label[:name_width - 1] + "…"
        labels.append(label)
    lw = max(len(x) for x in labels)
    for (depth, s), label in zip(rows, labels):
        off = s["startTime"] - t0
        a = min(width - 1, int(off * width / total))
        b = max(a + 1, min(width, -(-(off + s["duration"]) * width // total)))
        bar = " " * a + ("▇" * (b - a)) + " " * (width - b)
        lines.append(f"{label.ljust(lw)}  {fmt_duration(off * 1000):>8}  {fmt_duration(s['duration'] * 1000):>8}  "
                     f"|{bar}|")
    return "\n".join(lines) + "\n"


def format_red(doc: dict) -> str:
    rows = []
    for r in doc.get("data") or []:
        rows.append([r["service"], *([r["operation"]] if "operation" in r else []), f"{r['rate']:.3f}/s",
                     str(r["requests"]), f"{100 * r['errorRate']:.2f}%", f"{r['p50Ms']:.1f}ms",
                     f"{r['p95Ms']:.1f}ms", f"{r['p99Ms']:.1f}ms"])
    by_op = any("operation" in r for r in doc.get("data") or [])
    head = ["SERVICE", *(["OPERATION"] if by_op else []), "RATE", "REQUESTS", "ERRORS", "P50", "P95", "P99"]
    first_num = 2 if by_op else 1
    return _table(head, rows, set(range(first_num, len(head))))


# ------------------------------------------------------------------------------------------- command
def _search(args) -> None:
    import orjson

    if not 1 <= args.limit <= 1500:
        raise CliError("--limit must be between 1 and 1500")
    params = _window_params(args) + [("limit", str(args.limit))]
    for flag, name in (("service", "service"), ("operation", "operation"), ("kind", "spanKind"),
                       ("status", "status"), ("min_duration", "minDuration"), ("max_duration", "maxDuration")):
        v = getattr(args, flag)
        if v:
            params.append((name, v))
    for t in args.tag:
        if "=" not in t:
            raise CliError(f"--tag {t!r}: use KEY=VALUE")
        params.append(("tag", t))
    doc = _json(fetch(args, "/api/search/traces", params), "search")
    if args.output == "json":
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not doc.get("traces"):
        print("no traces found", file=sys.stderr)
    sys.stdout.write(format_search(doc))


def _get(args) -> None:
    import orjson

    from urllib.parse import quote

    tid = args.trace_id.strip()
    if args.output == "otlp":
        body = fetch(args, f"/api/traces/{quote(tid, safe='')}/otlp")
        sys.stdout.write(orjson.dumps(_json(body, "OTLP"), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    doc = _json(fetch(args, f"/api/traces/{quote(tid, safe='')}"), "Jaeger")
    if args.output == "jaeger":
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    data = doc.get("data") or []
    if not data:
        raise CliError("trace not found")
    sys.stdout.write(format_waterfall(data[0], args.width))


def _red(args) -> None:
    import orjson

    params = _window_params(args) + [("by", args.by)]
    if args.service:
        params.append(("service", args.service))
    if args.kind:
        params.append(("spanKind", args.kind))
    doc = _json(fetch(args, "/api/red", params), "RED")
    if args.output == "json":
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not doc.get("data"):
        print("no spans in this window", file=sys.stderr)
    sys.stdout.write(format_red(doc))


def _logs(args) -> None:
    import orjson

    from urllib.parse import quote

    doc = _json(fetch(args, f"/api/traces/{quote(args.trace_id.strip(), safe='')}/logs",
                      [("limit", str(args.limit))]), "logs")
    if args.output == "json":
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for rec in doc.get("logs") or []:
        sys.stdout.write(f"{fmt_time(int(rec['timestamp']))} {rec.get('serviceName', '')} "
                         f"{rec.get('severityText') or '-'} {rec.get('spanID') or '-'} {rec.get('body', '')}\n")


def run_traces(args) -> int:
    """``meshscope traces ...``: any failure is one line on stderr and exit code 1."""
    return run_guarded(lambda: {"search": _search, "get": _get, "red": _red, "logs": _logs}[args.traces_command](args))
