"""A Go ``text/template`` work-alike for LogQL's ``line_format`` and ``label_format`` stages.

Loki runs these stages through Go's ``text/template`` (option ``missingkey=zero``) with a fixed function map
(a few Loki helpers, a subset of sprig, the Go builtins). Users copy templates from Loki docs and dashboards, so
the point of this module is to *behave like Go*: the same lexing quirks (trim markers, comments), the same
typing rules when a value is passed to a function (``wrong type for value; expected int; got int64``), the same
printing of values (``3e+06``, ``map[a:1]``, ``2022-06-27 00:00:00 +0000 UTC``) and Go-shaped error messages.

Pipeline: ``_Lexer`` (tokens) -> ``_Parser`` (parse tree of ``_Node`` subclasses) -> ``_State`` (tree walker).
Values are plain Python objects: ``str``, ``bool``, ``int`` (Go ``int``), ``I64`` (Go ``int64``), ``float``
(``float64``), ``GoTime`` (``time.Time``), ``list`` (``[]interface{}``), ``dict`` (``map[string]interface{}``),
``None`` (nil). The template data is the label map (``map[string]string``). Nothing ever touches Python
attributes of values: fields are map lookups, methods come from a fixed whitelist on ``GoTime``.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import time as _time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Callable

import re2

from .values import parse_bytes, parse_float, parse_go_duration

__all__ = ["compile_template", "Template", "TemplateSyntaxError", "TemplateExecError", "GoTime", "I64",
           "go_sprint", "go_sprintf", "format_float", "MAX_TEMPLATE_LEN", "MAX_OUTPUT", "MAX_ITERATIONS"]

MAX_TEMPLATE_LEN = 64 * 1024      # bytes of template source
MAX_OUTPUT = 1024 * 1024          # characters produced by one execution (also caps repeat/indent results)
MAX_ITERATIONS = 100_000          # range iterations per execution, all loops together
MAX_DEPTH = 100                   # nested {{template}} calls


class TemplateSyntaxError(ValueError):
    """The template does not parse (Go: error returned by ``Template.Parse``)."""


class TemplateExecError(Exception):
    """Executing the template failed (Go: error returned by ``Template.Execute``)."""


class I64(int):
    """A Go ``int64`` (sprig arithmetic returns these). Plain ``int`` is Go ``int``; the difference matters
    because Go refuses to pass an ``int64`` where an ``int`` parameter is expected."""

    __slots__ = ()

    def __repr__(self):
        return f"I64({int(self)})"


def _wrap64(v: int) -> I64:
    return I64(((v + (1 << 63)) % (1 << 64)) - (1 << 63))


# ================================================================================================ time
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_UNIX_TO_INTERNAL = 62135596800  # seconds from 0001-01-01 to 1970-01-01


class _FixedZone(tzinfo):
    """Go's ``time.FixedZone(name, offset)``: ``name`` may be empty (then Go prints ``+0200``)."""

    def __init__(self, name: str, offset: int):
        self.name, self.offset = name, offset

    def utcoffset(self, dt):
        return timedelta(seconds=self.offset)

    def dst(self, dt):
        return timedelta(0)

    def tzname(self, dt):
        return self.name

    def __eq__(self, other):
        return isinstance(other, _FixedZone) and (self.name, self.offset) == (other.name, other.offset)

    def __hash__(self):
        return hash((self.name, self.offset))


def _local_zone() -> tzinfo:
    """Go's ``time.Local``: $TZ, else /etc/localtime, else UTC."""
    try:
        from zoneinfo import ZoneInfo
        tz = os.environ.get("TZ")
        if tz is not None:
            tz = tz.lstrip(":")
            return _UTC if tz in ("", "UTC") else ZoneInfo(tz)
        if os.path.exists("/etc/localtime"):
            with open("/etc/localtime", "rb") as f:
                return ZoneInfo.from_file(f)
    except Exception:  # noqa: BLE001 - any failure means "no usable local zone"
        pass
    return _UTC


LOCAL: tzinfo = _local_zone()


def _load_location(name: str) -> tzinfo | None:
    """``time.LoadLocation``: None when unknown."""
    if name in ("", "UTC"):
        return _UTC
    if name == "Local":
        return LOCAL
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception:  # noqa: BLE001
        return None


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (works for year 0 and below, unlike datetime)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _zone_at(tz: tzinfo, unix: int) -> tuple[str, int]:
    """(abbreviation, offset seconds) of ``tz`` at a unix second."""
    if tz is _UTC:
        return "UTC", 0
    try:
        dt = (_EPOCH + timedelta(seconds=unix)).astimezone(tz)
        off = dt.utcoffset()
        return dt.tzname() or "", int(off.total_seconds()) if off is not None else 0
    except (OverflowError, ValueError):
        return "UTC", 0


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


@dataclass(frozen=True)
class GoTime:
    """A Go ``time.Time``: an instant (unix seconds + nanoseconds) and the zone it is shown in."""

    sec: int
    nsec: int = 0
    tz: tzinfo = _UTC

    @staticmethod
    def from_unix_nano(ns: int, tz: tzinfo | None = None) -> "GoTime":
        s, n = divmod(int(ns), 1_000_000_000)
        return GoTime(s, n, LOCAL if tz is None else tz)

    @staticmethod
    def now() -> "GoTime":
        return GoTime.from_unix_nano(_time.time_ns())

    def in_zone(self, tz: tzinfo) -> "GoTime":
        return GoTime(self.sec, self.nsec, tz)

    def unix_nano(self) -> int:
        return self.sec * 1_000_000_000 + self.nsec

    def is_zero(self) -> bool:
        return self.sec == -_UNIX_TO_INTERNAL and self.nsec == 0

    def fields(self):
        """(year, month, day, hour, minute, second, weekday 0=Sunday, yearday, zone name, offset)."""
        name, off = _zone_at(self.tz, self.sec)
        local = self.sec + off
        days, rem = divmod(local, 86400)
        y, m, d = _civil_from_days(days)
        yday = days - _days_from_civil(y, 1, 1) + 1
        return y, m, d, rem // 3600, rem // 60 % 60, rem % 60, (days + 4) % 7, yday, name, off

    def format(self, layout: str) -> str:
        return _time_format(self, layout)

    def __str__(self):
        return _time_format(self, "2006-01-02 15:04:05.999999999 -0700 MST")


ZERO_TIME = GoTime(-_UNIX_TO_INTERNAL, 0, _UTC)

# layout chunk codes
(_STD_LONG_MONTH, _STD_MONTH, _STD_NUM_MONTH, _STD_ZERO_MONTH, _STD_LONG_WEEKDAY, _STD_WEEKDAY, _STD_DAY,
 _STD_UNDER_DAY, _STD_ZERO_DAY, _STD_UNDER_YDAY, _STD_ZERO_YDAY, _STD_HOUR, _STD_HOUR12, _STD_ZERO_HOUR12,
 _STD_MINUTE, _STD_ZERO_MINUTE, _STD_SECOND, _STD_ZERO_SECOND, _STD_LONG_YEAR, _STD_YEAR, _STD_PM, _STD_pm,
 _STD_TZ, _STD_ISO_TZ, _STD_ISO_SHORT_TZ, _STD_ISO_COLON_TZ, _STD_ISO_SECS_TZ, _STD_ISO_COLON_SECS_TZ,
 _STD_NUM_TZ, _STD_NUM_SHORT_TZ, _STD_NUM_COLON_TZ, _STD_NUM_SECS_TZ, _STD_NUM_COLON_SECS_TZ,
 _STD_FRAC0, _STD_FRAC9) = range(1, 36)

_TZ_PREFIXES = [("Z070000", _STD_ISO_SECS_TZ), ("Z07:00:00", _STD_ISO_COLON_SECS_TZ), ("Z0700", _STD_ISO_TZ),
                ("Z07:00", _STD_ISO_COLON_TZ), ("Z07", _STD_ISO_SHORT_TZ)]
_NUM_TZ_PREFIXES = [("-070000", _STD_NUM_SECS_TZ), ("-07:00:00", _STD_NUM_COLON_SECS_TZ),
                    ("-0700", _STD_NUM_TZ), ("-07:00", _STD_NUM_COLON_TZ), ("-07", _STD_NUM_SHORT_TZ)]


def _next_std_chunk(layout: str):
    """Split a Go layout at its first reference element: (prefix, code, arg, suffix); code 0 = none."""
    n = len(layout)
    for i, c in enumerate(layout):
        rest = layout[i:]
        if c == "J" and rest.startswith("Jan"):
            if rest.startswith("January"):
                return layout[:i], _STD_LONG_MONTH, 0, layout[i + 7:]
            return layout[:i], _STD_MONTH, 0, layout[i + 3:]
        if c == "M":
            if rest.startswith("Monday"):
                return layout[:i], _STD_LONG_WEEKDAY, 0, layout[i + 6:]
            if rest.startswith("Mon"):
                return layout[:i], _STD_WEEKDAY, 0, layout[i + 3:]
            if rest.startswith("MST"):
                return layout[:i], _STD_TZ, 0, layout[i + 3:]
        if c == "0":
            if i + 1 < n and "1" <= layout[i + 1] <= "6":
                code = [_STD_ZERO_MONTH, _STD_ZERO_DAY, _STD_ZERO_HOUR12, _STD_ZERO_MINUTE, _STD_ZERO_SECOND,
                        _STD_YEAR][int(layout[i + 1]) - 1]
                return layout[:i], code, 0, layout[i + 2:]
            if rest.startswith("002"):
                return layout[:i], _STD_ZERO_YDAY, 0, layout[i + 3:]
        if c == "1":
            if rest.startswith("15"):
                return layout[:i], _STD_HOUR, 0, layout[i + 2:]
            return layout[:i], _STD_NUM_MONTH, 0, layout[i + 1:]
        if c == "2":
            if rest.startswith("2006"):
                return layout[:i], _STD_LONG_YEAR, 0, layout[i + 4:]
            return layout[:i], _STD_DAY, 0, layout[i + 1:]
        if c == "_":
            if rest.startswith("_2"):
                if rest.startswith("_2006"):
                    return layout[:i + 1], _STD_LONG_YEAR, 0, layout[i + 5:]
                return layout[:i], _STD_UNDER_DAY, 0, layout[i + 2:]
            if rest.startswith("__2"):
                return layout[:i], _STD_UNDER_YDAY, 0, layout[i + 3:]
        if c in "345":
            code = {"3": _STD_HOUR12, "4": _STD_MINUTE, "5": _STD_SECOND}[c]
            return layout[:i], code, 0, layout[i + 1:]
        if c == "P" and rest.startswith("PM"):
            return layout[:i], _STD_PM, 0, layout[i + 2:]
        if c == "p" and rest.startswith("pm"):
            return layout[:i], _STD_pm, 0, layout[i + 2:]
        if c == "-":
            for p, code in _NUM_TZ_PREFIXES:
                if rest.startswith(p):
                    return layout[:i], code, 0, layout[i + len(p):]
        if c == "Z":
            for p, code in _TZ_PREFIXES:
                if rest.startswith(p):
                    return layout[:i], code, 0, layout[i + len(p):]
        if c in ".," and i + 1 < n and layout[i + 1] in "09":
            ch = layout[i + 1]
            j = i + 1
            while j < n and layout[j] == ch:
                j += 1
            if not (j < n and layout[j].isdigit()):
                code = _STD_FRAC0 if ch == "0" else _STD_FRAC9
                return layout[:i], code, (j - (i + 1), c), layout[j:]
    return layout, 0, 0, ""


