"""``meshscope graph``: the service graph from a meshscope server as a table, Kiali JSON, Graphviz dot or SVG.

The server does the work (``/api/graph``, ``/api/graph.svg``); this side only formats, so the CLI, the UI and
Kiali-speaking tools see the same numbers. Module-level imports stay light: the parser is built at every start.
"""
from __future__ import annotations

import argparse
import os
import sys
from meshscope.query.cliutil import CliError, run_guarded

DEFAULT_ADDR = "http://localhost:3100"
GRAPH_TYPES = ("workload", "app", "versionedApp", "service")
OUTPUTS = ("table", "json", "dot", "svg")


def add_graph_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``meshscope graph``."""
    p = subparsers.add_parser("graph", help="show the service graph (Kiali-style) of a meshscope server")
    p.add_argument("--addr", default=os.environ.get("MESHSCOPE_ADDR") or DEFAULT_ADDR,
                   help="server address (env MESHSCOPE_ADDR; default %(default)s)")
    p.add_argument("--org-id", default=os.environ.get("MESHSCOPE_ORG_ID"),
                   help="tenant, sent as X-Scope-OrgID (env MESHSCOPE_ORG_ID)")
    p.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                   help="namespace to graph (repeatable or comma-separated; default all)")
    p.add_argument("--since", default="10m", help="window ending now (or at --query-time), e.g. 10m, 1h (default "
                   "%(default)s)")
    p.add_argument("--query-time", help="end of the window, unix seconds (default now)")
    p.add_argument("-t", "--type", dest="graph_type", choices=GRAPH_TYPES, default="workload",
                   help="graph type (default %(default)s)")
    p.add_argument("--response-time", choices=("avg", "50", "95", "99"), default="95",
                   help="response time shown: average or a percentile (default %(default)s)")
    p.add_argument("--inject-service-nodes", action="store_true",
                   help="put service nodes between callers and workloads (always on for --type service)")
    p.add_argument("--source", choices=("auto", "rollup", "raw", "metrics", "spans"), default="auto",
                   help="where edges come from (default %(default)s)")
    p.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format (default %(default)s)")
    return p


# ------------------------------------------------------------------------------------------- HTTP
def _params(args) -> list[tuple[str, str]]:
    namespaces = [n.strip() for v in args.namespace for n in v.split(",") if n.strip()]
    params = [("graphType", args.graph_type), ("duration", args.since), ("responseTime", args.response_time),
              ("source", args.source)]
    if namespaces:
        params.append(("namespaces", ",".join(namespaces)))
    if args.query_time:
        params.append(("queryTime", args.query_time))
    if args.inject_service_nodes:
        params.append(("injectServiceNodes", "true"))
    return params


def fetch(args, path: str) -> bytes:
    """GET ``path`` with the graph parameters; any failure becomes a one-line ``CliError``."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    addr = args.addr.rstrip("/")
    if "://" not in addr:
        addr = "http://" + addr
    headers = {"User-Agent": "meshscope-graph"}
    if args.org_id:
        headers["X-Scope-OrgID"] = args.org_id
    url = f"{addr}{path}?{urlencode(_params(args))}"
    try:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.read()
    except urllib.error.HTTPError as err:
        text = " ".join(err.read().decode("utf-8", "replace").split())
        raise CliError(f"{text or err.reason} (status {err.code})") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            raise CliError(f"cannot connect to {addr}: connection refused (is meshscope serve running? set --addr "
                           f"or MESHSCOPE_ADDR)") from None
        raise CliError(f"cannot reach {addr}: {err.reason}") from None
    except ValueError as err:  # a malformed --addr
        raise CliError(f"invalid --addr {args.addr!r}: {err}") from None
    except (TimeoutError, OSError) as err:
        raise CliError(f"cannot reach {addr}: {err}") from None


# ------------------------------------------------------------------------------------------- formatting
def _nodes(doc: dict) -> dict[str, dict]:
    return {w["data"]["id"]: w["data"] for w in (doc.get("elements") or {}).get("nodes") or []
            if (w.get("data") or {}).get("nodeType") != "box"}


def _edges(doc: dict) -> list[dict]:
    return [w["data"] for w in (doc.get("elements") or {}).get("edges") or [] if w.get("data")]


def display_name(d: dict, graph_type: str = "") -> str:
    """``namespace/name``, with ``(svc)``/``(se)`` for service nodes; ``unknown`` for the unknown source."""
    from meshscope.query.graph.svg import node_label

    if d.get("nodeType") == "unknown":
        return "unknown"
    name = node_label(d, graph_type)
    ns = d.get("namespace")
    text = f"{ns}/{name}" if ns and ns != "unknown" else name
    if d.get("nodeType") == "service":
        text += " (se)" if d.get("isServiceEntry") else " (svc)"
    return text


