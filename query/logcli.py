"""``meshscope logs``: Grafana logcli's commands, flags and output formats against meshscope's (or any) Loki API.

Kept close to logcli (``pkg/logcli``) so scripts and habits carry over: the batching loop of ``query``, the
default/raw/jsonl line formats, "Common labels" on stderr, metric results as indented JSON, ``series
--analyze-labels`` and ``stats``. ``--stdin`` runs the query's pipeline over stdin lines locally, as logcli does.
Module-level imports stay light: the parser is built at every ``meshscope`` start.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from meshscope.query.cliutil import CliError, run_guarded

DEFAULT_ADDR = "http://localhost:3100"
NS = 1_000_000_000


# ------------------------------------------------------------------------------------------- argument parsing
def _common(with_time: bool = True) -> argparse.ArgumentParser:
    """Flags every logcli command takes (logcli's are global; here they may follow the command name)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--addr", default=os.environ.get("MESHSCOPE_ADDR") or os.environ.get("LOKI_ADDR") or DEFAULT_ADDR,
                   help="server address (env MESHSCOPE_ADDR, then LOKI_ADDR; default %(default)s)")
    g.add_argument("--org-id", default=os.environ.get("MESHSCOPE_ORG_ID") or os.environ.get("LOKI_ORG_ID"),
                   help="tenant, sent as X-Scope-OrgID (env LOKI_ORG_ID)")
    g.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra request header (repeatable)")
    g.add_argument("-q", "--quiet", action="store_true", help="suppress query metadata on stderr")
    g.add_argument("-o", "--output", choices=("default", "raw", "jsonl"), default="default",
                   help="output mode for log lines (default %(default)s)")
    g.add_argument("-z", "--timezone", default="Local", help="timezone of printed timestamps: Local, UTC or an IANA "
                   "name (default Local)")
    if with_time:
        g.add_argument("--since", default="1h", help="lookback window (default 1h)")
        g.add_argument("--from", dest="from_", metavar="FROM", help="start time, RFC3339Nano (inclusive)")
        g.add_argument("--to", help="end time, RFC3339Nano (exclusive)")
    return p


def _label_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-labels", action="store_true", help="do not print labels")
    p.add_argument("--exclude-label", action="append", default=[], help="label to leave out (repeatable)")
    p.add_argument("--include-label", action="append", default=[], help="only print these labels (repeatable)")
    p.add_argument("--include-common-labels", action="store_true", help="print the common labels on every line")
    p.add_argument("--labels-length", type=int, default=0, help="pad labels to at least this many characters")
    p.add_argument("--stdin", action="store_true", help="run the query over lines read from stdin, locally")


def add_logs_parser(sub) -> None:
    """Register ``meshscope logs query|instant-query|labels|series|stats``."""
    logs = sub.add_parser("logs", help="query logs with LogQL (logcli-compatible)")
    lsub = logs.add_subparsers(dest="logs_command", metavar="COMMAND")

    q = lsub.add_parser("query", parents=[_common()], help="run a LogQL range query")
    q.add_argument("query", help="LogQL query")
    q.add_argument("--limit", type=int, default=30, help="lines to print (default 30; 0 = no limit)")
    q.add_argument("--batch", type=int, default=1000, help="lines per request (default 1000)")
    q.add_argument("--forward", action="store_true", help="oldest first")
    q.add_argument("--step", help="query resolution step for metric queries (e.g. 30s)")
    q.add_argument("--interval", help="only one line per interval (log queries)")
    q.add_argument("-t", "--tail", action="store_true", help="tail the logs (WebSocket)")
    q.add_argument("-f", "--follow", action="store_true", help="same as --tail")
    q.add_argument("--delay-for", type=int, default=0, help="tail: delay in seconds to wait for late lines (0-5)")
    _label_flags(q)

    iq = lsub.add_parser("instant-query", parents=[_common(with_time=False)], help="run a LogQL instant query")
    iq.add_argument("query", help="LogQL query")
    iq.add_argument("--now", help="evaluation time, RFC3339Nano (default now)")
    iq.add_argument("--limit", type=int, default=30, help="lines to print (default 30)")
    iq.add_argument("--forward", action="store_true", help="oldest first")
    _label_flags(iq)

    lb = lsub.add_parser("labels", parents=[_common()], help="list label names, or the values of one label")
    lb.add_argument("label", nargs="?", help="label whose values to list")

    se = lsub.add_parser("series", parents=[_common()], help="list the streams a selector matches")
    se.add_argument("matcher", help='stream selector, e.g. {app="foo"} (or {} for all)')
    se.add_argument("--analyze-labels", action="store_true", help="print label cardinality instead")

    st = lsub.add_parser("stats", parents=[_common()], help="index statistics for a selector")
    st.add_argument("matcher", help="stream selector")


