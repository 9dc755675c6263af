"""Go-compatible value conversions used by label filters and ``unwrap``.

Loki converts label values with Go's ``strconv.ParseFloat``, ``time.ParseDuration`` and go-humanize's
``ParseBytes``; the accepted syntax and the error texts (which end up in ``__error_details__``) are part of the
observable behaviour, so they are re-implemented here instead of using Python's more liberal parsers.
"""
from __future__ import annotations

import math
import re

__all__ = ["parse_float", "parse_go_duration", "parse_bytes", "format_float", "go_quote"]


# ------------------------------------------------------------------------------------------------ quoting
_GO_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
           '"': '\\"', "\\": "\\\\"}


def go_quote(s: str) -> str:
    """Go ``strconv.Quote``: error texts embed the input this way."""
    out = ['"']
    for ch in s:
        e = _GO_ESC.get(ch)
        if e is not None:
            out.append(e)
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append("\\x%02x" % cp)
            elif 0xD800 <= cp <= 0xDFFF:  # would be invalid UTF-8 in Go
                out.append("\\ufffd")
            elif cp < 0x10000:
                out.append("\\u%04x" % cp)
            else:
                out.append("\\U%08x" % cp)
    out.append('"')
    return "".join(out)


# ------------------------------------------------------------------------------------------------ ParseFloat
# Go float literal syntax (decimal or hex mantissa with mandatory p exponent), underscores checked separately.
_DEC_RE = re.compile(r"[+-]?(?:[0-9_]+\.?[0-9_]*|\.[0-9_]+)(?:[eE][+-]?[0-9_]+)?\Z")
_HEX_RE = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?[0-9_]+\Z")


