"""Typed PromQL AST (Prometheus ``promql/parser/ast.go`` node kinds, sqlglot-style dataclasses).

Every node records ``pos`` (0-based character offset) so errors can point at the source like Prometheus'
``1:5: parse error: ...``. ``type`` gives the PromQL value type the evaluator and the type checker reason about.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass

__all__ = ["Node", "Expr", "NumberLiteral", "StringLiteral", "Matcher", "VectorSelector", "MatrixSelector",
           "SubqueryExpr", "Call", "AggregateExpr", "BinaryExpr", "UnaryExpr", "ParenExpr", "VectorMatching",
           "walk", "SCALAR", "VECTOR", "MATRIX", "STRING", "unwrap_parens", "format_expr"]

SCALAR, VECTOR, MATRIX, STRING = "scalar", "instant vector", "range vector", "string"


class Node:
    pos: int = 0


@dataclass
class Matcher:
    """One label matcher; ``op`` is one of ``= != =~ !~``. Regexes are anchored when evaluated."""
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        from ..logql.values import go_quote
        return f"{self.name}{self.op}{go_quote(self.value)}"


class Expr(Node):
    @property
    def type(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class NumberLiteral(Expr):
    value: float
    pos: int = 0

    @property
    def type(self) -> str:
        return SCALAR


@dataclass
class StringLiteral(Expr):
    value: str
    pos: int = 0

    @property
    def type(self) -> str:
        return STRING


@dataclass
class VectorSelector(Expr):
    """``name{matchers}``; ``matchers`` includes the ``__name__`` matcher when a name was given."""
    name: str | None
    matchers: list[Matcher]
    offset_ns: int = 0
    at_ns: int | None = None          # fixed ``@ <timestamp>``
    at_mod: str | None = None         # ``start`` / ``end`` for ``@ start()`` / ``@ end()``
    pos: int = 0

    @property
    def type(self) -> str:
        return VECTOR


@dataclass
class MatrixSelector(Expr):
    vs: VectorSelector
    range_ns: int
    pos: int = 0

    @property
    def type(self) -> str:
        return MATRIX


@dataclass
class SubqueryExpr(Expr):
    expr: Expr
    range_ns: int
    step_ns: int = 0                  # 0: default (the evaluation interval)
    offset_ns: int = 0
    at_ns: int | None = None
    at_mod: str | None = None
    pos: int = 0

    @property
    def type(self) -> str:
        return MATRIX


@dataclass
class Call(Expr):
    func: str
    args: list[Expr]
    pos: int = 0

    @property
    def type(self) -> str:
        from .functions import FUNCTIONS
        return FUNCTIONS[self.func].ret


@dataclass
class AggregateExpr(Expr):
    op: str
    expr: Expr
    param: Expr | None = None
    grouping: list[str] = field(default_factory=list)
    without: bool = False
    has_grouping: bool = False        # ``by ()`` differs from no clause only in printing
    pos: int = 0

    @property
    def type(self) -> str:
        return VECTOR


@dataclass
class VectorMatching:
    card: str = "one-to-one"          # one-to-one | many-to-one | one-to-many | many-to-many
    on: bool = False
    labels: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)


@dataclass
class BinaryExpr(Expr):
    op: str
    lhs: Expr
    rhs: Expr
    matching: VectorMatching | None = None
    return_bool: bool = False
    pos: int = 0

    @property
    def type(self) -> str:
        if self.lhs.type == SCALAR and self.rhs.type == SCALAR:
            return SCALAR
        return VECTOR


@dataclass
class UnaryExpr(Expr):
    op: str
    expr: Expr
    pos: int = 0

    @property
    def type(self) -> str:
        return self.expr.type


@dataclass
class ParenExpr(Expr):
    expr: Expr
    pos: int = 0

    @property
    def type(self) -> str:
        return self.expr.type


def walk(node):
    """Pre-order traversal over expression nodes."""
    yield node
    if is_dataclass(node):
        for f in fields(node):
            val = getattr(node, f.name)
            for item in (val if isinstance(val, list) else [val]):
                if isinstance(item, Expr):
                    yield from walk(item)


def unwrap_parens(e: Expr) -> Expr:
    while isinstance(e, ParenExpr):
        e = e.expr
    return e


def _dur(ns: int) -> str:
    """Prometheus model.Duration.String()."""
    if ns == 0:
        return "0s"
    ms = ns // 10**6
    out = []
    for unit, size in (("y", 365 * 86400000), ("w", 7 * 86400000), ("d", 86400000), ("h", 3600000),
                       ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


def format_expr(e: Expr) -> str:
    """Canonical PromQL text of an expression (used in messages and by the pushdown seam's callers)."""
    from ..logql.values import format_float, go_quote
    if isinstance(e, NumberLiteral):
        return format_float(e.value) if e.value == e.value else "NaN"
    if isinstance(e, StringLiteral):
        return go_quote(e.value)
    if isinstance(e, VectorSelector):
        ms = [m for m in e.matchers if not (m.name == "__name__" and m.op == "=" and e.name)]
        s = (e.name or "") + ("{" + ", ".join(str(m) for m in ms) + "}" if ms or not e.name else "")
        return s + _mods(e.offset_ns, e.at_ns, e.at_mod)
    if isinstance(e, MatrixSelector):
        vs = e.vs
        base = format_expr(VectorSelector(vs.name, vs.matchers))
        return f"{base}[{_dur(e.range_ns)}]" + _mods(vs.offset_ns, vs.at_ns, vs.at_mod)
    if isinstance(e, SubqueryExpr):
        step = _dur(e.step_ns) if e.step_ns else ""
        return f"{format_expr(e.expr)}[{_dur(e.range_ns)}:{step}]" + _mods(e.offset_ns, e.at_ns, e.at_mod)
    if isinstance(e, Call):
        return f"{e.func}(" + ", ".join(format_expr(a) for a in e.args) + ")"
    if isinstance(e, AggregateExpr):
        g = ""
        if e.has_grouping or e.without:
            g = (" without (" if e.without else " by (") + ", ".join(e.grouping) + ")"
        args = (format_expr(e.param) + ", " if e.param is not None else "") + format_expr(e.expr)
        return f"{e.op}{g} ({args})"
    if isinstance(e, BinaryExpr):
        mod = " bool" if e.return_bool else ""
        m = e.matching
        if m is not None and (m.on or m.labels):
            mod += (" on(" if m.on else " ignoring(") + ", ".join(m.labels) + ")"
        if m is not None and m.card in ("many-to-one", "one-to-many"):
            mod += (" group_left(" if m.card == "many-to-one" else " group_right(") + ", ".join(m.include) + ")"
        return f"{format_expr(e.lhs)} {e.op}{mod} {format_expr(e.rhs)}"
    if isinstance(e, UnaryExpr):
        return f"{e.op}{format_expr(e.expr)}"
    if isinstance(e, ParenExpr):
        return f"({format_expr(e.expr)})"
    return repr(e)


def _mods(offset_ns: int, at_ns, at_mod) -> str:
    s = ""
    if at_mod:
        s += f" @ {at_mod}()"
    elif at_ns is not None:
        s += f" @ {at_ns / 1e9:.3f}"
    if offset_ns > 0:
        s += f" offset {_dur(offset_ns)}"
    elif offset_ns < 0:
        s += f" offset -{_dur(-offset_ns)}"
    return s