# ------------------------------------------------------------------------------------------- time helpers
def _zone(name: str):
    from datetime import timezone
    if name.lower() == "utc":
        return timezone.utc
    if name.lower() == "local":
        return None
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception:
        raise CliError(f"unknown timezone {name!r}") from None


def format_time(ts_ns: int, tz, nano: bool) -> str:
    """Go's time.Format with RFC3339 (seconds) or RFC3339Nano (fraction, trailing zeros trimmed), "Z" at UTC."""
    from datetime import datetime, timezone
    sec, frac = divmod(ts_ns, NS)
    dt = datetime.fromtimestamp(sec, timezone.utc)
    dt = dt.astimezone() if tz is None else dt.astimezone(tz)
    out = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if nano and frac:
        out += "." + f"{frac:09d}".rstrip("0")
    off = dt.utcoffset()
    mins = int(off.total_seconds()) // 60 if off else 0
    if mins == 0:
        return out + "Z"
    sign = "+" if mins > 0 else "-"
    mins = abs(mins)
    return f"{out}{sign}{mins // 60:02d}:{mins % 60:02d}"


def _when(value: str | None, default_ns: int, flag: str) -> int:
    if not value:
        return default_ns
    from meshscope.query.loki_api import parse_timestamp
    try:
        return parse_timestamp(value, default_ns)
    except ValueError:
        raise CliError(f"invalid {flag} {value!r}: use RFC3339Nano, e.g. 2024-01-02T15:04:05Z") from None


def _seconds(value: str | None, flag: str) -> float | None:
    if value is None or value == "":
        return None
    from meshscope import config
    try:
        return config.parse_duration(value)
    except ValueError as err:
        raise CliError(f"invalid {flag}: {err}") from None


def ts_param(ns: int) -> str:
    """A timestamp for the API: ns digits, unless so small that Loki would read them as seconds (<= 10 digits)."""
    if ns >= 10**10:
        return str(ns)
    from datetime import timezone
    return format_time(ns, timezone.utc, nano=True)


def time_range(args) -> tuple[int, int]:
    now = time.time_ns()
    since = _seconds(args.since, "--since")
    end = _when(args.to, now, "--to")
    start = _when(args.from_, end - int(since * NS), "--from")
    return start, end


