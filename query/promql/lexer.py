"""PromQL tokenizer (the token classes of Prometheus' ``promql/parser/lex.go``).

Words are returned as ``ident`` tokens whatever they spell: whether ``on`` or ``sum`` is a keyword depends on
where it stands (label lists accept keywords as label names), so the parser decides, case-insensitively, as
Prometheus does for keywords and aggregators.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PromQLError

__all__ = ["Token", "tokenize", "parse_duration", "unquote", "position"]


@dataclass
class Token:
    kind: str      # num | str | dur | ident | op | eof
    value: object  # float for num, str for str/ident/op, int ns for dur
    pos: int
    text: str

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of input"
        if self.kind == "num":
            return f"number {self.text!r}".replace("'", '"')
        if self.kind == "str":
            return f"string {self.text}"
        if self.kind == "dur":
            return f"duration \"{self.text}\""
        if self.kind == "ident":
            return f"identifier \"{self.text}\""
        return f"\"{self.text}\""


_DUR_RE = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_NUM_RE = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IDENT_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9,
            "w": 7 * 86400 * 10**9, "y": 365 * 86400 * 10**9}
_OPS = ["==", "!=", "<=", ">=", "=~", "!~", "+", "-", "*", "/", "%", "^", "<", ">", "=", "(", ")", "{", "}",
        "[", "]", ",", ":", "@"]
_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


_DIGITS = "0123456789"


def _is_word(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def position(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of a character offset (Prometheus prints ``line:col``)."""
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def parse_duration(s: str) -> int:
    """Prometheus ``model.ParseDuration`` (units y w d h m s ms, each at most once, descending) → ns."""
    if s == "0":
        return 0
    m = _DUR_RE.fullmatch(s)
    if not m:
        raise ValueError(f"not a valid duration string: {s!r}")
    total = 0
    last = None
    order = ["y", "w", "d", "h", "m", "s", "ms"]
    for num, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", s):
        idx = order.index(unit)
        if last is not None and idx <= last:
            raise ValueError(f"not a valid duration string: {s!r}")
        last = idx
        total += int(num) * _UNIT_NS[unit]
    return total


def unquote(body: str, quote: str) -> str:
    """Go ``strconv.Unquote`` of the text between the quotes; invalid UTF-8 kept as surrogate escapes."""
    if quote == "`":
        return body
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("escape sequence not terminated")
        e = body[i + 1]
        if e in _ESC:
            if (e == "'" and quote == '"') or (e == '"' and quote == "'"):
                raise ValueError("unknown escape sequence")
            out.append(_ESC[e])
            i += 2
        elif e == "x":
            h = body[i + 2:i + 4]
            if len(h) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise ValueError("invalid escape")
            out.append(int(h, 16))
            i += 4
        elif e in "01234567":
            o = body[i + 1:i + 4]
            if len(o) != 3 or not all(ch in "01234567" for ch in o) or int(o, 8) > 255:
                raise ValueError("invalid escape")
            out.append(int(o, 8))
            i += 4
        elif e in "uU":
            k = 4 if e == "u" else 8
            h = body[i + 2:i + 2 + k]
            if len(h) != k or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise ValueError("invalid escape")
            cp = int(h, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise ValueError("invalid escape")
            out += chr(cp).encode("utf-8")
            i += 2 + k
        else:
            raise ValueError("unknown escape sequence")
    return out.decode("utf-8", "surrogateescape")


def _err(text: str, pos: int, msg: str) -> PromQLError:
    line, col = position(text, pos)
    return PromQLError(f"{line}:{col}: parse error: {msg}", "bad_data")


def tokenize(text: str) -> list[Token]:
    toks: list[Token] = []
    i, n = 0, len(text)
    brackets = 0  # inside [...] a ':' separates range and step instead of starting a name
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "\"'`":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\" and c != "`":
                    j += 1
                elif text[j] == "\n" and c != "`":
                    break
                j += 1
            if j >= n or text[j] != c:
                raise _err(text, i, "unterminated quoted string")
            try:
                val = unquote(text[i + 1:j], c)
            except ValueError as err:
                raise _err(text, i, f"invalid syntax in string: {err}") from None
            toks.append(Token("str", val, i, text[i:j + 1]))
            i = j + 1
            continue
        if c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
            m = _DUR_RE.match(text, i)
            if m and not (m.end() < n and (_is_word(text[m.end()]) or text[m.end()] == ".")):
                try:
                    toks.append(Token("dur", parse_duration(m.group()), i, m.group()))
                except ValueError as err:
                    raise _err(text, i, str(err)) from None
                i = m.end()
                continue
            m = _NUM_RE.match(text, i)
            end = m.end()
            if end < n and (_is_word(text[end]) or text[end] == "."):
                raise _err(text, i, f"bad number or duration syntax: \"{text[i:end + 1]}\"")
            s = m.group()
            toks.append(Token("num", float(int(s, 16)) if s[:2].lower() == "0x" else float(s), i, s))
            i = end
            continue
        if (c.isascii() and c.isalpha()) or c == "_" or (c == ":" and not brackets):
            m = _IDENT_RE.match(text, i)
            word = m.group()
            low = word.lower()
            if low in ("inf", "nan"):
                toks.append(Token("num", float(low), i, word))
            else:
                toks.append(Token("ident", word, i, word))
            i = m.end()
            continue
        for op in _OPS:
            if text.startswith(op, i):
                toks.append(Token("op", op, i, op))
                brackets += (op == "[") - (op == "]")
                i += len(op)
                break
        else:
            if c == "!":
                raise _err(text, i, "unexpected character after '!': " + repr(text[i + 1:i + 2] or "EOF"))
            raise _err(text, i, f"unexpected character: {c!r}")
    toks.append(Token("eof", None, n, ""))
    return toks
