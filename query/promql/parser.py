"""Recursive-descent PromQL parser with Prometheus' precedence and type checks (``promql/parser``).

Precedence, loosest first: ``or``; ``and unless``; comparisons; ``+ -``; ``* / % atan2``; unary ``- +``; ``^``
(right-associative, so ``-1 ^ 2`` is ``-(1 ^ 2)``). Postfix ``[range]``, ``[range:step]``, ``offset`` and ``@``
bind tightest. The checks Prometheus makes in ``checkAST`` (operand types, function arities, set operators,
``bool``) are made here too so that a bad query fails before any data is read, with a positioned message.
"""
from __future__ import annotations

import math

from ..logql.lexer import MAX_DURATION_NS, YEAR_NS
from . import ast as A
from .errors import PromQLError
from .functions import AGGREGATORS, FUNCTIONS, PARAM_AGGREGATORS
from .lexer import Token, position, tokenize

__all__ = ["parse", "parse_matchers", "is_valid_label_name"]

_PREC = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
         "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_CMP = {"==", "!=", "<=", "<", ">=", ">"}
_SET = {"and", "or", "unless"}
_WORD_OPS = {"and", "or", "unless", "atan2"}
_UNARY_PREC = 5.5  # between * and ^


def is_valid_label_name(s: str) -> bool:
    """UTF-8 label names (Prometheus 3 default): non-empty and valid UTF-8."""
    if not s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    # ------------------------------------------------------------ helpers
    def error(self, msg: str, pos: int | None = None) -> PromQLError:
        if pos is None:
            pos = self.peek().pos
        line, col = position(self.text, pos)
        return PromQLError(f"{line}:{col}: parse error: {msg}", "bad_data")

    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def is_op(self, op: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "op" and t.value == op

    def is_word(self, word: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "ident" and t.value.lower() == word

    def expect_op(self, op: str, ctx: str) -> Token:
        t = self.peek()
        if not (t.kind == "op" and t.value == op):
            raise self.error(f"unexpected {t.describe()} in {ctx}, expected \"{op}\"")
        return self.next()

    # ------------------------------------------------------------ expressions
    def parse(self) -> A.Expr:
        if self.peek().kind == "eof":
            raise self.error("no expression found in input")
        e = self.expr(0)
        t = self.peek()
        if t.kind != "eof":
            raise self.error(f"unexpected {t.describe()}")
        return e

    def binop_token(self) -> str | None:
        t = self.peek()
        if t.kind == "op" and t.value in _PREC:
            return t.value
        if t.kind == "ident" and t.value.lower() in _WORD_OPS:
            return t.value.lower()
        return None

    def expr(self, min_prec: float) -> A.Expr:
        lhs = self.unary()
        while True:
            op = self.binop_token()
            if op is None:
                return lhs
            prec = _PREC[op]
            if prec < min_prec:
                return lhs
            optok = self.next()
            return_bool = False
            if self.is_word("bool"):
                self.next()
                return_bool = True
            matching = self.matching(op)
            nxt = prec + 1 if op != "^" else prec
            rhs = self.expr(nxt)
            lhs = self.check_binary(A.BinaryExpr(op, lhs, rhs, matching, return_bool, optok.pos))

    def matching(self, op: str) -> A.VectorMatching | None:
        m = None
        if self.is_word("on") or self.is_word("ignoring"):
            on = self.next().value.lower() == "on"
            m = A.VectorMatching(on=on, labels=self.label_list())
        if self.is_word("group_left") or self.is_word("group_right"):
            t = self.next()
            if m is None:
                m = A.VectorMatching()
            m.card = "many-to-one" if t.value.lower() == "group_left" else "one-to-many"
            if self.is_op("("):
                m.include = self.label_list()
        return m

    def unary(self) -> A.Expr:
        t = self.peek()
        if t.kind == "op" and t.value in ("-", "+"):
            self.next()
            operand = self.expr(_UNARY_PREC)
            inner = operand
            if isinstance(inner, A.NumberLiteral):
                if t.value == "-":
                    inner.value = -inner.value
                inner.pos = t.pos
                return inner
            if operand.type not in (A.SCALAR, A.VECTOR):
                raise self.error(f"unary expression only allowed on expressions of type scalar or instant vector, "
                                 f"got \"{operand.type}\"", t.pos)
            return A.UnaryExpr(t.value, operand, t.pos)
        return self.postfix(self.primary())

    def postfix(self, e: A.Expr) -> A.Expr:
        while True:
            t = self.peek()
            if t.kind == "op" and t.value == "[":
                e = self.range_or_subquery(e)
            elif t.kind == "ident" and t.value.lower() == "offset":
                self.next()
                neg = False
                if self.is_op("-") or self.is_op("+"):
                    neg = self.next().value == "-"
                d = self.duration("offset")
                self.set_offset(e, -d if neg else d, t.pos)
            elif t.kind == "op" and t.value == "@":
                self.next()
                self.set_at(e, t.pos)
            else:
                return e

    def duration(self, ctx: str) -> int:
        t = self.next()
        if t.kind == "dur":
            ns = int(t.value)
        elif t.kind == "num" and math.isfinite(t.value):
            ns = int(round(t.value * 1e9))
        else:
            raise self.error(f"unexpected {t.describe()} in {ctx}, expected duration", t.pos)
        if abs(ns) > MAX_DURATION_NS:
            raise self.error(f"duration out of range in {ctx} (at most {MAX_DURATION_NS // YEAR_NS}y)", t.pos)
        return ns

    def _target(self, e: A.Expr, what: str, pos: int):
        inner = e
        if isinstance(inner, A.MatrixSelector):
            return inner.vs
        if isinstance(inner, (A.VectorSelector, A.SubqueryExpr)):
            return inner
        raise self.error(f"{what} modifier must be preceded by an instant vector selector or range vector "
                         f"selector or a subquery", pos)

    def set_offset(self, e: A.Expr, d: int, pos: int) -> None:
        tgt = self._target(e, "offset", pos)
        if getattr(tgt, "_offset_set", False):
            raise self.error("offset may not be set multiple times", pos)
        tgt.offset_ns = d
        tgt._offset_set = True

    def set_at(self, e: A.Expr, pos: int) -> None:
        tgt = self._target(e, "@", pos)
        if tgt.at_ns is not None or tgt.at_mod is not None:
            raise self.error("@ <timestamp> may not be set multiple times", pos)
        t = self.next()
        if t.kind == "ident" and t.value.lower() in ("start", "end") and self.is_op("("):
            self.next()
            self.expect_op(")", "@ modifier")
            tgt.at_mod = t.value.lower()
            return
        sign = 1.0
        if t.kind == "op" and t.value in ("-", "+"):
            sign = -1.0 if t.value == "-" else 1.0
            t = self.next()
        if t.kind in ("num", "dur"):
            v = sign * (t.value if t.kind == "num" else t.value / 1e9)
            if not math.isfinite(v) or abs(v) * 1e9 > MAX_DURATION_NS:
                raise self.error(f"timestamp out of bounds for @ modifier: {v}", t.pos)
            tgt.at_ns = int(round(v * 1000)) * 10**6
            return
        raise self.error(f"unexpected {t.describe()} in @, expected timestamp", t.pos)

    def range_or_subquery(self, e: A.Expr) -> A.Expr:
        lb = self.next()
        rng = self.duration("range")
        if self.is_op(":"):
            self.next()
            step = 0
            if not self.is_op("]"):
                step = self.duration("subquery step")
            self.expect_op("]", "subquery selector")
            if e.type != A.VECTOR:
                raise self.error(f"subquery is only allowed on instant vector, got {e.type} instead", e.pos)
            if rng <= 0:
                raise self.error("subquery range must be positive", lb.pos)
            return A.SubqueryExpr(e, rng, step, pos=e.pos)
        self.expect_op("]", "matrix selector")
        if not isinstance(e, A.VectorSelector):
            raise self.error("ranges only allowed for vector selectors", lb.pos)
        if getattr(e, "_offset_set", False) or e.at_ns is not None or e.at_mod is not None:
            raise self.error("no offset or @ modifiers allowed before range", lb.pos)
        if rng <= 0:
            raise self.error("range must be positive", lb.pos)
        return A.MatrixSelector(e, rng, e.pos)

    def primary(self) -> A.Expr:
        t = self.peek()
        if t.kind == "num":
            self.next()
            return A.NumberLiteral(t.value, t.pos)
        if t.kind == "str":
            self.next()
            return A.StringLiteral(t.value, t.pos)
        if t.kind == "op" and t.value == "(":
            self.next()
            e = self.expr(0)
            self.expect_op(")", "paren expression")
            return A.ParenExpr(e, t.pos)
        if t.kind == "op" and t.value == "{":
            return self.selector(None, t.pos)
        if t.kind == "ident":
            word = t.value
            low = word.lower()
            if low in AGGREGATORS and (self.is_op("(", 1) or self.is_word("by", 1) or self.is_word("without", 1)):
                return self.aggregate()
            if self.is_op("(", 1):
                if word in FUNCTIONS:
                    return self.call()
                raise self.error(f"unknown function with name \"{word}\"", t.pos)
            if low in ("by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset") \
                    or low in _WORD_OPS:
                raise self.error(f"unexpected <{low}>", t.pos)
            self.next()
            if self.is_op("{"):
                return self.selector(word, t.pos)
            return self.check_selector(A.VectorSelector(word, [A.Matcher("__name__", "=", word)], pos=t.pos))
        if t.kind == "dur":  # Prometheus 3: a duration literal in an expression is its number of seconds
            self.next()
            return A.NumberLiteral(t.value / 1e9, t.pos)
        if t.kind == "eof":
            raise self.error("unexpected end of input")
        raise self.error(f"unexpected {t.describe()}", t.pos)

    # ------------------------------------------------------------ selectors
    def selector(self, name: str | None, pos: int) -> A.Expr:
        self.expect_op("{", "label matching")
        matchers: list[A.Matcher] = []
        if name is not None:
            matchers.append(A.Matcher("__name__", "=", name))
        while not self.is_op("}"):
            t = self.next()
            if t.kind == "str" and (self.is_op(",") or self.is_op("}")):
                if name is not None:
                    raise self.error(f"metric name must not be set twice: \"{name}\" or \"{t.value}\"", t.pos)
                name = t.value
                matchers.append(A.Matcher("__name__", "=", t.value))
            elif t.kind in ("ident", "str"):
                lname = t.value
                op = self.next()
                if not (op.kind == "op" and op.value in ("=", "!=", "=~", "!~")):
                    raise self.error(f"unexpected {op.describe()} in label matching, expected label matching "
                                     f"operator", op.pos)
                v = self.next()
                if v.kind != "str":
                    raise self.error(f"unexpected {v.describe()} in label matching, expected string", v.pos)
                if op.value in ("=~", "!~"):
                    from ..logql.re2util import RegexError, compile_re2
                    try:
                        compile_re2(v.value, anchored=True)
                    except RegexError as err:
                        raise self.error(f"invalid regular expression in label matcher: {err}", v.pos) from None
                if lname == "__name__" and op.value == "=" and name is not None and t.kind == "ident" \
                        and any(m.name == "__name__" for m in matchers):
                    raise self.error(f"metric name must not be set twice: \"{name}\" or \"{v.value}\"", t.pos)
                matchers.append(A.Matcher(lname, op.value, v.value))
            else:
                raise self.error(f"unexpected {t.describe()} in label matching, expected identifier or \"}}\"",
                                 t.pos)
            if self.is_op(","):
                self.next()
            elif not self.is_op("}"):
                t = self.peek()
                raise self.error(f"unexpected {t.describe()} in label matching, expected \",\" or \"}}\"")
        self.next()
        return self.check_selector(A.VectorSelector(name, matchers, pos=pos))

    def check_selector(self, vs: A.VectorSelector) -> A.VectorSelector:
        from .matchers import matches_empty
        if not any(not matches_empty(m) for m in vs.matchers):
            raise self.error("vector selector must contain at least one non-empty matcher", vs.pos)
        return vs

    def label_list(self) -> list[str]:
        self.expect_op("(", "grouping opts")
        out = []
        while not self.is_op(")"):
            t = self.next()
            if t.kind not in ("ident", "str"):
                raise self.error(f"unexpected {t.describe()} in grouping opts, expected label", t.pos)
            if t.kind == "str" and not is_valid_label_name(t.value):
                raise self.error(f"invalid label name \"{t.value}\"", t.pos)
            out.append(t.value)
            if self.is_op(","):
                self.next()
            elif not self.is_op(")"):
                raise self.error(f"unexpected {self.peek().describe()} in grouping opts, expected \",\" or \")\"")
        self.next()
        return out

    # ------------------------------------------------------------ aggregations and calls
    def aggregate(self) -> A.Expr:
        t = self.next()
        op = t.value.lower()
        grouping, without, has = [], False, False
        if self.is_word("by") or self.is_word("without"):
            without = self.next().value.lower() == "without"
            grouping, has = self.label_list(), True
        self.expect_op("(", "aggregation")
        args = []
        if not self.is_op(")"):
            args.append(self.expr(0))
            while self.is_op(","):
                self.next()
                if self.is_op(")"):
                    break
                args.append(self.expr(0))
        self.expect_op(")", "aggregation")
        if self.is_word("by") or self.is_word("without"):
            if has:
                raise self.error("aggregation must only contain one grouping clause")
            without = self.next().value.lower() == "without"
            grouping, has = self.label_list(), True
        param = None
        if op in PARAM_AGGREGATORS:
            if len(args) != 2:
                raise self.error(f"wrong number of arguments for aggregate expression provided, expected 2, "
                                 f"got {len(args)}", t.pos)
            param, expr = args
        else:
            if len(args) != 1:
                raise self.error(f"wrong number of arguments for aggregate expression provided, expected 1, "
                                 f"got {len(args)}", t.pos)
            expr = args[0]
        if expr.type != A.VECTOR:
            raise self.error(f"expected type instant vector in aggregation expression, got {expr.type}", expr.pos)
        if op == "count_values":
            if param.type != A.STRING:
                raise self.error(f"expected type string in aggregation parameter, got {param.type}", param.pos)
        elif param is not None and param.type != A.SCALAR:
            raise self.error(f"expected type scalar in aggregation parameter, got {param.type}", param.pos)
        return A.AggregateExpr(op, expr, param, grouping, without, has, t.pos)

    def call(self) -> A.Expr:
        t = self.next()
        fn = FUNCTIONS[t.value]
        self.expect_op("(", "function call")
        args = []
        if not self.is_op(")"):
            args.append(self.expr(0))
            while self.is_op(","):
                self.next()
                if self.is_op(")"):
                    break
                args.append(self.expr(0))
        self.expect_op(")", "function call")
        n, need = len(args), len(fn.args)
        if fn.variadic == 0:
            if n != need:
                raise self.error(f"expected {need} argument(s) in call to \"{fn.name}\", got {n}", t.pos)
        else:
            if n < need - 1:
                raise self.error(f"expected at least {need - 1} argument(s) in call to \"{fn.name}\", got {n}",
                                 t.pos)
            if fn.variadic > 0 and n > need + fn.variadic - 1:
                raise self.error(f"expected at most {need + fn.variadic - 1} argument(s) in call to "
                                 f"\"{fn.name}\", got {n}", t.pos)
        for i, a in enumerate(args):
            want = fn.args[min(i, len(fn.args) - 1)]
            if a.type != want:
                raise self.error(f"expected type {want} in call to function \"{fn.name}\", got {a.type}", a.pos)
        if fn.name in ("info",):
            raise PromQLError(f"function \"{fn.name}\" is not supported", "unsupported")
        return A.Call(fn.name, args, t.pos)

    # ------------------------------------------------------------ binary type checks
    def check_binary(self, b: A.BinaryExpr) -> A.BinaryExpr:
        lt, rt = b.lhs.type, b.rhs.type
        for side in (b.lhs, b.rhs):
            if side.type not in (A.SCALAR, A.VECTOR):
                raise self.error("binary expression must contain only scalar and instant vector types", side.pos)
        if b.return_bool and b.op not in _CMP:
            raise self.error("bool modifier can only be used on comparison operators", b.pos)
        if b.op in _CMP and lt == A.SCALAR and rt == A.SCALAR and not b.return_bool:
            raise self.error("comparisons between scalars must use BOOL modifier", b.pos)
        if b.op in _SET:
            if lt == A.SCALAR or rt == A.SCALAR:
                raise self.error(f"set operator \"{b.op}\" not allowed in binary scalar expression", b.pos)
            if b.matching is not None and b.matching.card in ("many-to-one", "one-to-many"):
                raise self.error(f"no grouping allowed for \"{b.op}\" operation", b.pos)
            if b.matching is None:
                b.matching = A.VectorMatching()
            b.matching.card = "many-to-many"
        if b.matching is not None and (lt != A.VECTOR or rt != A.VECTOR):
            if b.matching.on or b.matching.labels or b.matching.card != "one-to-one":
                raise self.error("vector matching only allowed between instant vectors", b.pos)
            b.matching = None
        if b.matching is not None and b.matching.on and b.matching.card in ("many-to-one", "one-to-many"):
            for lab in b.matching.include:
                if lab in b.matching.labels:
                    raise self.error(f"label \"{lab}\" must not occur in ON and GROUP clause at once", b.pos)
        if lt == A.VECTOR and rt == A.VECTOR and b.matching is None:
            b.matching = A.VectorMatching()
        return b


# Ranges, offsets and @ times are kept within ±MAX_DURATION_NS (Prometheus' own limit is int64's ±292 years).

_DATE_FUNCS = {"days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month", "year"}


def parse(text: str) -> A.Expr:
    """Parse a PromQL expression; raises PromQLError(bad_data) with a ``line:col: parse error:`` message."""
    if not isinstance(text, str):
        raise PromQLError("query must be a string", "bad_data")
    try:
        return _Parser(text).parse()
    except RecursionError:
        raise PromQLError("1:1: parse error: expression nested too deeply", "bad_data") from None


def parse_matchers(text: str) -> A.VectorSelector:
    """Parse a series selector as used by ``match[]`` (``/api/v1/series``): must be an instant selector."""
    e = parse(text)
    e = A.unwrap_parens(e)
    if not isinstance(e, A.VectorSelector):
        raise PromQLError("invalid parameter \"match[]\": expected vector selector", "bad_data")
    return e
