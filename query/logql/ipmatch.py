"""``ip("...")`` matching for line filters (``|= ip(...)``) and label filters (``addr = ip(...)``).

Mirrors Loki's ``ip.go``: the pattern is a single address, a CIDR prefix or an ``a-b`` range (Go ``netip`` /
``netipx`` syntax); the subject is scanned for IPv4/IPv6 *candidates* using the same prefix hints and charsets
as Loki, so that e.g. a trailing dot after an address (``1.2.3.4.``) defeats the match exactly as it does there.
"""
from __future__ import annotations

import ipaddress
import re

from .values import go_quote

__all__ = ["IPMatcher"]

# Position of the next candidate: an IPv4 hint (digit with a '.' within the next three characters) wins over an
# IPv6 hint ("::" + hex digit, or 1-4 hex digits followed by ':') at the same position, as in Loki's loop.
_CAND = re.compile(r"(?P<v4>[0-9](?=\.|.\.|..\.))|(?=::[0-9a-fA-F]|[0-9a-fA-F]{1,4}:)", re.S)
_V4_SPAN = re.compile(r"[0-9.]*")
_V6_SPAN = re.compile(r"[0-9a-fA-F:.]*")
_BITS = re.compile(r"(?:0|[1-9][0-9]{0,2})\Z")


def _parse_addr(s: str):
    """Go ``netip.ParseAddr`` (strict dotted quad, no leading zeros; IPv6 with optional zone)."""
    if not s or s.strip() != s or "/" in s:
        return None
    try:
        if ":" in s:
            return ipaddress.IPv6Address(s)
        return ipaddress.IPv4Address(s)
    except ValueError:
        return None


class IPMatcher:
    """Compiled ``ip()`` pattern; raises ValueError (``ip: invalid pattern: "..."``) when it is not one."""

    __slots__ = ("pattern", "_kind", "_a", "_b", "_cache")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._cache: dict[str, bool] = {}
        addr = _parse_addr(pattern)
        if addr is not None:
            self._kind, self._a, self._b = "addr", addr, None
            return
        if "/" in pattern:
            ip_s, _, bits = pattern.rpartition("/")
            addr = _parse_addr(ip_s)
            if addr is not None and "%" not in ip_s and _BITS.match(bits) and int(bits) <= addr.max_prefixlen:
                net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
                self._kind, self._a, self._b = "net", net, None
                return
        if "-" in pattern:
            lo_s, _, hi_s = pattern.partition("-")
            lo, hi = _parse_addr(lo_s), _parse_addr(hi_s)
            if (lo is not None and hi is not None and lo.version == hi.version
                    and getattr(lo, "scope_id", None) == getattr(hi, "scope_id", None) and not hi < lo):
                self._kind, self._a, self._b = "range", lo, hi
                return
        raise ValueError(f"ip: invalid pattern: {go_quote(pattern)}")

    # -------------------------------------------------------------------------------------------
    def _contains(self, ip) -> bool:
        kind = self._kind
        if kind == "addr":
            return ip == self._a
        if kind == "net":
            return ip.version == self._a.version and ip in self._a
        lo, hi = self._a, self._b
        return (ip.version == lo.version and getattr(ip, "scope_id", None) == getattr(lo, "scope_id", None)
                and lo <= ip <= hi)

    def _candidate(self, text: str) -> bool:
        hit = self._cache.get(text)
        if hit is None:
            ip = _parse_addr(text)
            hit = ip is not None and self._contains(ip)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[text] = hit
        return hit

    def matches_line(self, line: str) -> bool:
        """True when any IPv4/IPv6 candidate found in the line is inside the pattern."""
        pos = 0
        search = _CAND.search
        while True:
            m = search(line, pos)
            if m is None:
                return False
            i = m.start()
            end = (_V4_SPAN if m.group("v4") is not None else _V6_SPAN).match(line, i).end()
            if self._candidate(line[i:end]):
                return True
            pos = end + 1

    def matches_value(self, value: str) -> bool:
        """Label-filter form: Loki runs the same candidate scan over the label value."""
        return self.matches_line(value)

    def __repr__(self) -> str:
        return f"IPMatcher({self.pattern!r})"
