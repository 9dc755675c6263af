"""Recursive-descent LogQL parser producing the dataclass AST in ``ast``."""
from __future__ import annotations

import math
import re

from . import ast as A
from .lexer import RANGE_OPS, VECTOR_OPS, LogQLSyntaxError, Token, tokenize

LINE_FILTER_OPS = {"|=", "!=", "|~", "!~", "|>", "!>"}
CMP_OPS = {"==", "!=", ">", ">=", "<", "<="}
# binding power: (precedence, right_assoc)
BIN_PREC = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, ">": 3, ">=": 3, "<": 3, "<=": 3,
            "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "^": 6}
UNWRAP_OPS = {"rate", "rate_counter", "sum_over_time", "avg_over_time", "min_over_time", "max_over_time",
              "stdvar_over_time", "stddev_over_time", "quantile_over_time", "first_over_time",
              "last_over_time", "absent_over_time"}
NEEDS_UNWRAP = UNWRAP_OPS - {"rate", "absent_over_time"}
GROUPABLE_RANGE = {"avg_over_time", "stddev_over_time", "stdvar_over_time", "quantile_over_time",
                   "max_over_time", "min_over_time", "first_over_time", "last_over_time"}
EMPTY_MSG = ('queries require at least one regexp or equality matcher that does not have an empty-compatible '
             'value. For instance, app=~".*" does not meet this requirement, but app=~".+" will')