def _time_format(t: GoTime, layout: str) -> str:
    y, mo, d, h, mi, s, wd, yday, zname, off = t.fields()
    out = []
    while layout:
        prefix, code, arg, layout = _next_std_chunk(layout)
        out.append(prefix)
        if code == 0:
            break
        if code == _STD_YEAR:
            out.append(f"{abs(y) % 100:02d}")
        elif code == _STD_LONG_YEAR:
            out.append(f"{y:04d}" if y >= 0 else f"-{-y:04d}")
        elif code == _STD_MONTH:
            out.append(_MONTHS[mo - 1][:3])
        elif code == _STD_LONG_MONTH:
            out.append(_MONTHS[mo - 1])
        elif code == _STD_NUM_MONTH:
            out.append(str(mo))
        elif code == _STD_ZERO_MONTH:
            out.append(f"{mo:02d}")
        elif code == _STD_WEEKDAY:
            out.append(_DAYS[wd][:3])
        elif code == _STD_LONG_WEEKDAY:
            out.append(_DAYS[wd])
        elif code == _STD_DAY:
            out.append(str(d))
        elif code == _STD_UNDER_DAY:
            out.append(f"{d:2d}")
        elif code == _STD_ZERO_DAY:
            out.append(f"{d:02d}")
        elif code == _STD_UNDER_YDAY:
            out.append(f"{yday:3d}")
        elif code == _STD_ZERO_YDAY:
            out.append(f"{yday:03d}")
        elif code == _STD_HOUR:
            out.append(f"{h:02d}")
        elif code in (_STD_HOUR12, _STD_ZERO_HOUR12):
            hr = h % 12 or 12
            out.append(str(hr) if code == _STD_HOUR12 else f"{hr:02d}")
        elif code == _STD_MINUTE:
            out.append(str(mi))
        elif code == _STD_ZERO_MINUTE:
            out.append(f"{mi:02d}")
        elif code == _STD_SECOND:
            out.append(str(s))
        elif code == _STD_ZERO_SECOND:
            out.append(f"{s:02d}")
        elif code == _STD_PM:
            out.append("PM" if h >= 12 else "AM")
        elif code == _STD_pm:
            out.append("pm" if h >= 12 else "am")
        elif code in (_STD_ISO_TZ, _STD_ISO_SHORT_TZ, _STD_ISO_COLON_TZ, _STD_ISO_SECS_TZ, _STD_ISO_COLON_SECS_TZ,
                      _STD_NUM_TZ, _STD_NUM_SHORT_TZ, _STD_NUM_COLON_TZ, _STD_NUM_SECS_TZ, _STD_NUM_COLON_SECS_TZ):
            iso = code in (_STD_ISO_TZ, _STD_ISO_SHORT_TZ, _STD_ISO_COLON_TZ, _STD_ISO_SECS_TZ,
                           _STD_ISO_COLON_SECS_TZ)
            if off == 0 and iso:
                out.append("Z")
                continue
            zone = off // 60
            absoff = off
            sign = "+"
            if zone < 0 or off < 0:
                sign, zone, absoff = "-", -(-off // 60), -off
            out.append(sign + f"{zone // 60:02d}")
            colon = code in (_STD_ISO_COLON_TZ, _STD_NUM_COLON_TZ, _STD_ISO_COLON_SECS_TZ, _STD_NUM_COLON_SECS_TZ)
            if code not in (_STD_ISO_SHORT_TZ, _STD_NUM_SHORT_TZ):
                out.append((":" if colon else "") + f"{zone % 60:02d}")
            if code in (_STD_ISO_SECS_TZ, _STD_NUM_SECS_TZ, _STD_ISO_COLON_SECS_TZ, _STD_NUM_COLON_SECS_TZ):
                out.append((":" if colon else "") + f"{absoff % 60:02d}")
        elif code == _STD_TZ:
            if zname:
                out.append(zname)
            else:
                z = off // 60
                sign = "+"
                if z < 0:
                    sign, z = "-", -z
                out.append(f"{sign}{z // 60:02d}{z % 60:02d}")
        elif code in (_STD_FRAC0, _STD_FRAC9):
            ndig, sep = arg
            digits = f"{t.nsec:09d}"[:ndig]
            if code == _STD_FRAC9:
                digits = digits.rstrip("0")
                if digits:
                    out.append(sep + digits)
            else:
                out.append(sep + digits)
    return "".join(out)


class _ParseErr(Exception):
    pass


def _getnum(value: str, fixed: bool, n: int = 2) -> tuple[int, str]:
    """Go's getnum/getnum3: up to n digits, exactly n when fixed."""
    k = 0
    while k < n and k < len(value) and value[k].isdigit() and value[k].isascii():
        k += 1
    if k == 0 or (fixed and k != n):
        raise _ParseErr()
    return int(value[:k]), value[k:]


def _lookup_name(names: list[str], value: str) -> tuple[int, str]:
    for i, nm in enumerate(names):
        if len(value) >= len(nm) and value[:len(nm)].lower() == nm.lower():
            return i, value[len(nm):]
    raise _ParseErr()


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]


def _date_in(tz: tzinfo, y, mo, d, h, mi, s, ns) -> GoTime:
    """Go's ``time.Date`` in a zone: wall clock -> instant, using the zone's offset at that instant."""
    wall = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    _, off = _zone_at(tz, wall)
    unix = wall - off
    _, off2 = _zone_at(tz, unix)
    if off2 != off:
        unix = wall - off2
    return GoTime(unix, ns, tz)


def time_parse(layout: str, value: str, default_tz: tzinfo) -> GoTime:
    """Go's ``time.ParseInLocation``; raises _ParseErr on malformed input (callers map that to the zero time)."""
    year, month, day, hour, minute, sec, nsec = 0, 1, 1, 0, 0, 0, 0
    yday = -1
    pm_set = am_set = False
    z = None
    zone_offset = None
    zone_name = ""
    while True:
        prefix, code, arg, suffix = _next_std_chunk(layout)
        std_str = layout[len(prefix):len(layout) - len(suffix)]
        value = _skip(value, prefix)
        if code == 0:
            if value:
                raise _ParseErr()
            break
        layout = suffix
        if code == _STD_YEAR:
            if len(value) < 2:
                raise _ParseErr()
            p, value = value[:2], value[2:]
            yy, _ = _getnum(p, True)
            year = yy + (1900 if yy >= 69 else 2000)
        elif code == _STD_LONG_YEAR:
            if len(value) < 4 or not value[:4].isdigit():
                raise _ParseErr()
            year, value = int(value[:4]), value[4:]
        elif code in (_STD_MONTH, _STD_LONG_MONTH):
            names = [m[:3] for m in _MONTHS] if code == _STD_MONTH else _MONTHS
            idx, value = _lookup_name(names, value)
            month = idx + 1
        elif code in (_STD_NUM_MONTH, _STD_ZERO_MONTH):
            month, value = _getnum(value, code == _STD_ZERO_MONTH)
            if not 1 <= month <= 12:
                raise _ParseErr()
        elif code in (_STD_WEEKDAY, _STD_LONG_WEEKDAY):
            names = [w[:3] for w in _DAYS] if code == _STD_WEEKDAY else _DAYS
            _, value = _lookup_name(names, value)
        elif code in (_STD_DAY, _STD_UNDER_DAY, _STD_ZERO_DAY):
            if code == _STD_UNDER_DAY and value[:1] == " ":
                value = value[1:]
            day, value = _getnum(value, code == _STD_ZERO_DAY)
        elif code in (_STD_UNDER_YDAY, _STD_ZERO_YDAY):
            for _ in range(2):
                if code == _STD_UNDER_YDAY and value[:1] == " ":
                    value = value[1:]
            yday, value = _getnum(value, code == _STD_ZERO_YDAY, 3)
        elif code == _STD_HOUR:
            hour, value = _getnum(value, False)
            if hour > 23:
                raise _ParseErr()
        elif code in (_STD_HOUR12, _STD_ZERO_HOUR12):
            hour, value = _getnum(value, code == _STD_ZERO_HOUR12)
            if hour > 12:
                raise _ParseErr()
        elif code in (_STD_MINUTE, _STD_ZERO_MINUTE):
            minute, value = _getnum(value, code == _STD_ZERO_MINUTE)
            if minute > 59:
                raise _ParseErr()
        elif code in (_STD_SECOND, _STD_ZERO_SECOND):
            sec, value = _getnum(value, code == _STD_ZERO_SECOND)
            if sec > 59:
                raise _ParseErr()
            # a fractional second in the value but not in the layout is accepted
            if len(value) >= 2 and value[0] in ".," and value[1].isdigit():
                _, nxt, _, _ = _next_std_chunk(layout)
                if nxt not in (_STD_FRAC0, _STD_FRAC9):
                    n = 2
                    while n < len(value) and value[n].isdigit():
                        n += 1
                    nsec = _parse_nanos(value[:n])
                    value = value[n:]
        elif code in (_STD_PM, _STD_pm):
            p, value = value[:2], value[2:]
            want = ("PM", "AM") if code == _STD_PM else ("pm", "am")
            if p == want[0]:
                pm_set = True
            elif p == want[1]:
                am_set = True
            else:
                raise _ParseErr()
        elif code in (_STD_ISO_TZ, _STD_ISO_SHORT_TZ, _STD_ISO_COLON_TZ, _STD_ISO_SECS_TZ, _STD_ISO_COLON_SECS_TZ,
                      _STD_NUM_TZ, _STD_NUM_SHORT_TZ, _STD_NUM_COLON_TZ, _STD_NUM_SECS_TZ, _STD_NUM_COLON_SECS_TZ):
            if std_str.startswith("Z") and value[:1] == "Z":
                value = value[1:]
                z = _UTC
                continue
            fmt = std_str[1:]  # "07:00", "0700", ...
            if not value or value[0] not in "+-":
                raise _ParseErr()
            sign = -1 if value[0] == "-" else 1
            value = value[1:]
            parts = []
            for piece in fmt.split(":") if ":" in fmt else [fmt[k:k + 2] for k in range(0, len(fmt), 2)]:
                if ":" in fmt and parts:
                    if value[:1] != ":":
                        raise _ParseErr()
                    value = value[1:]
                if len(value) < 2 or not value[:2].isdigit():
                    raise _ParseErr()
                parts.append(int(value[:2]))
                value = value[2:]
            hh, mm, ss = (parts + [0, 0, 0])[:3]
            zone_offset = sign * (hh * 3600 + mm * 60 + ss)
        elif code == _STD_TZ:
            if value.startswith("UTC"):
                z = _UTC
                value = value[3:]
                continue
            k = 0
            while k < len(value) and value[k].isalpha() and value[k].isupper():
                k += 1
            if k < 3:
                raise _ParseErr()
            zone_name, value = value[:k], value[k:]
        elif code in (_STD_FRAC0, _STD_FRAC9):
            ndig, _ = arg
            if code == _STD_FRAC0:
                if len(value) < ndig + 1 or value[0] not in ".,":
                    raise _ParseErr()
                nsec = _parse_nanos(value[:ndig + 1])
                value = value[ndig + 1:]
            else:
                if len(value) < 2 or value[0] not in ".," or not value[1].isdigit():
                    continue
                k = 1
                while k < len(value) and value[k].isdigit():
                    k += 1
                nsec = _parse_nanos(value[:k])
                value = value[k:]
    if pm_set and hour < 12:
        hour += 12
    elif am_set and hour == 12:
        hour = 0
    if yday >= 0:
        if yday < 1 or yday > (366 if _days_in(2, year) == 29 else 365):
            raise _ParseErr()
        days = _days_from_civil(year, 1, 1) + yday - 1
        _, month, day = _civil_from_days(days)
    if day < 1 or day > _days_in(month, year):
        raise _ParseErr()
    if z is not None:
        return _date_in(_UTC, year, month, day, hour, minute, sec, nsec)
    if zone_offset is not None:
        wall = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec
        unix = wall - zone_offset
        _, loc_off = _zone_at(default_tz if default_tz is not _UTC else LOCAL, unix)
        if loc_off == zone_offset:
            return GoTime(unix, nsec, LOCAL)
        return GoTime(unix, nsec, _FixedZone("", zone_offset))
    if zone_name:
        wall = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec
        name, off = _zone_at(LOCAL, wall)
        if name == zone_name:
            return GoTime(wall - off, nsec, LOCAL)
        off = 0
        if zone_name.startswith("GMT") and zone_name[3:].lstrip("+-").isdigit():
            off = int(zone_name[3:]) * 3600
        return GoTime(wall - off, nsec, _FixedZone(zone_name, off))
    return _date_in(default_tz, year, month, day, hour, minute, sec, nsec)


def _skip(value: str, prefix: str) -> str:
    while prefix:
        if prefix[0] == " ":
            if value and value[0] != " ":
                raise _ParseErr()
            prefix = prefix.lstrip(" ")
            value = value.lstrip(" ")
            continue
        if not value or value[0] != prefix[0]:
            raise _ParseErr()
        prefix, value = prefix[1:], value[1:]
    return value


def _parse_nanos(s: str) -> int:
    digits = s[1:]
    if not digits.isdigit():
        raise _ParseErr()
    digits = digits[:9]
    return int(digits.ljust(9, "0"))


# ========================================================================================= number parsing
# internal syntax checks only (user regexes always go through re2)
_INT_RE = re.compile(r"^[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*"
                     r"|[1-9](?:_?[0-9])*)$")
_FLOAT_RE = re.compile(
    r"^[+-]?(?:(?:[0-9](?:_?[0-9])*)?(?:\.(?:[0-9](?:_?[0-9])*)?)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?"
    r"|0[xX](?:_?[0-9a-fA-F])*(?:\.(?:[0-9a-fA-F](?:_?[0-9a-fA-F])*)?)?[pP][+-]?[0-9](?:_?[0-9])*"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])$")


