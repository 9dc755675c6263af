"""The one place where text is turned into SQL literals.

User input reaches SQL as bound parameters wherever the driver allows it. Where a
literal is unavoidable (a table function's arguments, a format schema), it goes
through ``quote_string``, which ``tests/test_sqlutil.py`` fuzzes against the real
store: any string must come back from ``SELECT <literal>`` unchanged.
"""

from __future__ import annotations

_ESCAPES = {"\\": "\\\\", "'": "\\'", "\0": "\\0", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_TABLE = str.maketrans(_ESCAPES)


def quote_string(value: str) -> str:
    """A ClickHouse single-quoted string literal that evaluates to ``value``."""
    if not isinstance(value, str):
        raise TypeError(f"quote_string takes str, not {type(value).__name__}")
    return "'" + value.translate(_TABLE) + "'"


def quote_identifier(name: str) -> str:
    """A back-quoted identifier (database, table or column name)."""
    if not isinstance(name, str) or not name:
        raise ValueError("identifier must be a non-empty string")
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def is_text(value: str) -> bool:
    """Whether ``value`` is text the store can take as a parameter: a Python str with half a surrogate pair (from a
    JSON ``\\ud800`` escape, or bytes kept as surrogate escapes) has no UTF-8 form, and the driver fails on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
