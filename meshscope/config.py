"""Parsing of the human-friendly values the CLI takes: durations and byte sizes."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                   "w": 604800.0, "y": 31536000.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_duration(text: str) -> float:
    """Seconds from Prometheus/Loki-style durations: ``90s``, ``1h30m``, ``7d``; a bare number means seconds."""
    s = str(text).strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pos = 0
        value = 0.0
        for m in _DURATION_RE.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"invalid duration {text!r} (examples: 500ms, 30s, 5m, 1h30m, 7d)") from None
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes from ``16MiB``, ``64MB``, ``1048576``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r} (examples: 1048576, 512KiB, 16MiB, 1GiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