def _parse_int_base0(s: str) -> int:
    """``strconv.ParseInt(s, 0, 64)``; ValueError on syntax or range errors."""
    if s.isascii() and s.isdigit() and (s[0] != "0" or len(s) == 1) and len(s) < 19:
        return int(s)
    if not _INT_RE.search(s):
        raise ValueError("invalid syntax")
    t = s.replace("_", "")
    neg = t.startswith("-")
    t = t.lstrip("+-")
    if t[:2].lower() == "0x":
        v = int(t[2:], 16)
    elif t[:2].lower() == "0b":
        v = int(t[2:], 2)
    elif t[:2].lower() == "0o":
        v = int(t[2:], 8)
    elif len(t) > 1 and t[0] == "0":
        v = int(t[1:], 8)
    else:
        v = int(t)
    v = -v if neg else v
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError("value out of range")
    return v


def _trim_zero_decimal(s: str) -> str:
    """spf13/cast: ``"2.00"`` -> ``"2"`` before integer parsing."""
    found_zero = False
    for i in range(len(s), 0, -1):
        c = s[i - 1]
        if c == ".":
            if found_zero:
                return s[:i - 1]
        elif c == "0":
            found_zero = True
        else:
            return s
    return s


def to_int64(v) -> int:
    """spf13/cast ``ToInt64`` as used by sprig: anything unconvertible is 0."""
    if isinstance(v, bool):
        return 1 if v else 0
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return -(1 << 63)
        return int(v)
    if isinstance(v, str):
        try:
            return _parse_int_base0(_trim_zero_decimal(v))
        except ValueError:
            return 0
    return 0


def to_float64(v) -> float:
    """spf13/cast ``ToFloat64``: strings through ParseFloat, errors are 0."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return parse_float(v)
        except ValueError:
            return 0.0
    return 0.0


# ============================================================================================= printing
def format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """Go ``strconv.FormatFloat(f, verb, prec, 64)`` for verbs e/E/f/F/g/G (prec -1 = shortest)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    upper = verb in "EG"
    v = verb.lower()
    if prec < 0:
        # shortest digits that round-trip (Python's repr gives exactly those)
        r = repr(abs(f))
        mant, _, exp = r.partition("e")
        exp_i = int(exp) if exp else 0
        ip, _, fp = mant.partition(".")
        digits = (ip + fp).lstrip("0")
        dp = len(ip) + exp_i
        if ip.strip("0") == "":
            lead = len(fp) - len(fp.lstrip("0"))
            dp = -lead + exp_i
        digits = digits.rstrip("0") or "0"
        if digits == "0":
            dp = 1
        neg = math.copysign(1.0, f) < 0
        if v == "e":
            s = _fmt_e(digits, dp, len(digits) - 1, upper)
        elif v == "f":
            s = _fmt_f(digits, dp, max(len(digits) - dp, 0))
        else:
            # Go: with shortest formatting the %e/%f decision uses precision 6
            exp10 = dp - 1
            if exp10 < -4 or exp10 >= 6:
                s = _fmt_e(digits, dp, len(digits) - 1, upper)
            else:
                s = _fmt_f(digits, dp, max(len(digits) - dp, 0))
        return ("-" if neg else "") + s
    if v == "f":
        return f"{f:.{prec}f}"
    if v == "e":
        s = f"{f:.{prec}e}"
        return s.upper() if upper else s
    # %g with explicit precision
    p = prec if prec > 0 else 1
    s = f"{f:.{p}g}"
    return s.upper() if upper else s


def _fmt_e(digits: str, dp: int, prec: int, upper: bool) -> str:
    first = digits[0]
    rest = digits[1:prec + 1].ljust(prec, "0")
    exp = dp - 1 if digits != "0" else 0
    sign = "+" if exp >= 0 else "-"
    e = abs(exp)
    return first + ("." + rest if prec > 0 else "") + ("E" if upper else "e") + sign + (f"{e:02d}")


def _fmt_f(digits: str, dp: int, prec: int) -> str:
    if dp > 0:
        ip = digits[:dp].ljust(dp, "0")
        fp = digits[dp:]
    else:
        ip = "0"
        fp = "0" * (-dp) + digits
    fp = fp[:prec].ljust(prec, "0")
    return ip + ("." + fp if prec > 0 else "")


def go_type_name(v) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, I64):
        return "int64"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, GoTime):
        return "time.Time"
    if isinstance(v, LabelMap):
        return "map[string]string"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    return "interface {}"


class LabelMap(dict):
    """The template data (Go ``map[string]string``): a missing key reads as ``""`` (missingkey=zero)."""

    __slots__ = ()


def go_str(v, top: bool = True) -> str:
    """``fmt.Sprint`` of one value (``%v``). Inside containers nil prints ``<nil>``."""
    if isinstance(v, str):
        return v
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, GoTime):
        return str(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k, False)}:{go_str(v[k], False)}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_str(x, False) for x in v) + "]"
    return str(v)


def go_sprint(args: list) -> str:
    """``fmt.Sprint``: a space between operands when neither side is a string."""
    out = []
    prev_string = True
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(go_str(a))
        prev_string = is_string
    return "".join(out)


def _go_quote(s: str, ascii_only: bool = False) -> str:
    """``strconv.Quote``."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif (ch.isprintable() or ch == " ") and not (ascii_only and o > 126):
            out.append(ch)
        elif 0xDC80 <= o <= 0xDCFF:  # undecodable byte (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _quote_rune(r: int) -> str:
    ch = chr(r) if 0 <= r <= 0x10FFFF and not 0xD800 <= r <= 0xDFFF else "\ufffd"
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    q = _go_quote(ch)[1:-1]
    return "'" + q + "'"


def _pad(s: str, width: int | None, minus: bool, zero: bool = False) -> str:
    if width is None or len(s) >= width:
        return s
    if minus:
        return s + " " * (width - len(s))
    if zero:
        sign = ""
        if s[:1] in "+- ":
            sign, s = s[0], s[1:]
        return sign + "0" * (width - len(s) - len(sign)) + s
    return " " * (width - len(s)) + s


def _bad_verb(verb: str, v) -> str:
    if v is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type_name(v)}={go_str(v)})"


def _fmt_one(verb: str, v, flags: str, width: int | None, prec: int | None) -> str:
    minus, plus, sharp, space, zero = ("-" in flags, "+" in flags, "#" in flags, " " in flags, "0" in flags)
    if minus:
        zero = False
    if verb == "T":
        return _pad(go_type_name(v), width, minus)
    if isinstance(v, list):  # Go applies the verb to each element
        return "[" + " ".join(_fmt_one(verb, x, flags, width, prec) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{_fmt_one(verb, k, flags, width, prec)}:{_fmt_one(verb, v[k], flags, width, prec)}"
                                 for k in sorted(v)) + "]"
    if v is None:
        return _pad("<nil>", width, minus) if verb == "v" else _bad_verb(verb, v)
    if isinstance(v, GoTime):
        v = str(v)  # Stringer: %v %s %q %x %X use String()
        if verb not in "vsqxX":
            return _bad_verb(verb, v)
    if isinstance(v, bool):
        if verb in "vt":
            return _pad("true" if v else "false", width, minus)
        return _bad_verb(verb, v)
    if isinstance(v, int):
        n = int(v)
        if verb in "vd":
            s = str(abs(n))
        elif verb == "b":
            s = format(abs(n), "b")
        elif verb == "o":
            s = format(abs(n), "o")
            if sharp and s != "0":
                s = "0" + s
        elif verb == "O":
            s = "0o" + format(abs(n), "o")
        elif verb in "xX":
            s = format(abs(n), "x" if verb == "x" else "X")
            if sharp:
                s = ("0x" if verb == "x" else "0X") + s
        elif verb == "c":
            return _pad(chr(n) if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else "\ufffd", width, minus)
        elif verb == "q":
            return _pad(_quote_rune(n), width, minus)
        elif verb == "U":
            s = f"U+{n:04X}"
            if sharp and 0 <= n <= 0x10FFFF:
                s += f" '{chr(n)}'"
            return _pad(s, width, minus)
        else:
            return _bad_verb(verb, v)
        if prec is not None:
            s = s.rjust(prec, "0") if not (prec == 0 and n == 0) else ""
            zero = False
        sign = "-" if n < 0 else ("+" if plus else (" " if space else ""))
        return _pad(sign + s, width, minus, zero)
    if isinstance(v, float):
        if verb == "v":
            s = format_float(v, "g", -1 if prec is None else prec)
        elif verb in "eEfFgG":
            p = prec if prec is not None else (-1 if verb in "gG" else 6)
            s = format_float(v, verb.replace("F", "f"), p)
        else:
            return _bad_verb(verb, v)
        if s[0] not in "+-" and s not in ("NaN",):
            s = ("+" if plus else (" " if space else "")) + s
        elif s == "NaN" and (plus or space):
            s = ("+" if plus else " ") + s
        if "Inf" in s or "NaN" in s:
            zero = False
        return _pad(s, width, minus, zero)
    if isinstance(v, str):
        s = v
        if verb in "vs":
            if prec is not None:
                s = s[:prec]
            return _pad(s, width, minus, zero)
        if verb == "q":
            if prec is not None:
                s = s[:prec]
            if sharp and "`" not in s and all(c.isprintable() or c == "\t" for c in s):
                return _pad("`" + s + "`", width, minus)
            return _pad(_go_quote(s, ascii_only=plus), width, minus)
        if verb in "xX":
            b = s.encode("utf-8", "surrogateescape")
            if prec is not None:
                b = b[:prec]
            hx = "%02x" if verb == "x" else "%02X"
            parts = [hx % c for c in b]
            pre = ("0x" if verb == "x" else "0X") if sharp else ""
            if space:
                out = " ".join(pre + p for p in parts)
            else:
                out = pre + "".join(parts) if parts else ""
            return _pad(out, width, minus)
        return _bad_verb(verb, v)
    return _bad_verb(verb, v)


def go_sprintf(fmt: str, args: list) -> str:
    """``fmt.Sprintf`` for the common verbs, with Go's ``%!verb(type=value)`` / MISSING / EXTRA markers."""
    out = []
    i = 0
    argi = 0
    n = len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            j = fmt.find("%", i)
            j = n if j < 0 else j
            out.append(fmt[i:j])
            i = j
            continue
        i += 1
        flags = ""
        while i < n and fmt[i] in "+-# 0":
            flags += fmt[i]
            i += 1
        width = prec = None
        if i < n and fmt[i] == "*":
            i += 1
            if argi < len(args) and isinstance(args[argi], int) and not isinstance(args[argi], bool):
                width = int(args[argi])
                if width < 0:
                    flags += "-"
                    width = -width
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        else:
            st = i
            while i < n and fmt[i].isdigit():
                i += 1
            if i > st:
                width = int(fmt[st:i])
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                i += 1
                if argi < len(args) and isinstance(args[argi], int) and not isinstance(args[argi], bool):
                    prec = int(args[argi])
                    if prec < 0:
                        prec = None
                else:
                    out.append("%!(BADPREC)")
                argi += 1
            else:
                st = i
                while i < n and fmt[i].isdigit():
                    i += 1
                prec = int(fmt[st:i]) if i > st else 0
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_fmt_one(verb, args[argi], flags, width, prec))
        argi += 1
    if argi < len(args):
        extra = ", ".join(("<nil>" if a is None else f"{go_type_name(a)}={go_str(a)}") for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


# ============================================================================================== lexer
_T_ERROR, _T_EOF, _T_TEXT, _T_LEFT, _T_RIGHT, _T_SPACE, _T_FIELD, _T_IDENT, _T_VAR, _T_DOT, _T_NUMBER, \
    _T_STRING, _T_RAWSTRING, _T_CHARCONST, _T_BOOL, _T_NIL, _T_PIPE, _T_DECLARE, _T_ASSIGN, _T_LPAREN, \
    _T_RPAREN, _T_CHAR, _T_KEYWORD, _T_COMMENT = range(24)

_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}


@dataclass
class _Tok:
    typ: int
    val: str
    pos: int
    line: int

    def __str__(self):
        if self.typ == _T_EOF:
            return "EOF"
        if self.typ == _T_ERROR:
            return self.val
        if self.typ == _T_KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


def _is_space(c: str) -> bool:
    return c in " \t\r\n"


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdigit()