def _rt(rt: str | None) -> str:
    if not rt:
        return "-"
    v = float(rt)
    return f"{v:.0f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def edge_rows(doc: dict) -> list[list[str]]:
    """One row per edge: source, dest, protocol, rate, error %, response time, mTLS %, health."""
    from meshscope.query.graph.svg import edge_rate_text

    nodes = _nodes(doc)
    gt = doc.get("graphType", "")
    rows = []
    for e in _edges(doc):
        src, dst = nodes.get(e.get("source")), nodes.get(e.get("target"))
        if src is None or dst is None:
            continue
        traffic = e.get("traffic") or {}
        proto = traffic.get("protocol", "")
        rates = traffic.get("rates") or {}
        err = "-" if proto == "tcp" else (rates.get(f"{proto}PercentErr") or "0") + "%"
        mtls = f"{e['isMTLS']}%" if e.get("isMTLS") else "-"
        rows.append([display_name(src, gt), display_name(dst, gt), proto, edge_rate_text(traffic), err,
                     _rt(e.get("responseTime")), mtls, e.get("healthStatus") or "NA"])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def format_table(doc: dict, response_time: str = "95") -> str:
    """Aligned columns, one edge per line (``SOURCE → DEST``)."""
    rt_head = "AVG" if response_time == "avg" else f"P{response_time}"
    head = ["SOURCE", "", "DESTINATION", "PROTOCOL", "RATE", "ERR", rt_head, "MTLS", "HEALTH"]
    rows = [[r[0], "\u2192", *r[1:]] for r in edge_rows(doc)]
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    right = {4, 5, 6, 7}  # numbers align right
    lines = []
    for row in [head, *rows]:
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _dot_str(text: str) -> str:
    """A Graphviz double-quoted string: backslash and quote escaped, newlines as ``\\n``, controls dropped."""
    text = "".join(c for c in str(text) if c in "\n" or ord(c) >= 32)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_dot(doc: dict) -> str:
    """Graphviz text: left to right, Kiali's shapes and health colours, edge labels ``rate / err% / rt``."""
    from meshscope.query.graph.svg import COLORS, edge_color, edge_label, node_health

    shapes = {"app": "box", "workload": "ellipse", "service": "diamond", "unknown": "diamond",
              "aggregate": "hexagon"}
    gt = doc.get("graphType", "")
    nodes = _nodes(doc)
    lines = ["digraph meshscope {", "  rankdir=LR;", '  node [fontname="sans-serif", fontsize=11];',
             '  edge [fontname="sans-serif", fontsize=9];']
    for nid in sorted(nodes, key=lambda i: (display_name(nodes[i], gt), i)):
        d = nodes[nid]
        shape = "trapezium" if d.get("nodeType") == "service" and d.get("isServiceEntry") \
            else shapes.get(d.get("nodeType", ""), "ellipse")
        color = COLORS.get(node_health(d), COLORS["NA"])
        style = ', style=dashed' if d.get("isInaccessible") or d.get("isOutside") else ""
        lines.append(f"  {_dot_str('n' + nid[:16])} [label={_dot_str(display_name(d, gt))}, shape={shape}, "
                     f"color={_dot_str(color)}{style}];")
    for e in sorted(_edges(doc), key=lambda e: (e.get("source", ""), e.get("target", ""), e.get("id", ""))):
        if e.get("source") not in nodes or e.get("target") not in nodes:
            continue
        label = edge_label(e)
        if float(e.get("isMTLS") or 0) > 0:
            label = "mTLS " + label
        lines.append(f"  {_dot_str('n' + e['source'][:16])} -> {_dot_str('n' + e['target'][:16])} "
                     f"[label={_dot_str(label)}, color={_dot_str(edge_color(e))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- command
def run_graph(args) -> int:
    """``meshscope graph``: print the graph; any failure is one line on stderr and exit code 1."""
    def show() -> int:
        if args.output == "svg":
            body = fetch(args, "/api/graph.svg")
            sys.stdout.write(body.decode("utf-8", "replace"))
            return 0
        import orjson

        body = fetch(args, "/api/graph")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CliError(f"the server at {args.addr} did not answer JSON") from None
        if not isinstance(doc, dict):
            raise CliError(f"the server at {args.addr} did not answer a graph")
        if args.output == "json":
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif args.output == "dot":
            sys.stdout.write(format_dot(doc))
        else:
            if not _edges(doc):
                print("no traffic in this window", file=sys.stderr)
            sys.stdout.write(format_table(doc, args.response_time))
        sys.stdout.flush()
        return 0

    return run_guarded(show)
