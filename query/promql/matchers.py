"""Label matcher evaluation with Prometheus semantics (anchored RE2; a missing label reads as "")."""
from __future__ import annotations

from ..logql.re2util import compile_re2
from .ast import Matcher

__all__ = ["matches", "matches_empty", "match_labels"]


def matches(m: Matcher, value: str) -> bool:
    if m.op == "=":
        return value == m.value
    if m.op == "!=":
        return value != m.value
    rx = compile_re2(m.value, anchored=True)
    hit = rx.search(value) is not None
    return hit if m.op == "=~" else not hit


def matches_empty(m: Matcher) -> bool:
    return matches(m, "")


def match_labels(matchers: list[Matcher], labels: dict[str, str]) -> bool:
    return all(matches(m, labels.get(m.name, "")) for m in matchers)