class _Lexer:
    """Tokenises the whole template eagerly; a lexing error becomes an error token (and ends the stream), so
    the parser reports it only when it gets there -- as Go's concurrent lexer does."""

    def __init__(self, text: str):
        self.s = text
        self.pos = 0
        self.start = 0
        self.line = 1
        self.start_line = 1
        self.toks: list[_Tok] = []
        self.paren = 0

    def emit(self, typ: int):
        self.toks.append(_Tok(typ, self.s[self.start:self.pos], self.start, self.start_line))
        self.start = self.pos
        self.start_line = self.line

    def ignore(self):
        self.start = self.pos
        self.start_line = self.line

    def advance(self, k: int = 1):
        self.line += self.s.count("\n", self.pos, self.pos + k)
        self.pos += k

    def error(self, msg: str):
        self.toks.append(_Tok(_T_ERROR, msg, self.start, self.start_line))
        return None

    def peek(self) -> str:
        return self.s[self.pos] if self.pos < len(self.s) else ""

    def run(self) -> list[_Tok]:
        state = self.lex_text
        while state is not None:
            state = state()
        return self.toks

    # -- states ---------------------------------------------------------------------------------
    def lex_text(self):
        i = self.s.find("{{", self.pos)
        if i < 0:
            self.advance(len(self.s) - self.pos)
            if self.pos > self.start:
                self.emit(_T_TEXT)
            self.toks.append(_Tok(_T_EOF, "", self.pos, self.line))
            return None
        self.advance(i - self.pos)
        trim = self.s.startswith("-", i + 2) and i + 3 < len(self.s) and _is_space(self.s[i + 3])
        text_end = self.pos
        if trim:
            text_end = self.start + len(self.s[self.start:self.pos].rstrip(" \t\r\n"))
        if text_end > self.start:
            save = self.pos
            self.pos = text_end
            self.toks.append(_Tok(_T_TEXT, self.s[self.start:text_end], self.start, self.start_line))
            self.pos = save
        self.ignore()
        return self.lex_left_delim

    def lex_left_delim(self):
        trim = self.s.startswith("-", self.pos + 2) and self.pos + 3 < len(self.s) and _is_space(self.s[self.pos + 3])
        after = 2 if trim else 0
        if self.s.startswith("/*", self.pos + 2 + after):
            self.advance(2 + after)
            self.ignore()
            return self.lex_comment
        self.advance(2)
        self.emit(_T_LEFT)
        if trim:
            self.advance(2)
            self.ignore()
        self.paren = 0
        return self.lex_inside

    def lex_comment(self):
        self.advance(2)
        j = self.s.find("*/", self.pos)
        if j < 0:
            return self.error("unclosed comment")
        self.advance(j + 2 - self.pos)
        delim, trim = self.at_right_delim()
        if not delim:
            return self.error("comment ends before closing delimiter")
        self.ignore()
        if trim:
            self.advance(2)
        self.advance(2)
        if trim:
            self.skip_left_space()
        self.ignore()
        return self.lex_text

    def at_right_delim(self) -> tuple[bool, bool]:
        s, p = self.s, self.pos
        if p + 1 < len(s) and _is_space(s[p]) and s[p + 1] == "-" and s.startswith("}}", p + 2):
            return True, True
        if s.startswith("}}", p):
            return True, False
        return False, False

    def skip_left_space(self):
        while self.pos < len(self.s) and _is_space(self.s[self.pos]):
            self.advance()

    def lex_right_delim(self):
        _, trim = self.at_right_delim()
        if trim:
            self.advance(2)
            self.ignore()
        self.advance(2)
        self.emit(_T_RIGHT)
        if trim:
            self.skip_left_space()
            self.ignore()
        return self.lex_text

    def lex_inside(self):
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren == 0:
                return self.lex_right_delim
            return self.error("unclosed left paren")
        c = self.peek()
        if c == "":
            return self.error("unclosed action")
        if _is_space(c):
            return self.lex_space
        self.advance()
        if c == "=":
            self.emit(_T_ASSIGN)
        elif c == ":":
            if self.peek() != "=":
                return self.error("expected :=")
            self.advance()
            self.emit(_T_DECLARE)
        elif c == "|":
            self.emit(_T_PIPE)
        elif c == '"':
            return self.lex_quote
        elif c == "`":
            return self.lex_raw_quote
        elif c == "$":
            return self.lex_variable
        elif c == "'":
            return self.lex_char
        elif c == "." and not ("0" <= self.peek() <= "9" and self.peek() != ""):
            return self.lex_field
        elif c in "+-." or "0" <= c <= "9":
            self.pos -= 1
            return self.lex_number
        elif _is_alnum(c):
            self.pos -= 1
            return self.lex_identifier
        elif c == "(":
            self.emit(_T_LPAREN)
            self.paren += 1
        elif c == ")":
            self.paren -= 1
            if self.paren < 0:
                return self.error("unexpected right paren")
            self.emit(_T_RPAREN)
        elif c.isascii() and c.isprintable():
            self.emit(_T_CHAR)
        else:
            return self.error(f"unrecognized character in action: U+{ord(c):04X} {_quote_rune(ord(c))}")
        return self.lex_inside

    def lex_space(self):
        n = 0
        while _is_space(self.peek()):
            self.advance()
            n += 1
        # a space followed by "-}}" belongs to the trim marker
        p = self.pos - 1
        if self.s.startswith("-}}", p + 1):
            self.pos -= 1
            if self.s[self.pos] == "\n":
                self.line -= 1
            if n == 1:
                return self.lex_inside
        self.emit(_T_SPACE)
        return self.lex_inside

    def at_terminator(self) -> bool:
        c = self.peek()
        if c == "" or _is_space(c) or c in ".,|:()":
            return True
        return self.s.startswith("}}", self.pos)

    def lex_identifier(self):
        while self.pos < len(self.s) and _is_alnum(self.s[self.pos]):
            self.advance()
        if not self.at_terminator():
            c = self.peek()
            return self.error(f"bad character U+{ord(c):04X} {_quote_rune(ord(c))}")
        word = self.s[self.start:self.pos]
        if word in _KEYWORDS:
            self.emit(_T_KEYWORD)
        elif word in ("true", "false"):
            self.emit(_T_BOOL)
        elif word == "nil":
            self.emit(_T_NIL)
        else:
            self.emit(_T_IDENT)
        return self.lex_inside

    def _field_or_var(self, typ: int):
        if self.at_terminator():
            self.emit(_T_VAR if typ == _T_VAR else _T_DOT)
            return self.lex_inside
        while self.pos < len(self.s) and _is_alnum(self.s[self.pos]):
            self.advance()
        if not self.at_terminator():
            c = self.peek()
            return self.error(f"bad character U+{ord(c):04X} {_quote_rune(ord(c))}")
        self.emit(typ)
        return self.lex_inside

    def lex_field(self):
        return self._field_or_var(_T_FIELD)

    def lex_variable(self):
        return self._field_or_var(_T_VAR)

    def _quoted(self, q: str, typ: int, msg: str):
        while True:
            c = self.peek()
            if c == "\\":
                self.advance()
                c = self.peek()
                if c not in ("", "\n"):
                    self.advance()
                    continue
            if c in ("", "\n"):
                return self.error(msg)
            self.advance()
            if c == q:
                break
        self.emit(typ)
        return self.lex_inside

    def lex_quote(self):
        return self._quoted('"', _T_STRING, "unterminated quoted string")

    def lex_char(self):
        return self._quoted("'", _T_CHARCONST, "unterminated character constant")

    def lex_raw_quote(self):
        j = self.s.find("`", self.pos)
        if j < 0:
            return self.error("unterminated raw quoted string")
        self.advance(j + 1 - self.pos)
        self.emit(_T_RAWSTRING)
        return self.lex_inside

    def lex_number(self):
        s = self.s
        p = self.pos
        if p < len(s) and s[p] in "+-":
            p += 1
        digits = "0123456789_"
        if s.startswith(("0x", "0X"), p):
            p += 2
            digits = "0123456789abcdefABCDEF_"
        elif s.startswith(("0o", "0O"), p):
            p += 2
            digits = "01234567_"
        elif s.startswith(("0b", "0B"), p):
            p += 2
            digits = "01_"
        while p < len(s) and s[p] in digits:
            p += 1
        if p < len(s) and s[p] == ".":
            p += 1
            while p < len(s) and s[p] in digits:
                p += 1
        if len(digits) == 11 and p < len(s) and s[p] in "eE" or len(digits) > 11 and p < len(s) and s[p] in "pP":
            p += 1
            if p < len(s) and s[p] in "+-":
                p += 1
            while p < len(s) and s[p] in "0123456789_":
                p += 1
        if p < len(s) and s[p] == "i":
            p += 1
        self.pos = p
        if p < len(s) and _is_alnum(s[p]):
            self.pos += 1
            return self.error(f"bad number syntax: {_go_quote(s[self.start:self.pos])}")
        self.emit(_T_NUMBER)
        return self.lex_inside


# ======================================================================================== parse tree
@dataclass
class _Node:
    pos: int


@dataclass
class _Text(_Node):
    text: str

    def __str__(self):
        return self.text


@dataclass
class _List(_Node):
    nodes: list = field(default_factory=list)

    def __str__(self):
        return "".join(str(n) for n in self.nodes)


@dataclass
class _Field(_Node):
    idents: list

    def __str__(self):
        return "".join("." + i for i in self.idents)


@dataclass
class _Variable(_Node):
    idents: list  # ["$x", "a", "b"]

    def __str__(self):
        return ".".join(self.idents)


@dataclass
class _Ident(_Node):
    name: str

    def __str__(self):
        return self.name


@dataclass
class _Dot(_Node):
    def __str__(self):
        return "."


@dataclass
class _Nil(_Node):
    def __str__(self):
        return "nil"


@dataclass
class _Bool(_Node):
    val: bool

    def __str__(self):
        return "true" if self.val else "false"


@dataclass
class _Number(_Node):
    text: str
    is_int: bool = False
    is_float: bool = False
    int_val: int = 0
    float_val: float = 0.0

    def __str__(self):
        return self.text


@dataclass
class _String(_Node):
    quoted: str
    text: str

    def __str__(self):
        return self.quoted


@dataclass
class _Command(_Node):
    args: list

    def __str__(self):
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


@dataclass
class _Pipe(_Node):
    decls: list  # list[_Variable]
    is_assign: bool
    cmds: list

    def __str__(self):
        s = ""
        if self.decls:
            s = ", ".join(str(d) for d in self.decls) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass
class _Chain(_Node):
    node: Any
    fields: list

    def __str__(self):
        base = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return base + "".join("." + f for f in self.fields)


@dataclass
class _Action(_Node):
    line: int
    pipe: _Pipe

    def __str__(self):
        return "{{" + str(self.pipe) + "}}"


@dataclass
class _Branch(_Node):
    kind: str  # "if" | "with" | "range"
    line: int
    pipe: _Pipe
    body: _List
    else_body: _List | None

    def __str__(self):
        s = "{{" + self.kind + " " + str(self.pipe) + "}}" + str(self.body)
        if self.else_body is not None:
            s += "{{else}}" + str(self.else_body)
        return s + "{{end}}"


@dataclass
class _Break(_Node):
    def __str__(self):
        return "{{break}}"


@dataclass
class _Continue(_Node):
    def __str__(self):
        return "{{continue}}"


@dataclass
class _TemplateCall(_Node):
    name: str
    pipe: _Pipe | None

    def __str__(self):
        return "{{template " + _go_quote(self.name) + (" " + str(self.pipe) if self.pipe else "") + "}}"


@dataclass
class _End(_Node):
    def __str__(self):
        return "{{end}}"


@dataclass
class _Else(_Node):
    def __str__(self):
        return "{{else}}"


def _unquote(tok: _Tok) -> str:
    """Go's ``strconv.Unquote`` for "..." and `...` literals."""
    v = tok.val
    if tok.typ == _T_RAWSTRING:
        return v[1:-1].replace("\r", "")
    body = v[1:-1]
    out = []
    i = 0
    esc = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
           "'": "'"}
    raw_bytes = bytearray()

    def flush():
        if raw_bytes:
            out.append(raw_bytes.decode("utf-8", "replace"))
            raw_bytes.clear()

    while i < len(body):
        c = body[i]
        if c != "\\":
            flush()
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise ValueError("invalid syntax")
        c = body[i]
        if c in esc:
            if c == "'" and tok.typ == _T_STRING:
                raise ValueError("invalid syntax")
            flush()
            out.append(esc[c])
            i += 1
        elif c in "01234567":
            digs = body[i:i + 3]
            if len(digs) < 3 or any(d not in "01234567" for d in digs) or int(digs, 8) > 255:
                raise ValueError("invalid syntax")
            raw_bytes.append(int(digs, 8))
            i += 3
        elif c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digs = body[i + 1:i + 1 + n]
            if len(digs) < n or any(d not in "0123456789abcdefABCDEF" for d in digs):
                raise ValueError("invalid syntax")
            if c == "x":
                raw_bytes.append(int(digs, 16))
            else:
                r = int(digs, 16)
                if r > 0x10FFFF or 0xD800 <= r <= 0xDFFF:
                    raise ValueError("invalid syntax")
                flush()
                out.append(chr(r))
            i += 1 + n
        else:
            raise ValueError("invalid syntax")
    flush()
    return "".join(out)


