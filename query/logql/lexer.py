"""LogQL tokenizer (mirrors Loki's lex.go token classes)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .values import parse_bytes, parse_go_duration


class LogQLSyntaxError(ValueError):
    """A query Loki would refuse; line 0 means the error has no position (Loki prints ``parse error : msg``)."""

    def __init__(self, msg: str, line: int = 1, col: int = 1):
        self.msg, self.line, self.col = msg, line, col
        where = f" at line {line}, col {col}" if line else " "
        super().__init__(f"parse error{where}: {msg}")


KEYWORDS = {
    "by", "without", "bool", "on", "ignoring", "group_left", "group_right", "offset", "json", "logfmt",
    "regexp", "unpack", "pattern", "line_format", "label_format", "decolorize", "drop", "keep", "unwrap",
    "or", "and", "unless",
}
RANGE_OPS = {
    "count_over_time", "rate", "rate_counter", "bytes_over_time", "bytes_rate", "avg_over_time",
    "sum_over_time", "min_over_time", "max_over_time", "stdvar_over_time", "stddev_over_time",
    "quantile_over_time", "first_over_time", "last_over_time", "absent_over_time",
}
VECTOR_OPS = {"sum", "avg", "count", "max", "min", "stddev", "stdvar", "bottomk", "topk", "sort", "sort_desc",
              "approx_topk"}
FUNCTIONS = RANGE_OPS | VECTOR_OPS | {"bytes", "duration", "duration_seconds", "ip", "vector", "label_replace"}

# Ranges and offsets (LogQL's and PromQL's) are kept within 2^62 ns, 146 years, so that query times minus a range
# or an offset still fit in an int64.
MAX_DURATION_NS = 1 << 62
YEAR_NS = 365 * 86400 * 10**9
DIGITS = "0123456789"  # Go's scanner: ASCII digits only ("²" is not a number)
OPERATORS = ["|=", "|~", "|>", "!=", "!~", "!>", "=~", "==", ">=", "<=",
             "|", "{", "}", "(", ")", ",", "=", ">", "<", "+", "-", "*", "/", "%", "^"]

_NUM = re.compile(r"0[xX][0-9a-fA-F_]+(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?\d+)?|0[bB][01_]+|0[oO][0-7_]+"
                  r"|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DUR = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h|d|w|y))+")
_BYTES = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[bB]|[kKmMgGtTpPeE][iI]?[bB]?)")
_PROM_DUR = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_prom_duration(s: str) -> int:
    """Prometheus model.ParseDuration with Go time.ParseDuration fallback; returns nanoseconds."""
    m = _PROM_DUR.match(s)
    if s and s != "" and m and any(m.groups()):
        mult = [365 * 86400, 7 * 86400, 86400, 3600, 60, 1]
        ns = sum(int(g) * k * 10**9 for g, k in zip(m.groups()[:6], mult) if g)
        if m.group(7):
            ns += int(m.group(7)) * 10**6
        return ns
    if s == "0":
        return 0
    return parse_go_duration(s)


def is_function_lookahead(rest: str) -> bool:
    """Loki's look-ahead: next non-space is '(' or by/without followed by '('."""
    rest = rest.lstrip()
    if rest.startswith("("):
        return True
    return bool(re.match(r"(?i)(by|without)\s*\(", rest))


@dataclass
class Token:
    kind: str   # OP, STRING, NUMBER, DURATION, BYTES, RANGE, IDENT, KEYWORD, FUNC, FLAG, EOF
    value: object
    text: str
    line: int
    col: int

    def is_(self, kind: str, value=None) -> bool:
        return self.kind == kind and (value is None or self.value == value)

    def describe(self) -> str:
        if self.kind == "EOF":
            return "$end"
        if self.kind == "FUNC":  # yacc names function tokens in upper case, except ip
            return "ip" if self.value == "ip" else str(self.value).upper()
        if self.kind in ("OP", "KEYWORD"):
            return str(self.value)
        return {"IDENT": "IDENTIFIER", "FLAG": "FUNCTION_FLAG"}.get(self.kind, self.kind)


_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
        "'": "'"}


def _is_ident_start(c: str) -> bool:
    return c == "_" or c.isalpha()


def _is_ident_char(c: str) -> bool:
    return c == "_" or c.isalnum()


class Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.col = 1
        self.toks: list[Token] = []

    def error(self, msg, line=None, col=None):
        raise LogQLSyntaxError(msg, line or self.line, col or self.col)

    def _advance(self, n: int) -> str:
        s = self.text[self.pos:self.pos + n]
        for ch in s:
            if ch == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
        self.pos += n
        return s

    def _skip_ws(self) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t\r\n":
                self._advance(1)
            elif c == "#":
                end = t.find("\n", self.pos)
                self._advance((end if end >= 0 else len(t)) - self.pos)
            else:
                break

    def _is_function(self, end: int) -> bool:
        return is_function_lookahead(self.text[end:])

    def _string(self) -> str:
        t = self.text
        q = t[self.pos]
        line, col = self.line, self.col
        i = self.pos + 1
        if q == "`":
            end = t.find("`", i)
            if end < 0:
                self.error("literal not terminated", line, col)
            val = t[i:end]
            self._advance(end + 1 - self.pos)
            return val
        out = []
        while True:
            if i >= len(t) or t[i] == "\n":
                self.error("literal not terminated", line, col)
            c = t[i]
            if c == '"':
                break
            if c == "\\":
                if i + 1 >= len(t):
                    self.error("literal not terminated", line, col)
                e = t[i + 1]
                if e in _ESC:
                    out.append(_ESC[e])
                    i += 2
                elif e in "xuU":
                    n = {"x": 2, "u": 4, "U": 8}[e]
                    h = t[i + 2:i + 2 + n]
                    if len(h) != n or not re.fullmatch(r"[0-9a-fA-F]+", h):
                        self.error("invalid syntax", line, col)
                    cp = int(h, 16)
                    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:  # Go's Unquote: no surrogate halves, nothing past
                        self.error("invalid syntax", line, col)
                    out.append(chr(cp))  # \x byte escapes approximated as code points
                    i += 2 + n
                elif e in "01234567":
                    o = t[i + 1:i + 4]
                    if not re.fullmatch(r"[0-7]{3}", o):
                        self.error("invalid syntax", line, col)
                    out.append(chr(int(o, 8)))
                    i += 4
                else:
                    self.error("invalid syntax", line, col)
            else:
                out.append(c)
                i += 1
        self._advance(i + 1 - self.pos)
        return "".join(out)

    def tokens(self) -> list[Token]:
        toks: list[Token] = self.toks
        t = self.text
        while True:
            self._skip_ws()
            line, col = self.line, self.col
            if self.pos >= len(t):
                toks.append(Token("EOF", None, "", line, col))
                return toks
            c = t[self.pos]
            start = self.pos

            def tok(kind, value):
                toks.append(Token(kind, value, t[start:self.pos], line, col))

            if c in "\"`":
                v = self._string()
                tok("STRING", v)
                continue
            if c == "[":
                end = t.find("]", self.pos)
                if end < 0:
                    self.error("missing closing ']' in duration", line, col)
                ns = self._dur_value(t[self.pos + 1:end].strip(), line, col)
                self._advance(end + 1 - self.pos)
                tok("RANGE", ns)
                continue
            if t.startswith("--", self.pos):
                m = re.compile(r"--[A-Za-z][A-Za-z\-]*").match(t, self.pos)
                if m:
                    self._advance(m.end() - self.pos)
                    tok("FLAG", m.group(0))
                    continue
            # negative duration glued to '-'
            if c == "-" and self.pos + 1 < len(t) and (t[self.pos + 1].isdigit() or t[self.pos + 1] == "."):
                m = _DUR.match(t, self.pos + 1)
                if m and not (m.end() < len(t) and _is_ident_char(t[m.end()])):
                    self._advance(m.end() - self.pos)
                    tok("DURATION", self._dur_value(t[start:self.pos], line, col))
                    continue
            if c in DIGITS or (c == "." and self.pos + 1 < len(t) and t[self.pos + 1] in DIGITS):
                m = _DUR.match(t, self.pos)
                if m and not (m.end() < len(t) and _is_ident_char(t[m.end()])):
                    self._advance(m.end() - self.pos)
                    tok("DURATION", self._dur_value(t[start:self.pos], line, col))
                    continue
                m = _BYTES.match(t, self.pos)
                if m and not (m.end() < len(t) and _is_ident_char(t[m.end()])):
                    self._advance(m.end() - self.pos)
                    tok("BYTES", parse_bytes(m.group(0)))
                    continue
                m = _NUM.match(t, self.pos)
                self._advance(m.end() - self.pos)
                tok("NUMBER", m.group(0))
                continue
            if _is_ident_start(c):
                i = self.pos
                while i < len(t) and _is_ident_char(t[i]):
                    i += 1
                word = t[self.pos:i]
                low = word.lower()
                if low in FUNCTIONS and self._is_function(i):
                    self._advance(i - self.pos)
                    tok("FUNC", low)
                elif low in KEYWORDS:
                    self._advance(i - self.pos)
                    tok("KEYWORD", low)
                else:
                    self._advance(i - self.pos)
                    tok("IDENT", word)
                continue
            for op in OPERATORS:
                if t.startswith(op, self.pos):
                    self._advance(len(op))
                    tok("OP", op)
                    break
            else:
                self.error(f"unexpected character {c!r}", line, col)

    def _dur_value(self, text: str, line: int, col: int) -> int:
        try:
            ns = parse_prom_duration(text)
        except ValueError as e:
            self.error(str(e), line, col)
        if ns > MAX_DURATION_NS:  # query times minus a range or an offset must still fit in an int64
            self.error(f"duration out of range: {text} (at most {MAX_DURATION_NS // YEAR_NS}y)",
                       line, col)
        return ns


def tokenize(text: str | bytes, lenient: bool = False) -> list[Token]:
    """Tokenize ``text``; with ``lenient`` a lexical error ends the stream instead of raising."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            head = bytes(text[:e.start]).decode("utf-8", "replace")
            qpos = max(head.rfind('"'), head.rfind("`"))
            start = head[:qpos] if qpos >= 0 else head
            raise LogQLSyntaxError("invalid UTF-8 encoding", start.count("\n") + 1,
                                   len(start) - (start.rfind("\n") + 1) + 1) from None
    if len(text.encode("utf-8")) > 131072:
        raise LogQLSyntaxError("input size too long", 1, 1)
    lx = Lexer(text)
    try:
        return lx.tokens()
    except LogQLSyntaxError:
        if not lenient:
            raise
        return lx.toks + [Token("EOF", None, "", lx.line, lx.col)]