class Parser:
    def __init__(self, text):
        self.toks = tokenize(text)
        self.i = 0

    # ------------------------------------------------------------ helpers
    @property
    def cur(self) -> Token:
        return self.toks[self.i]

    def peek(self, n=1) -> Token:
        return self.toks[min(self.i + n, len(self.toks) - 1)]

    def advance(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "EOF":
            self.i += 1
        return t

    def error(self, tok: Token | None = None, expecting: str | None = None):
        tok = tok or self.cur
        msg = f"syntax error: unexpected {tok.describe()}"
        if expecting:
            msg += f", expecting {expecting}"
        raise LogQLSyntaxError(msg, tok.line, tok.col)

    def fail(self, msg: str, tok: Token | None = None):
        tok = tok or self.cur
        raise LogQLSyntaxError(msg, tok.line, tok.col)

    def at_op(self, *ops) -> bool:
        return self.cur.kind == "OP" and self.cur.value in ops

    def at_kw(self, *kws) -> bool:
        return self.cur.kind == "KEYWORD" and self.cur.value in kws

    def expect_op(self, op: str) -> Token:
        if not self.at_op(op):
            self.error(expecting=op)
        return self.advance()

    def expect(self, kind: str, expecting: str | None = None) -> Token:
        if self.cur.kind != kind:
            self.error(expecting=expecting or {"IDENT": "IDENTIFIER"}.get(kind, kind))
        return self.advance()

    def number(self, tok: Token) -> float:
        try:
            return float(tok.value)
        except ValueError:
            self.fail(f'unable to parse literal as a float: strconv.ParseFloat: parsing "{tok.value}": '
                      "invalid syntax", tok)

    # ------------------------------------------------------------ entry
    def parse(self) -> A.Expr:
        if self.cur.kind == "EOF":
            self.error()
        e = self.expr(0)
        if self.cur.kind != "EOF":
            self.error()
        return e

    def expr(self, min_prec: int) -> A.Expr:
        left = self.unary()
        while True:
            t = self.cur
            op = t.value if (t.kind == "OP" or t.kind == "KEYWORD") else None
            if op not in BIN_PREC or BIN_PREC[op] < min_prec:
                break
            prec = BIN_PREC[op]
            self.advance()
            ret_bool, matching = self.bin_modifiers()
            right = self.expr(prec if op == "^" else prec + 1)
            left = self.make_binop(op, left, right, ret_bool, matching, t)
        return left

    def bin_modifiers(self):
        ret_bool = False
        matching = None
        if self.at_kw("bool"):
            self.advance()
            ret_bool = True
        if self.at_kw("on", "ignoring"):
            on = self.advance().value == "on"
            labels = self.label_list()
            matching = A.VectorMatching(on=on, labels=labels)
            if self.at_kw("group_left", "group_right"):
                matching.card = self.advance().value
                if self.at_op("("):
                    matching.include = self.label_list()
        return ret_bool, matching

    def make_binop(self, op, left, right, ret_bool, matching, tok):
        for side, leg in (("left", left), ("right", right)):
            if A.is_log(leg):
                kind = "MatchersExpr" if isinstance(leg, A.Selector) or not leg.stages else "PipelineExpr"
                self.fail(f"unexpected type for {side} leg of binary operation ({op}): *syntax.{kind}", tok)
        if op in ("and", "or", "unless"):
            for side, leg in (("left", left), ("right", right)):
                if isinstance(leg, A.Literal):
                    self.fail(f"unexpected literal for {side} leg of logical/set binary operation ({op}): "
                              f"{leg.value:f}", tok)
        if isinstance(left, A.Literal) and isinstance(right, A.Literal):
            return A.Literal(fold(op, left.value, right.value))
        return A.BinaryOp(op, left, right, ret_bool, matching)

    def unary(self) -> A.Expr:
        t = self.cur
        if self.at_op("+", "-") and self.peek().kind == "NUMBER":
            self.advance()
            v = self.number(self.advance())
            return A.Literal(-v if t.value == "-" else v)
        return self.primary()

    def primary(self) -> A.Expr:
        t = self.cur
        if t.kind == "NUMBER":
            self.advance()
            return A.Literal(self.number(t))
        if self.at_op("{"):
            return self.log_query()
        if self.at_op("("):
            self.advance()
            e = self.expr(0)
            if A.is_log(e) and self.cur.kind == "RANGE":
                self.error()
            self.expect_op(")")
            return e
        if t.kind == "FUNC":
            if t.value in RANGE_OPS:
                return self.range_agg()
            if t.value in VECTOR_OPS:
                return self.vector_agg()
            if t.value == "label_replace":
                return self.label_replace()
            if t.value == "vector":
                self.advance()
                self.expect_op("(")
                n = self.expect("NUMBER", "NUMBER")
                self.expect_op(")")
                return A.VectorExpr(self.number(n))
        self.error()

    # ------------------------------------------------------------ log queries
    def selector(self) -> A.Selector:
        self.expect_op("{")
        ms = []
        if not self.at_op("}"):
            ms.append(self.matcher())
            while self.at_op(","):
                self.advance()
                ms.append(self.matcher())
        if not self.at_op("}"):
            self.error(expecting="} or ,")
        self.advance()
        return A.Selector(ms)

    def matcher(self) -> A.Matcher:
        name = self.expect("IDENT").value
        if not self.at_op("=", "!=", "=~", "!~"):
            self.error(expecting="= or != or =~ or !~")
        op = self.advance().value
        v = self.expect("STRING").value
        return A.Matcher(name, op, v)

    def log_query(self) -> A.LogQuery:
        sel = self.selector()
        return A.LogQuery(sel, self.pipeline())

    def pipeline(self) -> list[A.Stage]:
        stages = []
        while True:
            if self.cur.kind == "OP" and self.cur.value in LINE_FILTER_OPS:
                stages.append(self.line_filter())
            elif self.at_op("|") and not (self.peek().is_("KEYWORD", "unwrap")):
                self.advance()
                stages.append(self.stage())
            else:
                return stages

    def line_filter(self) -> A.LineFilter:
        op = self.advance().value
        terms = [self.line_filter_term()]
        while self.at_kw("or"):
            self.advance()
            terms.append(self.line_filter_term())
        return A.LineFilter(op, terms)

    def line_filter_term(self) -> A.LineFilterTerm:
        if self.cur.kind == "STRING":
            return A.LineFilterTerm(self.advance().value)
        if self.cur.is_("FUNC", "ip"):
            self.advance()
            self.expect_op("(")
            v = self.expect("STRING").value
            self.expect_op(")")
            return A.LineFilterTerm(v, ip=True)
        self.error(expecting="STRING or ip")

    def _extraction_name_ahead(self) -> bool:
        """An identifier, or a keyword used as a label name (`| json bool="f"`: Loki accepts it)."""
        if self.cur.kind == "IDENT":
            return True
        return self.cur.kind == "KEYWORD" and self.peek().kind == "OP" and self.peek().value in ("=", ",")

    def extractions(self) -> list[A.Extraction]:
        out = []
        if not self._extraction_name_ahead():
            return out
        while True:
            if not self._extraction_name_ahead():
                self.error(expecting="IDENTIFIER")
            name = self.advance().value
            if self.at_op("="):
                self.advance()
                out.append(A.Extraction(name, self.expect("STRING").value))
            else:
                out.append(A.Extraction(name))
            if not self.at_op(","):
                return out
            self.advance()

    def stage(self) -> A.Stage:
        t = self.cur
        if t.kind == "KEYWORD":
            kw = t.value
            if kw == "json":
                self.advance()
                return A.JSONParser(self.extractions())
            if kw == "logfmt":
                self.advance()
                st = A.LogfmtParser()
                while self.cur.kind == "FLAG":
                    f = self.advance()
                    if f.value == "--strict":
                        st.strict = True
                    elif f.value == "--keep-empty":
                        st.keep_empty = True
                    else:
                        self.fail(f"invalid logfmt flag {f.value}", f)
                st.params = self.extractions()
                return st
            if kw == "regexp":
                self.advance()
                return A.RegexpParser(self.expect("STRING").value)
            if kw == "pattern":
                self.advance()
                return A.PatternParser(self.expect("STRING").value)
            if kw == "unpack":
                self.advance()
                return A.UnpackParser()
            if kw == "line_format":
                self.advance()
                return A.LineFormat(self.expect("STRING").value)
            if kw == "label_format":
                self.advance()
                fmts = []
                while True:
                    dst = self.expect("IDENT").value
                    self.expect_op("=")
                    if self.cur.kind == "IDENT":
                        fmts.append(A.LabelFmt(dst, self.advance().value, True))
                    else:
                        fmts.append(A.LabelFmt(dst, self.expect("STRING").value, False))
                    if not self.at_op(","):
                        break
                    self.advance()
                return A.LabelFormat(fmts)
            if kw == "decolorize":
                self.advance()
                return A.Decolorize()
            if kw in ("drop", "keep"):
                self.advance()
                items = []
                while True:
                    name = self.expect("IDENT").value
                    if self.at_op("=", "!=", "=~", "!~"):
                        op = self.advance().value
                        items.append(A.NamedMatcher(name, A.Matcher(name, op, self.expect("STRING").value)))
                    else:
                        items.append(A.NamedMatcher(name))
                    if not self.at_op(","):
                        break
                    self.advance()
                return A.Drop(items) if kw == "drop" else A.Keep(items)
        return A.LabelFilterStage(self.label_filter())

    # label filters: list := or [(','|juxtaposition) list]; or := and {or and}; and := atom {and atom}.
    # Loki's grammar (expected_go in the corpus) makes ',' and juxtaposition the loosest, right-nested:
    # `a b, c or d` = a and (b and (c or d)). Loki's docs suggest ',' binds like `and`; the code wins here.
    def label_filter(self) -> A.LabelFilter:
        left = self.lf_or()
        if self.at_op(","):
            self.advance()
            return A.BinaryLabelFilter("and", left, self.label_filter())
        if self.cur.kind == "IDENT" or self.at_op("("):
            return A.BinaryLabelFilter("and", left, self.label_filter())
        return left

    def lf_or(self):
        left = self.lf_and()
        while self.at_kw("or"):
            self.advance()
            left = A.BinaryLabelFilter("or", left, self.lf_and())
        return left

    def lf_and(self):
        left = self.lf_atom()
        while self.at_kw("and"):
            self.advance()
            left = A.BinaryLabelFilter("and", left, self.lf_atom())
        return left

    def lf_atom(self) -> A.LabelFilter:
        if self.at_op("("):
            self.advance()
            f = self.label_filter()
            self.expect_op(")")
            return f
        name = self.expect("IDENT").value
        if not (self.cur.kind == "OP" and self.cur.value in ("=", "!=", "=~", "!~", ">", ">=", "<", "<=",
                                                              "==")):
            self.error()
        op = self.advance().value
        v = self.cur
        if v.kind == "STRING" and op in ("=", "!=", "=~", "!~"):
            self.advance()
            return A.StringLabelFilter(A.Matcher(name, op, v.value))
        if v.is_("FUNC", "ip") and op in ("=", "!="):
            self.advance()
            self.expect_op("(")
            p = self.expect("STRING").value
            self.expect_op(")")
            return A.IPLabelFilter(name, op, p)
        if op in ("=~", "!~"):
            self.error(expecting="STRING")
        if v.kind == "DURATION":
            self.advance()
            return A.DurationLabelFilter(name, op, v.value, v.text)
        if v.kind == "BYTES":
            self.advance()
            return A.BytesLabelFilter(name, op, v.value, v.text)
        sign = 1.0
        if self.at_op("+", "-") and self.peek().kind == "NUMBER":
            sign = -1.0 if self.advance().value == "-" else 1.0
        if self.cur.kind == "NUMBER":
            n = self.advance()
            return A.NumberLabelFilter(name, op, sign * self.number(n), n.text)
        self.error()

    # ------------------------------------------------------------ metric queries
    def label_list(self) -> list[str]:
        self.expect_op("(")
        out = []
        if not self.at_op(")"):
            out.append(self.expect("IDENT", "IDENTIFIER or )").value)
            while self.at_op(","):
                self.advance()
                out.append(self.expect("IDENT").value)
        if not self.at_op(")"):
            self.error(expecting=", or )")
        self.advance()
        return out

    def grouping(self) -> A.Grouping | None:
        if self.at_kw("by", "without"):
            w = self.advance().value == "without"
            return A.Grouping(w, self.label_list())
        return None

    def unwrap(self) -> A.Unwrap:
        self.expect_op("|")
        self.advance()  # unwrap keyword
        if self.cur.kind == "FUNC" and self.cur.value in ("bytes", "duration", "duration_seconds"):
            conv = self.advance().value
            self.expect_op("(")
            label = self.expect("IDENT").value
            self.expect_op(")")
            u = A.Unwrap(label, conv)
        else:
            u = A.Unwrap(self.expect("IDENT").value)
        while self.at_op("|") and not self.peek().is_("KEYWORD"):
            self.advance()
            u.post_filters.append(self.label_filter())
        return u

    def log_range(self, allow_no_range=False) -> A.LogRange:
        if self.at_op("("):
            self.advance()
            r = self.log_range(allow_no_range=True)
            self.expect_op(")")
            if r.range_ns is None:
                if self.cur.kind != "RANGE":
                    self.error(expecting="RANGE")
                r.range_ns = self.advance().value
                r.offset_ns = self.offset()
            return r
        sel = self.selector()
        if self.cur.kind == "RANGE":
            rng = self.advance().value
            off = self.offset()
            stages = self.pipeline()
            unwrap = self.unwrap() if self.at_op("|") and self.peek().is_("KEYWORD", "unwrap") else None
            return A.LogRange(A.LogQuery(sel, stages), rng, off, unwrap)
        stages = self.pipeline()
        unwrap = self.unwrap() if self.at_op("|") and self.peek().is_("KEYWORD", "unwrap") else None
        if self.cur.kind != "RANGE":
            if allow_no_range:
                return A.LogRange(A.LogQuery(sel, stages), None, 0, unwrap)
            self.error(expecting="RANGE")
        rng = self.advance().value
        return A.LogRange(A.LogQuery(sel, stages), rng, self.offset(), unwrap)

    def offset(self) -> int:
        if self.at_kw("offset"):
            self.advance()
            return self.expect("DURATION").value
        return 0

    def range_agg(self) -> A.RangeAggregation:
        t = self.advance()
        op = t.value
        self.expect_op("(")
        param = None
        if self.cur.kind == "NUMBER":
            param = self.number(self.advance())
            self.expect_op(",")
        elif not (self.at_op("{", "(")):
            self.error(expecting="NUMBER or { or (")
        rng = self.log_range()
        self.expect_op(")")
        g = self.grouping()
        if g is not None and op not in GROUPABLE_RANGE:
            self.fail(f"grouping not allowed for {op} aggregation", t)
        if rng.unwrap is not None and op not in UNWRAP_OPS:
            self.fail(f"invalid aggregation {op} with unwrap", t)
        if rng.unwrap is None and op in NEEDS_UNWRAP:
            self.fail(f"invalid aggregation {op} without unwrap", t)
        if param is not None and op != "quantile_over_time":
            self.fail(f"parameter {A.fmt_number(param)} not supported for operation {op}", t)
        if param is None and op == "quantile_over_time":
            self.fail(f"parameter required for operation {op}", t)
        return A.RangeAggregation(op, rng, param, g)

    def vector_agg(self) -> A.VectorAggregation:
        t = self.advance()
        op = t.value
        g = self.grouping()
        self.expect_op("(")
        param = None
        ptok = None
        if self.cur.kind == "NUMBER" and self.peek().is_("OP", ","):
            ptok = self.advance()
            param = self.number(ptok)
            self.advance()
        e = self.expr(0)
        if A.is_log(e):
            self.error()
        self.expect_op(")")
        g2 = self.grouping()
        if g is not None and g2 is not None:
            self.error(self.toks[self.i - 1])
        g = g or g2
        if op in ("topk", "bottomk", "approx_topk"):
            if param is None:
                self.fail(f"parameter required for operation {op}", t)
            if param != int(param):
                self.fail(f"invalid parameter {op}({ptok.text},", ptok)
            if param <= 0:
                self.fail(f"invalid parameter (must be greater than 0) {op}({ptok.text}", ptok)
        elif param is not None:
            self.fail(f"unsupported parameter for operation {op}({ptok.text},", ptok)
        if op in ("sort", "sort_desc") and g is not None and not (g.without is False and not g.labels):
            self.fail("sort and sort_desc doesn't allow grouping by ", t)
        if op == "approx_topk" and g is not None:
            self.fail("grouping not allowed for approx_topk aggregation", t)
        return A.VectorAggregation(op, e, param, g)

    def label_replace(self) -> A.LabelReplace:
        t = self.advance()
        self.expect_op("(")
        e = self.expr(0)
        if A.is_log(e):
            self.error()
        args = []
        for _ in range(4):
            self.expect_op(",")
            args.append(self.expect("STRING").value)
        self.expect_op(")")
        try:
            re.compile(args[3])
        except re.error as err:
            self.fail(f"invalid regex in label_replace: error parsing regexp: {err}", t)
        return A.LabelReplace(e, *args)


def fold(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if b else math.nan
    if op == "%":
        return math.fmod(a, b) if b else math.nan
    if op == "^":
        try:
            return math.pow(a, b)
        except (OverflowError, ValueError):
            return math.inf if a > 0 else math.nan
    return float({"==": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op])


# ---------------------------------------------------------------- validation
def walk(expr):
    """Every node of a tree with its depth (1 = ``expr``), parents first, left to right. Iterative, so a tree of
    any depth is safe to walk (the shape check below runs on trees no recursion limit was made for)."""
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        if isinstance(node, A.Node):
            kids = [it for v in vars(node).values() for it in (v if isinstance(v, (list, tuple)) else [v])
                    if isinstance(it, A.Node)]
            stack.extend((k, depth + 1) for k in reversed(kids))


def _selectors(node):
    return (n for n, _ in walk(node) if isinstance(n, A.Selector))


def _empty_compatible(m: A.Matcher) -> bool:
    if m.op == "=":
        return m.value == ""
    if m.op == "!=":
        return m.value != ""
    try:
        hit = re.fullmatch(m.value, "") is not None
    except re.error:
        return False
    return hit if m.op == "=~" else not hit


def log_queries(node):
    return (n for n, _ in walk(node) if isinstance(n, A.LogQuery))


def validate(expr: A.Expr) -> None:
    for sel in _selectors(expr):
        if all(_empty_compatible(m) for m in sel.matchers):
            raise LogQLSyntaxError(EMPTY_MSG, 1, 1)
    validate_pipelines(expr)


def validate_pipelines(expr: A.Expr) -> None:
    """Build each pipeline once so that a bad regex, pattern or template is a parse error, as in Loki."""
    from .pipeline import PipelineError, validate_stages
    for lq in log_queries(expr):
        try:
            validate_stages(lq.stages)
        except PipelineError as err:
            raise LogQLSyntaxError(str(err), 0, 0) from err


# Limits on a query's shape, so that a hostile query is a parse error and not a RecursionError (a 500) or minutes
# of work: nesting depth of the tree (parentheses, aggregations, binary operators) and stream selectors per query.
MAX_DEPTH = 64
MAX_SELECTORS = 64


def _check_shape(expr: A.Expr) -> None:
    """Depth, selector count and the stream selectors' regexes (RE2, as ClickHouse will run them anchored:
    a bad one is the user's 400, not a store error)."""
    from .re2util import RegexError, compile_re2

    selectors = 0
    for node, depth in walk(expr):
        if depth > MAX_DEPTH:
            raise LogQLSyntaxError(f"expression nested too deeply (more than {MAX_DEPTH} levels)", 0, 0)
        if isinstance(node, A.Selector):
            selectors += 1
            if selectors > MAX_SELECTORS:
                raise LogQLSyntaxError(f"too many stream selectors in one query (more than {MAX_SELECTORS})", 0, 0)
            for m in node.matchers:
                if m.op in ("=~", "!~"):
                    try:
                        compile_re2(m.value)
                    except RegexError as err:
                        raise LogQLSyntaxError(f"invalid regex in matcher {m}: {err}", 0, 0) from None


def _tree(text: str | bytes) -> A.Expr:
    try:
        e = Parser(text).parse()
    except RecursionError:
        raise LogQLSyntaxError(f"expression nested too deeply (more than {MAX_DEPTH} levels)", 0, 0) from None
    _check_shape(e)
    return e


def parse(text: str | bytes) -> A.Expr:
    """Parse and validate a LogQL query (Loki's ParseExpr)."""
    e = _tree(text)
    validate(e)
    return e


def parse_sample_expr(text: str | bytes) -> A.Expr:
    e = parse(text)
    if A.is_log(e):
        raise LogQLSyntaxError("only metric queries are supported here", 1, 1)
    return e


def parse_log_selector(text: str | bytes, validate_matchers: bool = True) -> A.LogQuery:
    e = _tree(text)
    if not A.is_log(e):
        raise LogQLSyntaxError("only log queries are supported here", 1, 1)
    if validate_matchers:
        validate(e)
    return e


def parse_matchers(text: str | bytes, validate_matchers: bool = True) -> list[A.Matcher]:
    e = _tree(text)
    if not isinstance(e, A.LogQuery) or e.stages:
        raise LogQLSyntaxError("only label matchers are supported", 1, 1)
    if validate_matchers:
        validate(e)
    return e.selector.matchers