class _Parser:
    """Recursive descent over the token list, following Go's ``text/template/parse`` closely so that the
    same templates are accepted and rejected (with the same messages)."""

    def __init__(self, text: str, name: str, funcs):
        self.text = text
        self.name = name
        self.funcs = funcs
        self.toks = _Lexer(text).run()
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.action_line = 0
        self.defines: dict[str, _List] = {}

    # -- token helpers ---------------------------------------------------------------------------
    def next(self) -> _Tok:
        t = self.toks[self.i] if self.i < len(self.toks) else self.toks[-1]
        self.i += 1
        return t

    def backup(self, n: int = 1):
        self.i -= n

    def peek(self) -> _Tok:
        return self.toks[self.i] if self.i < len(self.toks) else self.toks[-1]

    def next_non_space(self) -> _Tok:
        t = self.next()
        while t.typ == _T_SPACE:
            t = self.next()
        return t

    def peek_non_space(self) -> _Tok:
        t = self.next_non_space()
        self.backup()
        return t

    def errorf(self, msg: str, line: int | None = None):
        if line is None:
            prev = self.toks[min(max(self.i - 1, 0), len(self.toks) - 1)]
            line = prev.line
        raise TemplateSyntaxError(f"template: {self.name}:{line}: {msg}")

    def unexpected(self, tok: _Tok, context: str):
        if tok.typ == _T_ERROR:
            extra = ""
            if self.action_line and self.action_line != tok.line:
                extra = f" in action started at {self.name}:{self.action_line}"
                if tok.val.endswith(" action"):
                    extra = extra[len(" in action"):]
            self.errorf(f"{tok}{extra}", tok.line)
        self.errorf(f"unexpected {tok} in {context}", tok.line)

    def expect(self, typ: int, context: str) -> _Tok:
        t = self.next_non_space()
        if t.typ != typ:
            self.unexpected(t, context)
        return t

    # -- grammar -----------------------------------------------------------------------------------
    def parse(self) -> _List:
        root = _List(0)
        while self.peek().typ != _T_EOF:
            if self.peek().typ == _T_LEFT:
                save = self.i
                self.next()
                t = self.next_non_space()
                if t.typ == _T_KEYWORD and t.val == "define":
                    self.parse_define()
                    continue
                self.i = save
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                self.errorf(f"unexpected {n}")
            if n is not None:
                root.nodes.append(n)
        return root

    def parse_define(self):
        name_tok = self.next_non_space()
        if name_tok.typ not in (_T_STRING, _T_RAWSTRING):
            self.unexpected(name_tok, "define clause")
        name = _unquote(name_tok)
        self.expect(_T_RIGHT, "define clause")
        saved_vars = self.vars
        self.vars = ["$"]
        body, nxt = self.item_list()
        if not isinstance(nxt, _End):
            self.errorf(f"unexpected {nxt} in define clause")
        self.vars = saved_vars
        self.defines[name] = body

    def item_list(self):
        lst = _List(self.peek_non_space().pos)
        while self.peek_non_space().typ != _T_EOF:
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                return lst, n
            if n is not None:
                lst.nodes.append(n)
        t = self.peek_non_space()
        if t.typ == _T_ERROR:
            self.unexpected(t, "input")
        self.errorf("unexpected EOF")

    def text_or_action(self):
        t = self.next_non_space()
        if t.typ == _T_TEXT:
            return _Text(t.pos, t.val)
        if t.typ == _T_LEFT:
            self.action_line = t.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(t, "input")

    def action(self):
        t = self.next_non_space()
        if t.typ == _T_KEYWORD:
            kw = t.val
            if kw == "block":
                return self.block_control(t)
            if kw == "break":
                return self.break_control(t, "break")
            if kw == "continue":
                return self.break_control(t, "continue")
            if kw == "else":
                return self.else_control(t)
            if kw == "end":
                self.expect(_T_RIGHT, "end")
                return _End(t.pos)
            if kw in ("if", "with", "range"):
                return self.branch_control(kw, t)
            if kw == "template":
                return self.template_control(t)
            if kw == "define":
                self.errorf("unexpected <define> in command")
        self.backup()
        tok = self.peek()
        return _Action(tok.pos, tok.line, self.pipeline("command", _T_RIGHT))

    def break_control(self, t: _Tok, kw: str):
        tok = self.next_non_space()
        if tok.typ != _T_RIGHT:
            self.unexpected(tok, "{{" + kw + "}}")
        if self.range_depth == 0:
            self.errorf("{{" + kw + "}} outside {{range}}")
        return _Break(t.pos) if kw == "break" else _Continue(t.pos)

    def else_control(self, t: _Tok):
        p = self.peek_non_space()
        if p.typ == _T_KEYWORD and p.val in ("if", "with"):
            return _Else(t.pos)
        self.expect(_T_RIGHT, "else")
        return _Else(t.pos)

    def branch_control(self, kind: str, t: _Tok):
        nvars = len(self.vars)
        try:
            pipe = self.pipeline(kind, _T_RIGHT)
            if kind == "range":
                self.range_depth += 1
            body, nxt = self.item_list()
            if kind == "range":
                self.range_depth -= 1
            else_body = None
            if isinstance(nxt, _Else):
                p = self.peek_non_space()
                if kind in ("if", "with") and p.typ == _T_KEYWORD and p.val == kind:
                    kw = self.next_non_space()
                    else_body = _List(nxt.pos, [self.branch_control(kind, kw)])
                else:
                    else_body, nxt2 = self.item_list()
                    if not isinstance(nxt2, _End):
                        self.errorf(f"expected end; found {nxt2}")
            return _Branch(t.pos, kind, t.line, pipe, body, else_body)
        finally:
            del self.vars[nvars:]

    def template_control(self, t: _Tok):
        tok = self.next_non_space()
        if tok.typ not in (_T_STRING, _T_RAWSTRING):
            self.unexpected(tok, "template clause")
        name = _unquote(tok)
        pipe = None
        if self.next_non_space().typ != _T_RIGHT:
            self.backup()
            pipe = self.pipeline("template clause", _T_RIGHT)
        return _TemplateCall(t.pos, name, pipe)

    def block_control(self, t: _Tok):
        tok = self.next_non_space()
        if tok.typ not in (_T_STRING, _T_RAWSTRING):
            self.unexpected(tok, "block clause")
        name = _unquote(tok)
        pipe = None
        if self.next_non_space().typ != _T_RIGHT:
            self.backup()
            pipe = self.pipeline("block clause", _T_RIGHT)
        saved_vars = self.vars
        self.vars = ["$"]
        body, nxt = self.item_list()
        self.vars = saved_vars
        if not isinstance(nxt, _End):
            self.errorf(f"unexpected {nxt} in block clause")
        self.defines[name] = body
        return _TemplateCall(t.pos, name, pipe)

    def pipeline(self, context: str, end: int) -> _Pipe:
        tok = self.peek_non_space()
        pipe = _Pipe(tok.pos, [], False, [])
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != _T_VAR:
                break
            self.next_non_space()
            after = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (_T_ASSIGN, _T_DECLARE):
                pipe.is_assign = nxt.typ == _T_ASSIGN
                self.next_non_space()
                pipe.decls.append(_Variable(v.pos, [v.val]))
                self.vars.append(v.val)
                break
            if nxt.typ == _T_CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decls.append(_Variable(v.pos, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decls) < 2:
                    p = self.peek_non_space()
                    if p.typ in (_T_VAR, _T_RIGHT, _T_RPAREN):
                        continue
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            # not a declaration: push the variable back
            self.backup(2 if after.typ == _T_SPACE else 1)
            break
        while True:
            t = self.next_non_space()
            if t.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if t.typ in (_T_BOOL, _T_CHARCONST, _T_DOT, _T_FIELD, _T_IDENT, _T_NUMBER, _T_NIL, _T_RAWSTRING,
                         _T_STRING, _T_VAR, _T_LPAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(t, context)

    def check_pipeline(self, pipe: _Pipe, context: str):
        if not pipe.cmds:
            self.errorf(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (_Bool, _Dot, _Nil, _Number, _String)):
                self.errorf(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> _Command:
        cmd = _Command(self.peek_non_space().pos, [])
        while True:
            self.peek_non_space()
            op = self.operand()
            if op is not None:
                cmd.args.append(op)
            t = self.next()
            if t.typ == _T_SPACE:
                continue
            if t.typ in (_T_RIGHT, _T_RPAREN):
                self.backup()
            elif t.typ == _T_PIPE:
                pass
            else:
                self.unexpected(t, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self):
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == _T_FIELD:
            fields = []
            while self.peek().typ == _T_FIELD:
                fields.append(self.next().val[1:])
            if isinstance(node, _Field):
                return _Field(node.pos, node.idents + fields)
            if isinstance(node, _Variable):
                return _Variable(node.pos, node.idents + fields)
            if isinstance(node, (_Bool, _String, _Number, _Nil, _Dot)):
                self.errorf(f"unexpected . after term {_go_quote(str(node))}")
            return _Chain(node.pos, node, fields)
        return node

    def term(self):
        t = self.next_non_space()
        if t.typ == _T_IDENT:
            if t.val not in self.funcs:
                self.errorf(f"function {_go_quote(t.val)} not defined", t.line)
            return _Ident(t.pos, t.val)
        if t.typ == _T_DOT:
            return _Dot(t.pos)
        if t.typ == _T_NIL:
            return _Nil(t.pos)
        if t.typ == _T_VAR:
            parts = t.val.split(".")
            if parts[0] not in self.vars:
                self.errorf(f"undefined variable {_go_quote(parts[0])}", t.line)
            return _Variable(t.pos, parts)
        if t.typ == _T_FIELD:
            return _Field(t.pos, [t.val[1:]])
        if t.typ == _T_BOOL:
            return _Bool(t.pos, t.val == "true")
        if t.typ in (_T_NUMBER, _T_CHARCONST):
            return self.number(t)
        if t.typ == _T_LPAREN:
            return self.pipeline("parenthesized pipeline", _T_RPAREN)
        if t.typ in (_T_STRING, _T_RAWSTRING):
            try:
                return _String(t.pos, t.val, _unquote(t))
            except ValueError as e:
                self.errorf(str(e), t.line)
        self.backup()
        return None

    def number(self, t: _Tok) -> _Number:
        n = _Number(t.pos, t.val)
        text = t.val
        if t.typ == _T_CHARCONST:
            try:
                body = _unquote(_Tok(_T_STRING, '"' + text[1:-1].replace('"', '\\"') + '"', 0, 0)) \
                    if text[1:-1] != "\\'" else "'"
            except ValueError:
                self.errorf(f"malformed character constant: {text}", t.line)
            if len(body) != 1:
                self.errorf(f"malformed character constant: {text}", t.line)
            n.is_int = n.is_float = True
            n.int_val = ord(body)
            n.float_val = float(n.int_val)
            return n
        if text.endswith("i"):
            self.errorf(f"complex numbers are not supported: {_go_quote(text)}", t.line)
        try:
            n.int_val = _parse_int_base0(text)
            n.is_int = True
            n.is_float = True
            n.float_val = float(n.int_val)
            return n
        except ValueError:
            pass
        try:
            f = parse_float(text)
        except ValueError:
            self.errorf(f"illegal number syntax: {_go_quote(text)}", t.line)
        if not any(c in text for c in ".eEpP"):
            self.errorf(f"integer overflow: {_go_quote(text)}", t.line)
        n.is_float = True
        n.float_val = f
        if not math.isinf(f) and f == int(f) and -(1 << 63) <= int(f) < (1 << 63):
            n.is_int = True
            n.int_val = int(f)
        return n


# =========================================================================================== functions
# parameter kinds: "str" "int" "i64" "f64" "bool" "time" "any" (interface{}) "val" (builtins' reflect.Value)
_KIND_NAMES = {"str": "string", "int": "int", "i64": "int64", "f64": "float64", "bool": "bool",
               "time": "time.Time", "any": "interface {}", "val": "reflect.Value"}


@dataclass
class _Func:
    fn: Callable
    params: tuple  # fixed parameter kinds
    variadic: str | None = None  # kind of the ... parameter
    builtin: bool = False


class _FuncError(Exception):
    """A function's returned Go ``error`` (becomes ``error calling NAME: MSG``)."""


def _go_to_upper(s: str) -> str:
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in s)


def _go_to_lower(s: str) -> str:
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in s)


_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"


def _title(s: str) -> str:
    """``strings.Title``: upper-case the first letter of each word."""
    def is_sep(r: str) -> bool:
        if r.isascii():
            return not (r.isalnum() or r == "_")
        if r.isalpha() or r.isdigit():
            return False
        return r in _GO_SPACE
    out = []
    prev = " "
    for c in s:
        if is_sep(prev):
            t = c.title()
            out.append(t if len(t) == 1 else c)
        else:
            out.append(c)
        prev = c
    return "".join(out)


def _go_replace(s: str, old: str, new: str, n: int) -> str:
    if n == 0 or old == new:
        return s
    return s.replace(old, new, n if n > 0 else -1)


_re_cache: dict[str, Any] = {}
_RE_OPTS = re2.Options()
_RE_OPTS.log_errors = False


def _compile_re(expr: str):
    r = _re_cache.get(expr)
    if r is None:
        try:
            r = re2.compile(expr, _RE_OPTS)
        except re2.error as e:
            msg = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
            raise _FuncError(f"error parsing regexp: {msg}") from None
        if len(_re_cache) > 256:
            _re_cache.clear()
        _re_cache[expr] = r
    return r


def _iter_go_matches(r, s: str):
    """Go's ``allMatches``: no empty match right after a previous match."""
    pos, prev_end, n = 0, -1, len(s)
    while pos <= n:
        m = r.search(s, pos)
        if m is None:
            break
        a, b = m.span()
        accept = True
        if b == pos:
            if a == prev_end:
                accept = False
            pos += 1
        else:
            pos = b
        prev_end = b
        if accept:
            yield m


def _expand(r, template: str, m) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    out = []
    i = 0
    n = len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        i = j + 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        name = None
        if i < n and template[i] == "{":
            k = template.find("}", i + 1)
            cand = template[i + 1:k] if k > 0 else ""
            if k > 0 and cand and all(_is_alnum(c) for c in cand):
                name, i = cand, k + 1
        else:
            k = i
            while k < n and _is_alnum(template[k]):
                k += 1
            if k > i:
                name, i = template[i:k], k
        if name is None:
            out.append("$")
            continue
        if name.isdigit():
            idx = int(name)
            if idx <= r.groups:
                g = m.group(idx)
                out.append(g or "")
        else:
            idx = r.groupindex.get(name)
            if idx is not None:
                out.append(m.group(idx) or "")
    return "".join(out)


def _replace_all(r, src: str, repl: Callable) -> str:
    """Go's ``Regexp.replaceAll``: an empty match adjacent to the previous match is not replaced."""
    out = []
    last = 0
    pos = 0
    n = len(src)
    while pos <= n:
        m = r.search(src, pos)
        if m is None:
            break
        a, b = m.span()
        out.append(src[last:a])
        if b > last or a == 0:
            out.append(repl(m))
        last = b
        if pos + 1 > b:
            pos += 1
        else:
            pos = b
    out.append(src[last:])
    return "".join(out)


def _f_regex_replace_all(regex: str, s: str, repl: str) -> str:
    r = _compile_re(regex)
    return _replace_all(r, s, lambda m: _expand(r, repl, m))


def _f_regex_replace_all_literal(regex: str, s: str, repl: str) -> str:
    r = _compile_re(regex)
    return _replace_all(r, s, lambda m: repl)


def _f_count(regex: str, s: str) -> int:
    r = _compile_re(regex)
    return sum(1 for _ in _iter_go_matches(r, s))


def _url_query_unescape(s: str) -> str:
    out = bytearray()
    i = 0
    b = s.encode("utf-8", "surrogateescape")
    while i < len(b):
        c = b[i]
        if c == 0x25:  # %
            h = b[i + 1:i + 3]
            if len(h) < 2 or not all(ch in b"0123456789abcdefABCDEF" for ch in h):
                bad = b[i:i + 3].decode("utf-8", "replace")
                raise _FuncError(f"invalid URL escape {_go_quote(bad)}")
            out.append(int(h, 16))
            i += 3
        elif c == 0x2B:  # +
            out.append(0x20)
            i += 1
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


def _url_query_escape(s: str) -> str:
    out = []
    for c in s.encode("utf-8", "surrogateescape"):
        ch = chr(c)
        if ch.isascii() and (ch.isalnum() or ch in "-_.~"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.append(f"%{c:02X}")
    return "".join(out)


def _f_bytes(s: str) -> float:
    try:
        return float(parse_bytes(s))
    except ValueError as e:
        raise _FuncError(str(e)) from None


def _f_duration(s: str) -> float:
    try:
        d = parse_go_duration(s)
    except ValueError as e:
        raise _FuncError(str(e)) from None
    sec = int(d / 1_000_000_000) if d >= 0 else -((-d) // 1_000_000_000)
    nsec = d - sec * 1_000_000_000
    return float(sec) + float(nsec) / 1e9


def _f_unix_to_time(epoch: str) -> GoTime:
    try:
        i = _parse_int10(epoch)
    except ValueError as e:
        raise _FuncError(f"unable to parse time '{epoch}': {e}") from None
    n = len(epoch)
    if n == 5:
        return GoTime(i * 86400, 0, LOCAL)
    if n == 10:
        return GoTime(i, 0, LOCAL)
    if n == 13:
        return GoTime.from_unix_nano(i * 1_000_000)
    if n == 16:
        return GoTime.from_unix_nano(i * 1000)
    if n == 19:
        return GoTime.from_unix_nano(i)
    raise _FuncError(f"unable to parse time '{epoch}': %!w(<nil>)")


def _parse_int10(s: str) -> int:
    t = s[1:] if s[:1] in "+-" else s
    if not t or not t.isascii() or not t.isdigit():
        raise ValueError(f'strconv.ParseInt: parsing {_go_quote(s)}: invalid syntax')
    v = int(s)
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f'strconv.ParseInt: parsing {_go_quote(s)}: value out of range')
    return v


def _f_to_date_in_zone(fmt: str, zone: str, s: str) -> GoTime:
    loc = _load_location(zone) or _UTC
    try:
        return time_parse(fmt, s, loc)
    except _ParseErr:
        return ZERO_TIME


def _f_to_date(fmt: str, s: str) -> GoTime:
    try:
        return time_parse(fmt, s, LOCAL)
    except _ParseErr:
        return ZERO_TIME


def _f_date(fmt: str, d) -> str:
    if isinstance(d, GoTime):
        t = d
    elif isinstance(d, int) and not isinstance(d, bool):
        t = GoTime(int(d), 0, LOCAL)
    else:
        t = GoTime.now()
    return t.in_zone(LOCAL).format(fmt)


def _runes_trunc(c: int, s: str) -> str:
    n = len(s)
    if c < 0 and n + c > 0:
        return s[n + c:]
    if c >= 0 and n > c:
        return s[:c]
    return s


def _substring(start: int, end: int, s: str) -> str:
    n = len(s)
    end = min(end, n)
    start = min(start, n)
    if start < 0:
        return "" if end < 0 else s[:end]
    if end < 0:
        return s[start:]
    if start > end:
        return ""
    return s[start:end]


def _align_left(count: int, s: str) -> str:
    n = len(s)
    if count < 0 or count == n:
        return s
    if count > n:
        _check_size(count)
        return s + " " * (count - n)
    return s[:count]


def _align_right(count: int, s: str) -> str:
    n = len(s)
    if count < 0 or count == n:
        return s
    if count > n:
        _check_size(count)
        return " " * (count - n) + s
    return s[n - count:]


def _check_size(n: int):
    if n > MAX_OUTPUT:
        raise _FuncError(f"result too large ({n} bytes, limit {MAX_OUTPUT})")


def _b64dec(s: str) -> str:
    raw = s.encode("utf-8", "surrogateescape")
    for cand in (raw, raw.rstrip(b"=") + b"=" * (-len(raw.rstrip(b"=")) % 4)):
        try:
            return base64.b64decode(cand, validate=True).decode("utf-8", "replace")
        except (ValueError, base64.binascii.Error):
            continue
    bad = next((i for i, c in enumerate(raw) if chr(c) not in
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="), len(raw))
    return f"illegal base64 data at input byte {bad}"


def _f_repeat(count: int, s: str) -> str:
    if count < 0:
        raise _FuncError("strings: negative Repeat count")
    _check_size(count * len(s))
    return s * count


def _f_indent(spaces: int, s: str) -> str:
    if spaces < 0:
        raise _FuncError("strings: negative Repeat count")
    pad = " " * spaces
    _check_size(len(s) + (s.count("\n") + 1) * spaces)
    return pad + s.replace("\n", "\n" + pad)


def _int_div(a: int, b: int) -> int:
    if b == 0:
        raise _FuncError("runtime error: integer divide by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _int_mod(a: int, b: int) -> int:
    if b == 0:
        raise _FuncError("runtime error: integer divide by zero")
    return a - b * _int_div(a, b)


def _dec(v) -> Decimal:
    f = to_float64(v)
    if math.isnan(f) or math.isinf(f):
        return Decimal(0)
    return Decimal(repr(f))


def _dec_op(op: str, a, rest: list) -> float:
    """sprig's addf/subf/mulf/divf: shopspring/decimal on the shortest decimal form of each float."""
    with localcontext() as ctx:
        ctx.prec = 200
        acc = _dec(a)
        for x in rest:
            d = _dec(x)
            if op == "+":
                acc = acc + d
            elif op == "-":
                acc = acc - d
            elif op == "*":
                acc = acc * d
            else:
                if d == 0:
                    raise _FuncError("decimal division by 0")
                acc = (acc / d).quantize(Decimal(1).scaleb(-16), rounding=ROUND_HALF_UP)
        return float(acc)


def _f_round(a, p: int, *r) -> float:
    round_on = r[0] if r else 0.5
    val = to_float64(a)
    pw = math.pow(10, float(p))
    digit = pw * val
    frac = math.modf(digit)[0]
    rd = math.ceil(digit) if frac >= round_on else math.floor(digit)
    return rd / pw


def _empty(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (str, list, dict)):
        return len(v) == 0
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v == 0
    return False


def _f_default(d, *given):
    if not given or _empty(given[0]):
        return d
    return given[0]


def _f_from_json(s: str):
    try:
        return json.loads(s, parse_int=float, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        return None


def _minmax(is_max: bool, a, *rest) -> I64:
    acc = to_int64(a)
    for b in rest:
        bb = to_int64(b)
        if (bb > acc) if is_max else (bb < acc):
            acc = bb
    return I64(acc)


def _minmaxf(is_max: bool, a, *rest) -> float:
    acc = to_float64(a)
    for b in rest:
        bb = to_float64(b)
        if math.isnan(acc) or math.isnan(bb):
            acc = math.nan
        else:
            acc = max(acc, bb) if is_max else min(acc, bb)
    return acc


# -- Go builtins -------------------------------------------------------------------------------------
def _truth(v) -> bool:
    """Go's ``template.IsTrue``."""
    if v is None:
        return False
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    return True


def _basic_kind(v) -> str:
    if v is None:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _b_eq(a, *bs) -> bool:
    if not bs:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in bs:
        k2 = _basic_kind(b)
        if k1 != k2:
            if a is not None and b is not None:
                raise _FuncError("incompatible types for comparison")
            continue
        if k1 == "other":
            if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
                raise _FuncError(f"non-comparable types {go_str(a)}: {go_type_name(a)}, {go_type_name(b)}: "
                                 f"{go_str(b)}")
            if a == b:
                return True
        elif k1 == "invalid":
            return True
        elif a == b:
            return True
    return False


def _b_ne(a, b) -> bool:
    return not _b_eq(a, b)


def _b_lt(a, b) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    for k in (k1, k2):
        if k in ("invalid", "other"):
            raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    if k1 == "bool":
        raise _FuncError("invalid type for comparison")
    return a < b


def _b_le(a, b) -> bool:
    return _b_lt(a, b) or _b_eq(a, b)


def _b_gt(a, b) -> bool:
    return not _b_le(a, b)


def _b_ge(a, b) -> bool:
    return not _b_lt(a, b)


def _b_not(a) -> bool:
    return not _truth(a)


def _b_len(v) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogateescape"))
    if isinstance(v, (list, dict)):
        return len(v)
    if v is None:
        raise _FuncError("len of nil pointer")
    raise _FuncError(f"len of type {go_type_name(v)}")


def _index_arg(v, cap: int) -> int:
    if v is None:
        raise _FuncError("cannot index slice/array with nil")
    if not isinstance(v, int) or isinstance(v, bool):
        raise _FuncError(f"cannot index slice/array with type {go_type_name(v)}")
    x = int(v)
    if x < 0 or x > cap:
        raise _FuncError(f"index out of range: {x}")
    return x


def _b_index(item, *indexes):
    if item is None:
        raise _FuncError("index of untyped nil")
    for ix in indexes:
        if item is None:
            raise _FuncError("index of nil pointer")
        if isinstance(item, (list, str)):
            seq = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            x = _index_arg(ix, len(seq))
            if x >= len(seq):
                raise _FuncError(f"index out of range: {x}")
            item = seq[x]
        elif isinstance(item, dict):
            if not isinstance(ix, str):
                raise _FuncError(f"value has type {go_type_name(ix)}; should be string")
            if ix in item:
                item = item[ix]
            else:
                item = "" if isinstance(item, LabelMap) else None
        else:
            raise _FuncError(f"can't index item of type {go_type_name(item)}")
    return item


def _b_slice(item, *indexes):
    if item is None:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq = item.encode("utf-8", "surrogateescape")
    elif isinstance(item, list):
        seq = item
    else:
        raise _FuncError(f"can't slice item of type {go_type_name(item)}")
    idx = [0, len(seq)]
    for i, ix in enumerate(indexes[:2]):
        idx[i] = _index_arg(ix, len(seq))
    if len(indexes) == 3:
        _index_arg(indexes[2], len(seq))
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    out = seq[idx[0]:idx[1]]
    return out.decode("utf-8", "surrogateescape") if isinstance(out, bytes) else out


def _eval_args_str(args) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return go_sprint(["<no value>" if a is None else a for a in args])


def _b_html(*args) -> str:
    s = _eval_args_str(args)
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("\x00", "\ufffd"))


def _b_js(*args) -> str:
    s = _eval_args_str(args)
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append("\\'")
        elif c == '"':
            out.append('\\"')
        elif c in "<>&=":
            out.append(f"\\u{ord(c):04X}")
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04X}")
        elif c.isascii() or c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04X}")
    return "".join(out)


def _b_urlquery(*args) -> str:
    return _url_query_escape(_eval_args_str(args))


def _b_print(*args) -> str:
    return go_sprint(list(args))


def _b_println(*args) -> str:
    return " ".join(go_str(a) for a in args) + "\n"


def _b_printf(fmt: str, *args) -> str:
    return go_sprintf(fmt, list(args))


def _strip(s: str, cut: str, left: bool, right: bool) -> str:
    if left:
        s = s.lstrip(cut)
    if right:
        s = s.rstrip(cut)
    return s


def _trim_prefix(s: str, p: str) -> str:
    return s[len(p):] if p and s.startswith(p) else s


def _trim_suffix(s: str, p: str) -> str:
    return s[:-len(p)] if p and s.endswith(p) else s


S, I, L, F, B, T, A, V = "str", "int", "i64", "f64", "bool", "time", "any", "val"

FUNCS: dict[str, _Func] = {
    # Loki's own
    "ToLower": _Func(_go_to_lower, (S,)),
    "ToUpper": _Func(_go_to_upper, (S,)),
    "Replace": _Func(_go_replace, (S, S, S, I)),
    "Trim": _Func(lambda s, c: _strip(s, c, True, True), (S, S)),
    "TrimLeft": _Func(lambda s, c: _strip(s, c, True, False), (S, S)),
    "TrimRight": _Func(lambda s, c: _strip(s, c, False, True), (S, S)),
    "TrimPrefix": _Func(_trim_prefix, (S, S)),
    "TrimSuffix": _Func(_trim_suffix, (S, S)),
    "TrimSpace": _Func(lambda s: s.strip(_GO_SPACE), (S,)),
    "regexReplaceAll": _Func(_f_regex_replace_all, (S, S, S)),
    "regexReplaceAllLiteral": _Func(_f_regex_replace_all_literal, (S, S, S)),
    "count": _Func(_f_count, (S, S)),
    "urldecode": _Func(_url_query_unescape, (S,)),
    "urlencode": _Func(_url_query_escape, (S,)),
    "bytes": _Func(_f_bytes, (S,)),
    "duration": _Func(_f_duration, (S,)),
    "duration_seconds": _Func(_f_duration, (S,)),
    "unixEpochMillis": _Func(lambda t: str(t.unix_nano() // 1_000_000), (T,)),
    "unixEpochNanos": _Func(lambda t: str(t.unix_nano()), (T,)),
    "toDateInZone": _Func(_f_to_date_in_zone, (S, S, S)),
    "unixToTime": _Func(_f_unix_to_time, (S,)),
    "alignLeft": _Func(_align_left, (I, S)),
    "alignRight": _Func(_align_right, (I, S)),
    "b64dec": _Func(_b64dec, (S,)),
    # sprig
    "b64enc": _Func(lambda s: base64.b64encode(s.encode("utf-8", "surrogateescape")).decode("ascii"), (S,)),
    "lower": _Func(_go_to_lower, (S,)),
    "upper": _Func(_go_to_upper, (S,)),
    "title": _Func(_title, (S,)),
    "trunc": _Func(_runes_trunc, (I, S)),
    "substr": _Func(_substring, (I, I, S)),
    "contains": _Func(lambda sub, s: sub in s, (S, S)),
    "hasPrefix": _Func(lambda p, s: s.startswith(p), (S, S)),
    "hasSuffix": _Func(lambda p, s: s.endswith(p), (S, S)),
    "indent": _Func(_f_indent, (I, S)),
    "nindent": _Func(lambda n, s: "\n" + _f_indent(n, s), (I, S)),
    "replace": _Func(lambda old, new, s: s.replace(old, new), (S, S, S)),
    "repeat": _Func(_f_repeat, (I, S)),
    "trim": _Func(lambda s: s.strip(_GO_SPACE), (S,)),
    "trimAll": _Func(lambda c, s: _strip(s, c, True, True), (S, S)),
    "trimSuffix": _Func(lambda p, s: _trim_suffix(s, p), (S, S)),
    "trimPrefix": _Func(lambda p, s: _trim_prefix(s, p), (S, S)),
    "int": _Func(lambda v: int(_wrap64(to_int64(v))), (A,)),
    "float64": _Func(to_float64, (A,)),
    "add": _Func(lambda *xs: _wrap64(sum(to_int64(x) for x in xs)), (), A),
    "sub": _Func(lambda a, b: _wrap64(to_int64(a) - to_int64(b)), (A, A)),
    "mul": _Func(lambda a, *xs: _wrap64(math.prod([to_int64(a)] + [to_int64(x) for x in xs])), (A,), A),
    "div": _Func(lambda a, b: _wrap64(_int_div(to_int64(a), to_int64(b))), (A, A)),
    "mod": _Func(lambda a, b: _wrap64(_int_mod(to_int64(a), to_int64(b))), (A, A)),
    "addf": _Func(lambda *xs: _dec_op("+", 0.0, list(xs)), (), A),
    "subf": _Func(lambda a, *xs: _dec_op("-", a, list(xs)), (A,), A),
    "mulf": _Func(lambda a, *xs: _dec_op("*", a, list(xs)), (A,), A),
    "divf": _Func(lambda a, *xs: _dec_op("/", a, list(xs)), (A,), A),
    "max": _Func(lambda a, *xs: _minmax(True, a, *xs), (A,), A),
    "min": _Func(lambda a, *xs: _minmax(False, a, *xs), (A,), A),
    "maxf": _Func(lambda a, *xs: _minmaxf(True, a, *xs), (A,), A),
    "minf": _Func(lambda a, *xs: _minmaxf(False, a, *xs), (A,), A),
    "ceil": _Func(lambda a: math.ceil(to_float64(a)) * 1.0 if math.isfinite(to_float64(a)) else to_float64(a), (A,)),
    "floor": _Func(lambda a: math.floor(to_float64(a)) * 1.0 if math.isfinite(to_float64(a)) else to_float64(a),
                   (A,)),
    "round": _Func(_f_round, (A, I), F),
    "fromJson": _Func(_f_from_json, (S,)),
    "date": _Func(_f_date, (S, A)),
    "toDate": _Func(_f_to_date, (S, S)),
    "now": _Func(GoTime.now, ()),
    "unixEpoch": _Func(lambda t: str(t.sec), (T,)),
    "default": _Func(_f_default, (A,), A),
    # Go builtins
    "and": _Func(None, (V,), V, True),
    "or": _Func(None, (V,), V, True),
    "not": _Func(_b_not, (V,), None, True),
    "eq": _Func(_b_eq, (V,), V, True),
    "ne": _Func(_b_ne, (V, V), None, True),
    "lt": _Func(_b_lt, (V, V), None, True),
    "le": _Func(_b_le, (V, V), None, True),
    "gt": _Func(_b_gt, (V, V), None, True),
    "ge": _Func(_b_ge, (V, V), None, True),
    "len": _Func(_b_len, (V,), None, True),
    "index": _Func(_b_index, (V,), V, True),
    "slice": _Func(_b_slice, (V,), V, True),
    "print": _Func(_b_print, (), A, True),
    "printf": _Func(_b_printf, (S,), A, True),
    "println": _Func(_b_println, (), A, True),
    "html": _Func(_b_html, (), A, True),
    "js": _Func(_b_js, (), A, True),
    "urlquery": _Func(_b_urlquery, (), A, True),
    # per-entry values, bound at execution time
    "__line__": _Func(None, (), None),
    "__timestamp__": _Func(None, (), None),
}

# methods callable on a time.Time value (``(__timestamp__).Unix``), with their signatures
_TIME_METHODS: dict[str, _Func] = {
    "Unix": _Func(lambda t: I64(t.sec), (T,)),
    "UnixMilli": _Func(lambda t: I64(t.unix_nano() // 1_000_000), (T,)),
    "UnixMicro": _Func(lambda t: I64(t.unix_nano() // 1000), (T,)),
    "UnixNano": _Func(lambda t: I64(t.unix_nano()), (T,)),
    "Format": _Func(lambda t, layout: t.format(layout), (T, S)),
    "String": _Func(lambda t: str(t), (T,)),
    "UTC": _Func(lambda t: t.in_zone(_UTC), (T,)),
    "Local": _Func(lambda t: t.in_zone(LOCAL), (T,)),
    "IsZero": _Func(lambda t: t.is_zero(), (T,)),
    "Year": _Func(lambda t: t.fields()[0], (T,)),
    "Month": _Func(lambda t: _MONTHS[t.fields()[1] - 1], (T,)),
    "Day": _Func(lambda t: t.fields()[2], (T,)),
    "Hour": _Func(lambda t: t.fields()[3], (T,)),
    "Minute": _Func(lambda t: t.fields()[4], (T,)),
    "Second": _Func(lambda t: t.fields()[5], (T,)),
    "Nanosecond": _Func(lambda t: t.nsec, (T,)),
    "Weekday": _Func(lambda t: _DAYS[t.fields()[6]], (T,)),
    "YearDay": _Func(lambda t: t.fields()[7], (T,)),
}


# ============================================================================================ executor
class _Missing:
    """Go's ``missingVal``: no value was piped into this command."""


_MISSING = _Missing()


class _BreakSignal(Exception):
    pass


class _ContinueSignal(Exception):
    pass


class _State:
    """One execution: variable stack, output buffer, budgets."""

    def __init__(self, tmpl: "Template", data: dict, line: str, ts_ns: int):
        self.tmpl = tmpl
        self.out: list[str] = []
        self.size = 0
        self.vars: list[tuple[str, Any]] = [("$", data)]
        self.line = line
        self.ts_ns = ts_ns
        self.iterations = 0
        self.depth = 0

    # -- errors ------------------------------------------------------------------------------------
    def errorf(self, node, msg: str):
        name = self.tmpl.name
        if node is None:
            raise TemplateExecError(f"template: {name}: {msg}")
        text = self.tmpl.text[:node.pos]
        col = len(text[text.rfind("\n") + 1:].encode("utf-8", "surrogateescape"))  # Go counts bytes
        line = 1 + text.count("\n")
        raise TemplateExecError(f"template: {name}:{line}:{col}: executing {_go_quote(name)} at <{node}>: {msg}")

    def write(self, s: str):
        self.size += len(s)
        if self.size > MAX_OUTPUT:
            raise TemplateExecError(f"template: {self.tmpl.name}: output exceeds {MAX_OUTPUT} bytes")
        self.out.append(s)

    # -- variables ---------------------------------------------------------------------------------
    def var_value(self, node, name: str):
        for n, v in reversed(self.vars):
            if n == name:
                return v
        self.errorf(node, f"undefined variable: {name}")

    def set_var(self, node, name: str, value):
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        self.errorf(node, f"undefined variable: {name}")

    # -- walking -----------------------------------------------------------------------------------
    def walk(self, dot, node):
        if isinstance(node, _Text):
            self.write(node.text)
        elif isinstance(node, _Action):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decls:
                self.print_value(node, val)
        elif isinstance(node, _List):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, _Branch):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                mark = len(self.vars)
                val = self.eval_pipeline(dot, node.pipe)
                if _truth(val):
                    self.walk(val if node.kind == "with" else dot, node.body)
                elif node.else_body is not None:
                    self.walk(dot, node.else_body)
                del self.vars[mark:]
        elif isinstance(node, _Break):
            raise _BreakSignal()
        elif isinstance(node, _Continue):
            raise _ContinueSignal()
        elif isinstance(node, _TemplateCall):
            body = self.tmpl.defines.get(node.name)
            if body is None:
                self.errorf(node, f"template {_go_quote(node.name)} not defined")
            new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
            if self.depth >= MAX_DEPTH:
                self.errorf(node, f"exceeded maximum template depth ({MAX_DEPTH})")
            saved = self.vars
            self.vars = [("$", new_dot)]
            self.depth += 1
            try:
                self.walk(new_dot, body)
            finally:
                self.depth -= 1
                self.vars = saved
        else:  # pragma: no cover - parser never produces anything else
            self.errorf(node, "unknown node")

    def walk_range(self, dot, node: _Branch):
        mark0 = len(self.vars)
        pipe = node.pipe
        val = self.eval_cmds(dot, pipe)
        for d in pipe.decls:
            self.vars.append((d.idents[0], val))
        mark = len(self.vars)

        def one(index, elem) -> bool:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise TemplateExecError(f"template: {self.tmpl.name}: range exceeds {MAX_ITERATIONS} iterations")
            if pipe.decls:
                if pipe.is_assign:
                    if len(pipe.decls) > 1:
                        self.set_var(node, pipe.decls[0].idents[0], index)
                        self.set_var(node, pipe.decls[1].idents[0], elem)
                    else:
                        self.set_var(node, pipe.decls[0].idents[0], elem)
                else:
                    self.vars[mark - 1] = (self.vars[mark - 1][0], elem)
                    if len(pipe.decls) > 1:
                        self.vars[mark - 2] = (self.vars[mark - 2][0], index)
            try:
                self.walk(elem, node.body)
            except _ContinueSignal:
                pass
            except _BreakSignal:
                return False
            finally:
                del self.vars[mark:]
            return True

        items = None
        if isinstance(val, list):
            items = list(enumerate(val))
        elif isinstance(val, dict):
            items = [(k, val[k]) for k in sorted(val)]
        elif isinstance(val, int) and not isinstance(val, bool):
            if len(pipe.decls) > 1:
                self.errorf(node, f"can't use {val} to iterate over more than one variable")
            items = [(i, i) for i in range(min(int(val), MAX_ITERATIONS + 1))]
        elif val is None:
            items = []
        else:
            self.errorf(node, f"range can't iterate over {go_str(val)}")
        if items:
            for index, elem in items:
                if not one(index, elem):
                    break
        elif node.else_body is not None:
            self.walk(dot, node.else_body)
        del self.vars[mark0:]

    def print_value(self, node, val):
        if isinstance(val, _Missing):
            val = None
        self.write("<no value>" if val is None else go_str(val))

    # -- evaluation --------------------------------------------------------------------------------
    def eval_cmds(self, dot, pipe: _Pipe):
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        return value

    def eval_pipeline(self, dot, pipe: _Pipe | None):
        if pipe is None:
            return _MISSING
        value = self.eval_cmds(dot, pipe)
        for d in pipe.decls:
            if pipe.is_assign:
                self.set_var(d, d.idents[0], value)
            else:
                self.vars.append((d.idents[0], value))
        return value

    def not_a_function(self, node, args, final):
        if len(args) > 1 or not isinstance(final, _Missing):
            self.errorf(node, f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot, cmd: _Command, final):
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, _Chain):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, _Ident):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, _Pipe):
            # variables declared inside parentheses stay visible afterwards, as in Go
            self.not_a_function(first, cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _Variable):
            return self.eval_variable(dot, first, cmd.args, final)
        self.not_a_function(first, cmd.args, final)
        if isinstance(first, _Bool):
            return first.val
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Nil):
            self.errorf(first, "nil is not a command")
        if isinstance(first, _Number):
            return self.ideal_constant(first)
        if isinstance(first, _String):
            return first.text
        self.errorf(first, f"can't evaluate command {first}")

    def ideal_constant(self, n: _Number):
        if n.is_float and not n.text.lower().startswith(("0x", "-0x", "+0x")) and not n.text.startswith("'") \
                and any(c in n.text for c in ".eEpP"):
            return n.float_val
        if n.is_int:
            return n.int_val
        self.errorf(n, f"{n.text} overflows int")

    def eval_variable(self, dot, node: _Variable, args, final):
        value = self.var_value(node, node.idents[0])
        if len(node.idents) == 1:
            self.not_a_function(node, args, final)
            return value
        return self.eval_field_chain(dot, value, node, node.idents[1:], args, final)

    def eval_chain(self, dot, chain: _Chain, args, final):
        if isinstance(chain.node, _Nil):
            self.errorf(chain, f"indirection through explicit nil in {chain}")
        pipe = self.eval_arg(dot, A, chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.fields, args, final)

    def eval_field_chain(self, dot, receiver, node, idents, args, final):
        for name in idents[:-1]:
            receiver = self.eval_field(dot, name, node, [None], _MISSING, receiver)
        return self.eval_field(dot, idents[-1], node, args, final, receiver)

    def eval_field(self, dot, name, node, args, final, receiver):
        if receiver is None or isinstance(receiver, _Missing):
            return None
        if isinstance(receiver, GoTime):
            m = _TIME_METHODS.get(name)
            if m is not None:
                return self.eval_call(dot, m, node, name, args, final, receiver=receiver)
        has_args = len(args) > 1 or not isinstance(final, _Missing)
        if isinstance(receiver, dict):
            if has_args:
                self.errorf(node, f"{name} is not a method but has arguments")
            if name in receiver:
                return receiver[name]
            return "" if isinstance(receiver, LabelMap) else None
        self.errorf(node, f"can't evaluate field {name} in type {go_type_name(receiver)}")

    def eval_function(self, dot, node: _Ident, args, final):
        name = node.name
        fn = FUNCS.get(name)
        if fn is None:
            self.errorf(node, f"{_go_quote(name)} is not a defined function")
        return self.eval_call(dot, fn, node, name, args, final)

    def eval_call(self, dot, fn: _Func, node, name, args, final, receiver=None):
        args = args[1:]
        params = fn.params[1:] if receiver is not None else fn.params
        num_in = len(args) + (0 if isinstance(final, _Missing) else 1)
        num_fixed = len(params)
        if fn.variadic is not None:
            if num_in < num_fixed:
                self.errorf(node, f"wrong number of args for {name}: want at least {num_fixed} got {len(args)}")
        elif num_in != num_fixed:
            self.errorf(node, f"wrong number of args for {name}: want {num_fixed} got {num_in}")
        if fn.builtin and name in ("and", "or"):
            v = None
            for a in args:
                v = self.eval_arg(dot, V, a)
                if _truth(v) == (name == "or"):
                    return v
            if not isinstance(final, _Missing):
                v = self.validate_type(node, final, V)
            return v
        argv = []
        for i, a in enumerate(args):
            kind = params[i] if i < num_fixed else fn.variadic
            argv.append(self.eval_arg(dot, kind, a))
        if not isinstance(final, _Missing):
            if fn.variadic is not None and num_in - 1 >= num_fixed:
                kind = fn.variadic
            else:
                kind = params[num_in - 1]
            argv.append(self.validate_type(node, final, kind))
        if receiver is not None:
            argv.insert(0, receiver)
        try:
            if name == "__line__" and receiver is None:
                return self.line
            if name == "__timestamp__" and receiver is None:
                return GoTime.from_unix_nano(self.ts_ns)
            return fn.fn(*argv)
        except _FuncError as e:
            self.errorf(node, f"error calling {name}: {e}")
        except (OverflowError, ValueError, ArithmeticError, RecursionError) as e:
            self.errorf(node, f"error calling {name}: {e}")

    def validate_type(self, node, value, kind: str):
        if isinstance(value, _Missing):
            value = None
        if value is None:
            if kind in (A, V):
                return None
            self.errorf(node, f"invalid value; expected {_KIND_NAMES[kind]}")
        ok = {
            A: True, V: True,
            S: isinstance(value, str),
            I: type(value) is int,
            L: isinstance(value, I64),
            F: isinstance(value, float),
            B: isinstance(value, bool),
            T: isinstance(value, GoTime),
        }[kind]
        if not ok:
            self.errorf(node, f"wrong type for value; expected {_KIND_NAMES[kind]}; got {go_type_name(value)}")
        return value

    def eval_arg(self, dot, kind: str, n):
        if isinstance(n, _Dot):
            return self.validate_type(n, dot, kind)
        if isinstance(n, _Nil):
            if kind == A:
                return None
            self.errorf(n, f"cannot assign nil to {_KIND_NAMES[kind]}")
        if isinstance(n, _Field):
            return self.validate_type(n, self.eval_field_chain(dot, dot, n, n.idents, [n], _MISSING), kind)
        if isinstance(n, _Variable):
            return self.validate_type(n, self.eval_variable(dot, n, [n], _MISSING), kind)
        if isinstance(n, _Pipe):
            return self.validate_type(n, self.eval_pipeline(dot, n), kind)
        if isinstance(n, _Ident):
            return self.validate_type(n, self.eval_function(dot, n, [n], _MISSING), kind)
        if isinstance(n, _Chain):
            return self.validate_type(n, self.eval_chain(dot, n, [n], _MISSING), kind)
        # literals
        if kind == B:
            if isinstance(n, _Bool):
                return n.val
            self.errorf(n, f"expected bool; found {n}")
        if kind == F:
            if isinstance(n, _Number) and n.is_float:
                return n.float_val
            self.errorf(n, f"expected float; found {n}")
        if kind in (I, L):
            if isinstance(n, _Number) and n.is_int:
                return I64(n.int_val) if kind == L else n.int_val
            self.errorf(n, f"expected integer; found {n}")
        if kind == S:
            if isinstance(n, _String):
                return n.text
            self.errorf(n, f"expected string; found {n}")
        if kind in (A, V):
            if isinstance(n, _Bool):
                return n.val
            if isinstance(n, _String):
                return n.text
            if isinstance(n, _Number):
                return self.ideal_constant(n)
        self.errorf(n, f"can't handle {n} for arg of type {_KIND_NAMES[kind]}")


# ============================================================================================ public API
class Template:
    """A parsed template. ``execute`` is thread-safe (all per-run state lives in a ``_State``)."""

    def __init__(self, text: str, name: str, root: _List, defines: dict[str, _List]):
        self.text = text
        self.name = name
        self.root = root
        self.defines = defines
        # Loki's fast path: the template is exactly one action made of one field, e.g. ``{{.message}}``.
        # Like Loki, declarations are not looked at (``{{$x := .a}}`` also takes the fast path).
        self.single_field: str | None = None
        if len(root.nodes) == 1 and isinstance(root.nodes[0], _Action):
            pipe = root.nodes[0].pipe
            if len(pipe.cmds) == 1 and len(pipe.cmds[0].args) == 1:
                arg = pipe.cmds[0].args[0]
                if isinstance(arg, _Field) and len(arg.idents) == 1:
                    self.single_field = arg.idents[0]

    def execute(self, data: dict[str, str], line: str = "", ts_ns: int = 0) -> str:
        """Render with the label map ``data``; ``line``/``ts_ns`` feed ``__line__``/``__timestamp__``."""
        st = _State(self, data if isinstance(data, LabelMap) else LabelMap(data), line, ts_ns)
        try:
            st.walk(st.vars[0][1], self.root)
        except RecursionError:
            raise TemplateExecError(f"template: {self.name}: template too deeply nested") from None
        return "".join(st.out)

    def __repr__(self):
        return f"Template({self.name!r}, {self.text!r})"


def compile_template(text: str, name: str = "line") -> Template:
    """Parse ``text`` as Go ``text/template`` with Loki's function map; ``name`` appears in error messages
    (Loki uses ``line`` for line_format and ``label`` for label_format)."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_TEMPLATE_LEN:
        raise TemplateSyntaxError(f"template: {name}: template too long ({len(text)} bytes, limit "
                                  f"{MAX_TEMPLATE_LEN})")
    p = _Parser(text, name, FUNCS)
    try:
        root = p.parse()
    except RecursionError:
        raise TemplateSyntaxError(f"template: {name}: template too deeply nested") from None
    return Template(text, name, root, p.defines)