def _underscore_ok(s: str) -> bool:
    """Go ``underscoreOK``: an underscore must sit between digits (or between the base prefix and a digit)."""
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1] in "bBoOxX":
        i = 2
        saw = "0"
        hexa = s[1] in "xX"
    n = len(s)
    while i < n:
        c = s[i]
        if "0" <= c <= "9" or (hexa and c in "abcdefABCDEF"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        i += 1
    return saw != "_"


def _special(s: str) -> float | None:
    """Go accepts (signed) inf/infinity and unsigned nan, case-insensitively."""
    low = s.lower()
    if low in ("inf", "+inf", "infinity", "+infinity"):
        return math.inf
    if low in ("-inf", "-infinity"):
        return -math.inf
    if low == "nan":
        return math.nan
    return None


def parse_float(s: str) -> float:
    """Go ``strconv.ParseFloat(s, 64)``; raises ValueError carrying Go's error text."""
    sp = _special(s)
    if sp is not None:
        return sp
    if _DEC_RE.match(s):
        if "_" in s:
            if not _underscore_ok(s):
                raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax")
            body = s.replace("_", "")
        else:
            body = s
        mant = re.split("[eE]", body)[0]
        if not any(c.isdigit() for c in mant):
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax")
        v = float(body)
        if math.isinf(v):
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: value out of range")
        return v
    if _HEX_RE.match(s):
        if "_" in s:
            if not _underscore_ok(s):
                raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax")
            body = s.replace("_", "")
        else:
            body = s
        mant = re.split("[pP]", body)[0].lstrip("+-")
        digits = mant[2:]
        if not any(c != "." for c in digits):
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax")
        try:
            v = float.fromhex(body)
        except OverflowError:
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: value out of range") from None
        except ValueError:
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax") from None
        if math.isinf(v):
            raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: value out of range")
        return v
    raise ValueError(f"strconv.ParseFloat: parsing {go_quote(s)}: invalid syntax")


# ------------------------------------------------------------------------------------------------ ParseDuration
_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_MAX = 1 << 63
_DUR_UNIT_RE = re.compile(r"[^0-9.]*")


def _time_quote(s: str) -> str:
    """Go ``time.quote``: non-ASCII and control characters become \\x escapes of their UTF-8 bytes."""
    out = ['"']
    for ch in s:
        if ord(ch) >= 0x80 or ch < " ":
            for b in ch.encode("utf-8", "surrogatepass"):
                out.append("\\x%02x" % b)
        else:
            if ch in '"\\':
                out.append("\\")
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_go_duration(s: str) -> int:
    """Go ``time.ParseDuration``: returns nanoseconds; units ns us µs μs ms s m h (no d/w/y)."""
    orig = s
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {_time_quote(orig)}")
    total = 0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if not (c == "." or "0" <= c <= "9"):
            raise ValueError(f"time: invalid duration {_time_quote(orig)}")
        # leading integer
        start = i
        v = 0
        while i < n and "0" <= s[i] <= "9":
            v = v * 10 + (ord(s[i]) - 48)
            if v > _MAX:
                raise ValueError(f"time: invalid duration {_time_quote(orig)}")
            i += 1
        pre = i != start
        f, scale, post = 0, 1.0, False
        if i < n and s[i] == ".":
            i += 1
            fstart = i
            overflow = False
            while i < n and "0" <= s[i] <= "9":
                if not overflow:
                    if f > (_MAX - 1) // 10:
                        overflow = True
                    else:
                        y = f * 10 + (ord(s[i]) - 48)
                        if y > _MAX:
                            overflow = True
                        else:
                            f = y
                            scale *= 10
                i += 1
            post = i != fstart
        if not pre and not post:
            raise ValueError(f"time: invalid duration {_time_quote(orig)}")
        m = _DUR_UNIT_RE.match(s, i)
        u = m.group()
        if not u:
            raise ValueError(f"time: missing unit in duration {_time_quote(orig)}")
        i = m.end()
        unit = _UNITS.get(u)
        if unit is None:
            raise ValueError(f"time: unknown unit {_time_quote(u)} in duration {_time_quote(orig)}")
        if v > _MAX // unit:
            raise ValueError(f"time: invalid duration {_time_quote(orig)}")
        v *= unit
        if f > 0:
            v += int(float(f) * (float(unit) / scale))
            if v > _MAX:
                raise ValueError(f"time: invalid duration {_time_quote(orig)}")
        total += v
        if total > _MAX:
            raise ValueError(f"time: invalid duration {_time_quote(orig)}")
    if neg:
        return -total
    if total > _MAX - 1:
        raise ValueError(f"time: invalid duration {_time_quote(orig)}")
    return total


# ------------------------------------------------------------------------------------------------ ParseBytes
_KI, _K = 1024, 1000
_BYTES_TABLE = {
    "b": 1, "": 1,
    "kib": _KI, "ki": _KI, "kb": _K, "k": _K,
    "mib": _KI ** 2, "mi": _KI ** 2, "mb": _K ** 2, "m": _K ** 2,
    "gib": _KI ** 3, "gi": _KI ** 3, "gb": _K ** 3, "g": _K ** 3,
    "tib": _KI ** 4, "ti": _KI ** 4, "tb": _K ** 4, "t": _K ** 4,
    "pib": _KI ** 5, "pi": _KI ** 5, "pb": _K ** 5, "p": _K ** 5,
    "eib": _KI ** 6, "ei": _KI ** 6, "eb": _K ** 6, "e": _K ** 6,
}
_MAX_UINT64_F = float(2 ** 64)


def parse_bytes(s: str) -> int:
    """go-humanize ``ParseBytes``: ``"13 MiB"`` → 13631488; ``kB``/``KB``/``k`` = 1000, ``KiB``/``Ki`` = 1024."""
    count = 0
    has_comma = False
    for ch in s:
        if not (ch.isdecimal() or ch == "." or ch == ","):
            break
        if ch == ",":
            has_comma = True
        count += 1
    if s.isascii():
        num, rest = s[:count], s[count:]
    else:  # Go counts runes but slices bytes; mimic that for non-ASCII digits
        raw = s.encode("utf-8", "surrogatepass")
        num = raw[:count].decode("utf-8", "replace")
        rest = raw[count:].decode("utf-8", "replace")
    if has_comma:
        num = num.replace(",", "")
    f = parse_float(num) if num.isascii() else _raise_float(num)
    extra = rest.strip().lower()
    m = _BYTES_TABLE.get(extra)
    if m is None:
        raise ValueError(f"unhandled size name: {extra}")
    f *= m
    if f >= _MAX_UINT64_F:
        raise ValueError(f"too large: {s}")
    if math.isnan(f):  # Go's uint64(NaN) is platform-defined; treat as 0
        return 0
    return int(f)


def _raise_float(num: str) -> float:
    raise ValueError(f"strconv.ParseFloat: parsing {go_quote(num)}: invalid syntax")


# ------------------------------------------------------------------------------------------------ FormatFloat
def format_float(v: float) -> str:
    """Go ``strconv.FormatFloat(v, 'f', -1, 64)``: shortest round-trip digits, never an exponent."""
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    r = repr(float(v))
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    if "e" in r:
        mant, exp_s = r.split("e")
        exp = int(exp_s)
    else:
        mant, exp = r, 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = (ip + fp).lstrip("0")
    # position of the decimal point relative to the start of ip+fp
    point = len(ip) + exp
    lead_zeros = len(ip + fp) - len((ip + fp).lstrip("0"))
    point -= lead_zeros
    digits = digits.rstrip("0")
    if not digits:
        return sign + "0"
    if point <= 0:
        return sign + "0." + "0" * (-point) + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]
