"""Parser for Prometheus ``promqltest`` files (``promql/promqltest/testdata/*.test``).

Commands: ``load <interval>`` / ``load_with_nhcb <interval>`` with series lines in the compact notation
(``a{b="c"} 0+10x5 _ _x3 stale 1x2 {{native}}``), ``clear``, ``eval instant at <t> <q>``,
``eval range from <t> to <t> step <d> <q>`` (and the old ``eval_fail``/``eval_ordered``/``eval_warn``/
``eval_info`` spellings) followed by expectation lines: ``expect fail [msg:|regex: ...]``, ``expect ordered``,
``expect string "..."``, ``expect range vector from <t> to <t> step <d>``, ``expect warn|info|no_warn|no_info``
(annotations: accepted and ignored) and result lines ``{labels} value...`` or a bare number.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .lexer import parse_duration, unquote

__all__ = ["Load", "Clear", "Eval", "SeriesLine", "parse_testfile", "parse_series_desc", "parse_values",
           "parse_time", "STALE", "NATIVE"]

STALE = "stale"
NATIVE = "native"


@dataclass
class SeriesLine:
    labels: dict[str, str]
    values: list  # float | None (omitted) | STALE | NATIVE


@dataclass
class Load:
    interval_ns: int
    series: list[SeriesLine]
    line: int
    nhcb: bool = False


@dataclass
class Clear:
    line: int


@dataclass
class Eval:
    query: str
    line: int
    instant: bool
    time_ns: int = 0
    start_ns: int = 0
    end_ns: int = 0
    step_ns: int = 0
    fail: bool = False
    fail_msg: str | None = None
    fail_regex: str | None = None
    ordered: bool = False
    string: str | None = None
    range_vector: tuple[int, int, int] | None = None
    expected: list[SeriesLine] = field(default_factory=list)
    scalar: float | None = None
    native: bool = False  # an expectation is a native histogram
    text: str = ""


_NUM = r"[+-]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf|[Nn]a[Nn])"
_UNUM = r"(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf|[Nn]a[Nn])"
_EXPAND = re.compile(rf"({_NUM})(?:([+-])({_UNUM}))?x(\d+)")
_TOKEN = re.compile(r"\{\{.*?\}\}(?:[+-]\{\{.*?\}\})?(?:x\d+)?|\S+")


def _num(s: str) -> float:
    s2 = s.lower().lstrip("+")
    if s2 in ("inf", "-inf", "nan"):
        return float(s2)
    if s2.lstrip("-").startswith("0x"):
        return float(int(s2, 16))
    return float(s)


def parse_time(s: str) -> int:
    """``10m`` or plain seconds → ns."""
    try:
        return parse_duration(s)
    except ValueError:
        return int(round(float(s) * 1e9))


def parse_values(text: str) -> list:
    out: list = []
    for tok in _TOKEN.findall(text):
        if tok.startswith("{{"):
            m = re.search(r"x(\d+)$", tok)
            times = int(m.group(1)) + 1 if m and "}}" in tok[:m.start() + 1] else 1
            out.extend([NATIVE] * times)
            continue
        if tok == "_":
            out.append(None)
            continue
        if tok.startswith("_x"):
            out.extend([None] * int(tok[2:]))
            continue
        if tok == "stale":
            out.append(STALE)
            continue
        m = _EXPAND.fullmatch(tok)
        if m:
            start = _num(m.group(1))
            inc = 0.0
            if m.group(2):
                inc = _num(m.group(3)) * (-1 if m.group(2) == "-" else 1)
            cur = start
            for _ in range(int(m.group(4)) + 1):
                out.append(cur)
                cur += inc
            continue
        out.append(_num(tok))
    return out


def _split_series(line: str) -> tuple[str, str]:
    """Split ``name{labels} rest`` at the end of the label block (quotes respected)."""
    i = 0
    n = len(line)
    while i < n and not line[i].isspace() and line[i] != "{":
        i += 1
    if i < n and line[i] == "{":
        depth_q = None
        while i < n:
            c = line[i]
            if depth_q:
                if c == "\\":
                    i += 2
                    continue
                if c == depth_q:
                    depth_q = None
            elif c in "\"'`":
                depth_q = c
            elif c == "}":
                i += 1
                break
            i += 1
    return line[:i], line[i:]


def parse_series_desc(desc: str) -> dict[str, str]:
    """``name{a="b", "c.d"="e"}`` → labels (``__name__`` included)."""
    desc = desc.strip()
    labels: dict[str, str] = {}
    brace = desc.find("{")
    name = desc if brace < 0 else desc[:brace]
    if name:
        labels["__name__"] = name
    if brace >= 0:
        body = desc[brace + 1:desc.rfind("}")]
        pos = 0
        pat = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\"(?:[^\"\\]|\\.)*\"))\s*(?:=\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|`[^`]*`))?\s*,?")
        while pos < len(body):
            m = pat.match(body, pos)
            if not m or m.end() == pos:
                raise ValueError(f"bad series description: {desc}")
            pos = m.end()
            lname = m.group(1) or unquote(m.group(2)[1:-1], '"')
            if m.group(3) is None:  # a quoted metric name inside the braces
                labels["__name__"] = lname
                continue
            q = m.group(3)
            labels[lname] = unquote(q[1:-1], q[0])
    return labels


_CMD = re.compile(r"^(load|load_with_nhcb|clear|eval|eval_fail|eval_ordered|eval_warn|eval_info)\b")


def parse_testfile(text: str) -> list:
    lines = text.split("\n")
    cmds: list = []
    i = 0
    n = len(lines)
    while i < n:
        raw = lines[i]
        line = raw.strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        m = _CMD.match(line)
        if not m:
            raise ValueError(f"line {i}: unexpected {line!r}")
        cmd = m.group(1)
        if cmd == "clear":
            cmds.append(Clear(i))
            continue
        if cmd.startswith("load"):
            interval = parse_time(line.split()[1])
            series = []
            start = i
            while i < n and lines[i].strip() and not _CMD.match(lines[i].strip()):
                s = lines[i].strip()
                i += 1
                if s.startswith("#"):
                    continue
                desc, vals = _split_series(s)
                series.append(SeriesLine(parse_series_desc(desc), parse_values(vals)))
            cmds.append(Load(interval, series, start, cmd == "load_with_nhcb"))
            continue
        # eval
        ev = _parse_eval_head(line, cmd, i)
        while i < n and lines[i].strip() and not _CMD.match(lines[i].strip()):
            s = lines[i].strip()
            i += 1
            if s.startswith("#"):
                continue
            _parse_expect(ev, s)
        cmds.append(ev)
    return cmds


_INSTANT = re.compile(r"^instant\s+at\s+(\S+)\s+(.*)$")
_RANGE = re.compile(r"^range\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+)\s+(.*)$")


def _parse_eval_head(line: str, cmd: str, lineno: int) -> Eval:
    rest = line[len(cmd):].strip()
    m = _INSTANT.match(rest)
    if m:
        ev = Eval(m.group(2), lineno, True, time_ns=parse_time(m.group(1)))
    else:
        m = _RANGE.match(rest)
        if not m:
            raise ValueError(f"line {lineno}: invalid eval {line!r}")
        ev = Eval(m.group(4), lineno, False, start_ns=parse_time(m.group(1)), end_ns=parse_time(m.group(2)),
                  step_ns=parse_time(m.group(3)))
    ev.text = line
    if cmd == "eval_fail":
        ev.fail = True
    elif cmd == "eval_ordered":
        ev.ordered = True
    return ev


def _parse_expect(ev: Eval, s: str) -> None:
    if s.startswith("expect "):
        body = s[len("expect "):].strip()
        word = body.split()[0] if body.split() else ""
        tail = body[len(word):].strip()
        if word == "fail":
            ev.fail = True
            if tail.startswith("msg:"):
                ev.fail_msg = tail[4:].strip()
            elif tail.startswith("regex:"):
                ev.fail_regex = tail[6:].strip()
        elif word == "ordered":
            ev.ordered = True
        elif word == "string":
            q = tail
            ev.string = unquote(q[1:-1], q[0]) if q and q[0] in "\"'`" else q
        elif word == "range":
            m = re.match(r"vector\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+)", tail)
            if m:
                ev.range_vector = (parse_time(m.group(1)), parse_time(m.group(2)), parse_time(m.group(3)))
        # warn / info / no_warn / no_info: annotations are not produced; accepted and ignored
        return
    if "{{" in s:
        ev.native = True
    if re.fullmatch(_NUM, s):
        ev.scalar = _num(s)
        return
    desc, vals = _split_series(s)
    ev.expected.append(SeriesLine(parse_series_desc(desc), parse_values(vals)))


def almost_equal(a: float, b: float, eps: float = 1e-6) -> bool:
    """Prometheus ``almost.Equal``: NaN equals NaN, otherwise relative tolerance."""
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    absum = abs(a) + abs(b)
    diff = abs(a - b)
    min_normal = 2.2250738585072014e-308
    if a == 0 or b == 0 or absum < min_normal:
        return diff < eps * min_normal
    return diff / min(absum, 1.7976931348623157e308) < eps


__all__ += ["almost_equal"]
