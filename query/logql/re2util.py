"""RE2 compilation for LogQL: Loki uses Go's RE2, so we use google-re2 to get the same syntax and linear time.

Compiled patterns are cached because the same regex is compiled once per query but queries repeat (Grafana
refreshes dashboards); the cache is bounded so hostile or high-cardinality regexes cannot grow memory.
"""
from __future__ import annotations

from functools import lru_cache

import re2

__all__ = ["compile_re2", "MAX_PATTERN_LEN", "RegexError"]

MAX_PATTERN_LEN = 16 * 1024

_OPTS = re2.Options()
_OPTS.log_errors = False  # RE2 would otherwise print every bad user regex to stderr


class RegexError(ValueError):
    """An invalid or oversized regular expression (message follows Go's ``error parsing regexp: ...``)."""


def compile_re2(pattern: str, anchored: bool = False):
    """Compile with Go RE2 semantics; ``anchored`` wraps as ``^(?:pattern)$`` (label matchers, label filters)."""
    return _compile(pattern, bool(anchored))


@lru_cache(maxsize=1024)
def _compile(pattern: str, anchored: bool):
    if len(pattern) > MAX_PATTERN_LEN:
        raise RegexError(f"error parsing regexp: expression too large ({len(pattern)} > {MAX_PATTERN_LEN} characters)")
    src = f"^(?:{pattern})$" if anchored else pattern
    try:
        return re2.compile(src, _OPTS)
    except re2.error as err:
        msg = err.args[0] if err.args else str(err)
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        raise RegexError(f"error parsing regexp: {msg}") from None
    except (TypeError, ValueError) as err:  # e.g. embedded NUL/invalid text rejected by the binding
        raise RegexError(f"error parsing regexp: {err}") from None