# ------------------------------------------------------------------------------------------- HTTP client
class Client:
    """Plain HTTP GETs to the Loki API; errors become ``CliError`` with one readable line."""

    def __init__(self, args):
        self.addr = args.addr.rstrip("/")
        if "://" not in self.addr:
            self.addr = "http://" + self.addr
        self.quiet = args.quiet
        self.headers = {"User-Agent": "meshscope-logcli"}
        if args.org_id:
            self.headers["X-Scope-OrgID"] = args.org_id
        for h in args.header:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                raise CliError(f"invalid --header {h!r}: use 'Name: value'")
            self.headers[name.strip()] = value.strip()

    def url(self, path: str, params: list[tuple[str, str]]) -> str:
        from urllib.parse import urlencode
        return f"{self.addr}{path}" + (f"?{urlencode(params)}" if params else "")

    def get(self, path: str, params: list[tuple[str, str]]):
        import urllib.error
        import urllib.request

        import orjson
        url = self.url(path, params)
        if not self.quiet:
            print(url, file=sys.stderr)
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            raise CliError(f"Error response from server: {_one_line(text)} (status {err.code})") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ConnectionRefusedError):
                raise CliError(f"cannot connect to {self.addr}: connection refused (is meshscope serve running? "
                               f"set --addr or MESHSCOPE_ADDR)") from None
            raise CliError(f"cannot reach {self.addr}: {reason}") from None
        except (TimeoutError, OSError) as err:
            raise CliError(f"cannot reach {self.addr}: {err}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CliError(f"the server at {self.addr} did not answer JSON: {_one_line(body[:200].decode('utf-8', 'replace'))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------- output
def go_json(obj, indent: bool = False) -> str:
    """Go's encoding/json text: HTML characters escaped, UTF-8 kept, map keys sorted."""
    import json
    out = json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2 if indent else None,
                     separators=None if indent else (",", ":"))
    return (out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def labels_text(labels: dict[str, str]) -> str:
    """loghttp.LabelSet.String(): ``{a="b", c="d"}``, sorted, Go-quoted values."""
    from meshscope.query.logql.values import go_quote
    return "{" + ", ".join(f"{k}={go_quote(labels[k])}" for k in sorted(labels)) + "}"


class Printer:
    """logcli's LogOutput: one entry per call in the chosen mode."""

    def __init__(self, args, stream=None):
        self.mode = args.output
        self.tz = _zone(args.timezone)
        self.no_labels = getattr(args, "no_labels", False)
        self.out = stream or sys.stdout
        self.color = (self.out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")

    def _c(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def entry(self, ts_ns: int, labels: dict[str, str], max_len: int, line: str) -> None:
        if self.mode == "raw":
            if line.endswith("\n"):
                line = line[:-1]
            self.out.write(line + "\n")
        elif self.mode == "jsonl":
            obj = {"line": line, "timestamp": format_time(ts_ns, self.tz, nano=True)}
            if not self.no_labels:
                obj["labels"] = labels
            self.out.write(go_json(obj) + "\n")
        else:
            ts = self._c("34", format_time(ts_ns, self.tz, nano=False))
            line = line.strip()
            if self.no_labels:
                self.out.write(f"{ts} {line}\n")
            else:
                text = labels_text(labels)
                pad = max_len - len(text.encode())
                if pad > 0:
                    text += " " * pad
                self.out.write(f"{ts} {self._c('31', text)} {line}\n")


def _keep_only(labels: dict, names: list[str]) -> dict:
    return {k: v for k, v in labels.items() if k in names}


def _drop(labels: dict, names: list[str]) -> dict:
    return {k: v for k, v in labels.items() if k not in names}


def print_streams(args, printer: Printer, streams: list[dict], last: list[tuple[int, str]]) \
        -> tuple[int, list[tuple[int, str]]]:
    """logcli's printStream: strip the common labels (told once on stderr), pad, print in time order, skip the
    entries the previous batch already printed; returns (printed, entries sharing the last timestamp)."""
    if streams:
        common = dict(streams[0]["stream"])
        for s in streams[1:]:
            common = {k: v for k, v in common.items() if s["stream"].get(k) == v}
    else:
        common = {}
    if args.include_common_labels:
        common = {}
    if args.include_label:
        common = _drop(common, args.include_label)
    if common and not args.quiet:
        print("Common labels:", labels_text(common), file=sys.stderr)
    if args.exclude_label and not args.quiet:
        print("Ignoring labels key:", ",".join(args.exclude_label), file=sys.stderr)
    if args.include_label and not args.quiet:
        print("Print only labels key:", ",".join(args.include_label), file=sys.stderr)
    max_len = args.labels_length
    entries = []
    for s in streams:
        ls = {k: v for k, v in s["stream"].items() if k not in common}
        if args.include_label:
            ls = _keep_only(ls, args.include_label)
        if args.exclude_label:
            ls = _drop(ls, args.exclude_label)
        max_len = max(max_len, len(labels_text(ls).encode()))
        for v in s["values"]:
            entries.append((int(v[0]), v[1], ls))
    if not entries:
        return 0, []
    entries.sort(key=lambda e: e[0], reverse=not args.forward)
    printed = 0
    last_ts = last[0][0] if last else None
    for ts, line, ls in entries:
        if ts == last_ts and any(line == le for _, le in last):
            continue
        printer.entry(ts, ls, max_len, line)
        printed += 1
    edge = entries[-1][0]
    return printed, [(ts, line) for ts, line, _ in entries if ts == edge]


def print_metric(result) -> None:
    """A matrix, vector or scalar result as logcli prints it: Go's json.MarshalIndent with two spaces (plus a
    final newline, which logcli leaves out)."""
    sys.stdout.write(go_json(result, indent=True) + "\n")


# ------------------------------------------------------------------------------------------- commands
def _check_limits(args) -> None:
    if args.limit < 0:
        raise CliError("--limit must not be negative")
    if getattr(args, "batch", 1) <= 0:
        raise CliError("--batch must be positive")


def cmd_query(args) -> int:
    _check_limits(args)
    printer = Printer(args)
    start, end = time_range(args)
    if args.stdin:
        return run_stdin(args, printer, start, end, instant=False)
    client = Client(args)
    if args.tail or args.follow:
        return run_tail(args, client, printer, start)
    step = _seconds(args.step, "--step")
    interval = _seconds(args.interval, "--interval")
    direction = "forward" if args.forward else "backward"
    limit, batch = args.limit, args.batch
    unlimited = limit == 0
    if not unlimited and limit < batch:
        batch = limit
    total, last = 0, []
    while unlimited or total < limit:
        bs = batch
        if not unlimited and limit - total < batch:
            bs = limit - total + len(last)
        params = [("query", args.query), ("limit", str(bs)), ("start", ts_param(start)),
                  ("end", ts_param(end)), ("direction", direction)]
        if step:
            params.append(("step", _fmt_seconds(step)))
        if interval:
            params.append(("interval", _fmt_seconds(interval)))
        data = client.get("/loki/api/v1/query_range", params)["data"]
        if data["resultType"] != "streams":
            print_metric(data["result"])
            break
        n, last = print_streams(args, printer, data["result"], last)
        got = sum(len(s["values"]) for s in data["result"])
        # logcli asks again until a batch prints nothing; a short batch already says there is no more
        if n <= 0 or not last or n == limit or got < bs:
            break
        if len(last) >= batch:
            raise CliError(f"invalid batch size {batch}: the next query would have {len(last)} overlapping entries "
                           f"(entries sharing one timestamp); use --batch {len(last) + 1} or more")
        total += n
        if args.forward:
            start = last[0][0]
        else:
            end = last[0][0] + 1
    return 0


def _fmt_seconds(s: float) -> str:
    return str(int(s)) if s == int(s) else repr(s)


def cmd_instant(args) -> int:
    _check_limits(args)
    printer = Printer(args)
    now = _when(args.now, time.time_ns(), "--now")
    if args.stdin:
        return run_stdin(args, printer, now, now, instant=True)
    client = Client(args)
    params = [("query", args.query), ("limit", str(args.limit or 30)), ("time", ts_param(now)),
              ("direction", "forward" if args.forward else "backward")]
    data = client.get("/loki/api/v1/query", params)["data"]
    if data["resultType"] == "streams":
        print_streams(args, printer, data["result"], [])
    else:
        print_metric(data["result"])
    return 0


def cmd_labels(args) -> int:
    client = Client(args)
    start, end = time_range(args)
    params = [("start", ts_param(start)), ("end", ts_param(end))]
    if args.label:
        from urllib.parse import quote
        path = f"/loki/api/v1/label/{quote(args.label, safe='')}/values"
    else:
        path = "/loki/api/v1/labels"
    for v in client.get(path, params).get("data") or []:
        print(v)
    return 0


def cmd_series(args) -> int:
    client = Client(args)
    start, end = time_range(args)
    data = client.get("/loki/api/v1/series", [("match[]", args.matcher), ("start", ts_param(start)),
                                               ("end", ts_param(end))]).get("data") or []
    if not args.analyze_labels:
        for s in data:
            print(labels_text(s))
        return 0
    names: dict[str, tuple[set, list]] = {}
    for s in data:
        for k, v in s.items():
            vals, count = names.setdefault(k, (set(), [0]))
            vals.add(v)
            count[0] += 1
    rows = sorted(names.items(), key=lambda kv: (-len(kv[1][0]), kv[0]))
    print("Total Streams: ", len(data))
    print("Unique Labels: ", len(names))
    print()
    table = [("Label Name", "Unique Values", "Found In Streams")]
    table += [(k, str(len(vals)), str(count[0])) for k, (vals, count) in rows]
    widths = [max(len(r[i]) for r in table) + 2 for i in range(3)]
    for r in table:  # Go tabwriter, padding 2, every cell tab-terminated
        print("".join(cell.ljust(w) for cell, w in zip(r, widths)))
    return 0


def humanize_bytes(n: int) -> str:
    """go-humanize ``Bytes``: SI units, one decimal below 10."""
    import math
    if n < 10:
        return f"{n} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = min(int(math.floor(math.log(n) / math.log(1000))), len(sizes) - 1)
    val = math.floor(n / 1000 ** e * 10 + 0.5) / 10
    return f"{val:.1f} {sizes[e]}" if val < 10 else f"{val:.0f} {sizes[e]}"


def cmd_stats(args) -> int:
    client = Client(args)
    start, end = time_range(args)
    st = client.get("/loki/api/v1/index/stats", [("query", args.matcher), ("start", ts_param(start)),
                                                  ("end", ts_param(end))])
    print("{")
    for k in ("streams", "chunks", "entries"):
        print(f"  {k}: {int(st.get(k, 0))}")
    print(f"  bytes: {humanize_bytes(int(st.get('bytes', 0)))}")
    print("}")
    return 0


# ------------------------------------------------------------------------------------------- tail
def run_tail(args, client: Client, printer: Printer, start: int) -> int:
    """Follow ``/loki/api/v1/tail`` until interrupted, printing each frame's entries as logcli does."""
    import asyncio

    if not 0 <= args.delay_for <= 5:
        raise CliError("--delay-for must be between 0 and 5 seconds")
    params = [("query", args.query), ("limit", str(args.limit or 30)), ("start", ts_param(start))]
    if args.delay_for:
        params.append(("delay_for", str(args.delay_for)))
    url = client.url("/loki/api/v1/tail", params)
    url = "ws" + url[4:] if url.startswith("http") else url
    if not args.quiet:
        print(url, file=sys.stderr)

    async def follow() -> None:
        import aiohttp
        import orjson
        try:
            async with aiohttp.ClientSession(headers=client.headers) as session:
                async with session.ws_connect(url, heartbeat=30) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                            aiohttp.WSMsgType.ERROR):
                                break
                            continue
                        frame = orjson.loads(msg.data)
                        rows = []
                        for s in frame.get("streams") or []:
                            labels = {} if args.no_labels else dict(s.get("stream") or {})
                            if args.include_label:
                                labels = _keep_only(labels, args.include_label)
                            if args.exclude_label:
                                labels = _drop(labels, args.exclude_label)
                            rows += [(int(v[0]), labels, v[1]) for v in s.get("values") or []]
                        # a frame groups lines by stream; print them in time order (logcli prints stream by stream)
                        rows.sort(key=lambda r: r[0])
                        for ts, labels, line in rows:
                            printer.entry(ts, labels, 0, line)
                        sys.stdout.flush()
                        dropped = frame.get("dropped_entries") or []
                        if dropped:
                            print("Server dropped following entries due to slow client", file=sys.stderr)
                            for d in dropped:
                                print(d.get("timestamp"), labels_text(d.get("labels") or {}), file=sys.stderr)
                    if ws.close_code and ws.close_code != 1000:
                        raise CliError(f"tail ended by the server (code {ws.close_code})")
        except aiohttp.WSServerHandshakeError as err:
            raise CliError(f"Error response from server: tail refused with status {err.status}: {err.message}")
        except aiohttp.ClientConnectorError as err:
            raise CliError(f"cannot connect to {client.addr}: {err.os_error or err}") from None
        except aiohttp.ClientError as err:
            raise CliError(f"tail failed: {err}") from None

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    return 0


# ------------------------------------------------------------------------------------------- --stdin
def run_stdin(args, printer: Printer, start: int, end: int, instant: bool) -> int:
    """Run the query over stdin lines (stream ``{source="logcli"}``), without a server."""
    from meshscope.query.logql import ast as A
    from meshscope.query.logql.engine import LogLine
    from meshscope.query.logql.evaluator import EvalError, Evaluator, Matrix, Scalar, Vector
    from meshscope.query.logql.lexer import LogQLSyntaxError
    from meshscope.query.logql.memsource import MemorySource
    from meshscope.query.logql.parser import parse
    from meshscope.query.logql.pipeline import Pipeline, PipelineError
    from meshscope.query.logql.re2util import RegexError, compile_re2
    from meshscope.query.loki_api import default_step_ns, matrix_json, streams_json, vector_json

    q = args.query
    if q.lstrip().startswith(("|", "!")):
        q = '{source="logcli"} ' + q
    try:
        expr = parse(q)
    except LogQLSyntaxError as err:
        raise CliError(str(err)) from None
    stream = {"source": "logcli"}
    lines = sys.stdin.read().splitlines()
    step_s = None if instant else _seconds(getattr(args, "step", None), "--step")
    step = int(step_s * NS) if step_s else default_step_ns(start, end)
    # Each line gets a distinct timestamp, in input order, ending at the last instant the query looks at:
    # the evaluation time, the last step of a range query, or just before the (exclusive) end of a log query.
    if instant:
        last = end
    elif A.is_log(expr):
        last = end - 1
    else:
        last = start + (end - start) // step * step
    entries = [(last - len(lines) + 1 + i, ln) for i, ln in enumerate(lines)]

    def selects(sel: A.Selector) -> bool:
        for m in sel.matchers:
            v = stream.get(m.name, "")
            if m.op == "=":
                ok = v == m.value
            elif m.op == "!=":
                ok = v != m.value
            else:
                ok = compile_re2(m.value, anchored=True).search(v) is not None
                ok = ok if m.op == "=~" else not ok
            if not ok:
                return False
        return True

    try:
        if A.is_log(expr):
            if instant:
                raise CliError("log queries are not supported as an instant query type, please change your query "
                               "to a range query type")
            lq = expr if isinstance(expr, A.LogQuery) else A.LogQuery(expr, [])
            out: list = []
            if selects(lq.selector):
                pipe = Pipeline(lq.stages)
                seq = entries if args.forward else list(reversed(entries))
                for ts, line in seq:
                    if not start <= ts < end:
                        continue
                    e = pipe.process(ts, line, stream, {})
                    if e is None:
                        continue
                    lb = e.labels
                    parsed = dict(lb.parsed)
                    if lb.error is not None:
                        parsed["__error__"] = lb.error
                    if lb.error_details is not None:
                        parsed["__error_details__"] = lb.error_details
                    out.append(LogLine(ts, e.line, lb.stream, lb.metadata, parsed))
                    if args.limit and len(out) >= args.limit:
                        break
            print_streams(args, printer, streams_json(out, False), [])
            return 0

        class Source(MemorySource):
            """Applies each range aggregation's own selector to the one stdin stream."""

            def samples(self, node, s, e):
                return super().samples(node, s, e) if selects(node.range.query.selector) else []

        ev = Evaluator(Source([(stream, {}, entries)]))
        if instant:
            res = ev.eval_instant(expr, end)
        else:
            res = ev.eval_range(expr, start, end, step)
    except (EvalError, PipelineError, RegexError) as err:
        raise CliError(str(err)) from None
    if isinstance(res, Matrix):
        print_metric(matrix_json(res))
    elif isinstance(res, Vector):
        print_metric(vector_json(res))
    elif isinstance(res, Scalar):
        from meshscope.query.logql.values import format_float
        from meshscope.query.loki_api import _ts_json
        print_metric([_ts_json(res.ts_ns), format_float(res.value)])
    return 0


# ------------------------------------------------------------------------------------------- entry point
COMMANDS = {"query": cmd_query, "instant-query": cmd_instant, "labels": cmd_labels, "series": cmd_series,
            "stats": cmd_stats}


def run_logs(args, parser: argparse.ArgumentParser | None = None) -> int:
    """Dispatch ``meshscope logs <command>``; every failure is one line on stderr and exit code 1."""
    fn = COMMANDS.get(getattr(args, "logs_command", None) or "")
    if fn is None:
        print("usage: meshscope logs {query,instant-query,labels,series,stats} ... (see meshscope logs -h)",
              file=sys.stderr)
        return 2
    return run_guarded(lambda: fn(args), "Query failed" if fn in (cmd_query, cmd_instant) else "Error")
