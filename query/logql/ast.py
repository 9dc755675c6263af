"""Typed LogQL AST (small dataclasses); str(node) renders canonical-ish LogQL."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


def q(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def fmt_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns % 10**6:
        return f"{sign}{ns}ns"
    ms = ns // 10**6
    out = ""
    for unit, k in (("y", 365 * 86400000), ("w", 7 * 86400000), ("d", 86400000), ("h", 3600000),
                    ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= k:
            out += f"{ms // k}{unit}"
            ms %= k
    return sign + out


def fmt_number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


class Node:
    pass


class Expr(Node):
    pass


# ---------------------------------------------------------------- selectors / log queries
@dataclass
class Matcher(Node):
    name: str
    op: str  # = != =~ !~
    value: str

    def __str__(self):
        return f"{self.name}{self.op}{q(self.value)}"


@dataclass
class Selector(Expr):
    matchers: list[Matcher]

    def __str__(self):
        return "{" + ", ".join(map(str, self.matchers)) + "}"


class Stage(Node):
    pass


@dataclass
class LineFilterTerm(Node):
    value: str
    ip: bool = False

    def __str__(self):
        return f"ip({q(self.value)})" if self.ip else q(self.value)


@dataclass
class LineFilter(Stage):
    op: str  # |= != |~ !~ |> !>
    terms: list[LineFilterTerm]

    def __str__(self):
        if self.op.startswith("!"):
            return " ".join(f"{self.op} {t}" for t in self.terms)
        return f"{self.op} " + " or ".join(map(str, self.terms))


@dataclass
class Extraction(Node):
    name: str
    expr: str | None = None

    def __str__(self):
        return self.name if self.expr is None else f"{self.name}={q(self.expr)}"


@dataclass
class JSONParser(Stage):
    params: list[Extraction] = field(default_factory=list)

    def __str__(self):
        return "| json" + (" " + ", ".join(map(str, self.params)) if self.params else "")


@dataclass
class LogfmtParser(Stage):
    strict: bool = False
    keep_empty: bool = False
    params: list[Extraction] = field(default_factory=list)

    def __str__(self):
        s = "| logfmt"
        if self.strict:
            s += " --strict"
        if self.keep_empty:
            s += " --keep-empty"
        return s + (" " + ", ".join(map(str, self.params)) if self.params else "")


@dataclass
class RegexpParser(Stage):
    regex: str

    def __str__(self):
        return f"| regexp {q(self.regex)}"


@dataclass
class PatternParser(Stage):
    pattern: str

    def __str__(self):
        return f"| pattern {q(self.pattern)}"


@dataclass
class UnpackParser(Stage):
    def __str__(self):
        return "| unpack"


@dataclass
class LineFormat(Stage):
    template: str

    def __str__(self):
        return f"| line_format {q(self.template)}"


@dataclass
class LabelFmt(Node):
    dst: str
    src: str  # label name (rename) or template
    rename: bool

    def __str__(self):
        return f"{self.dst}={self.src}" if self.rename else f"{self.dst}={q(self.src)}"


@dataclass
class LabelFormat(Stage):
    formats: list[LabelFmt]

    def __str__(self):
        return "| label_format " + ",".join(map(str, self.formats))


@dataclass
class Decolorize(Stage):
    def __str__(self):
        return "| decolorize"


@dataclass
class NamedMatcher(Node):
    name: str
    matcher: Matcher | None = None

    def __str__(self):
        return str(self.matcher) if self.matcher else self.name


@dataclass
class Drop(Stage):
    labels: list[NamedMatcher]

    def __str__(self):
        return "| drop " + ",".join(map(str, self.labels))


@dataclass
class Keep(Stage):
    labels: list[NamedMatcher]

    def __str__(self):
        return "| keep " + ",".join(map(str, self.labels))


# label filters
class LabelFilter(Node):
    pass


@dataclass
class StringLabelFilter(LabelFilter):
    matcher: Matcher

    def __str__(self):
        m = self.matcher
        if m.op in ("=~", "!~") and "\\" in m.value and "`" not in m.value:
            return f"{m.name}{m.op}`{m.value}`"
        return str(m)


@dataclass
class NumberLabelFilter(LabelFilter):
    name: str
    op: str
    value: float
    text: str

    def __str__(self):
        return f"{self.name}{self.op}{fmt_number(self.value)}"


@dataclass
class DurationLabelFilter(LabelFilter):
    name: str
    op: str
    value_ns: int
    text: str

    def __str__(self):
        return f"{self.name}{self.op}{self.text}"


@dataclass
class BytesLabelFilter(LabelFilter):
    name: str
    op: str
    value: int
    text: str

    def __str__(self):
        return f"{self.name}{self.op}{self.text}"


@dataclass
class IPLabelFilter(LabelFilter):
    name: str
    op: str  # = or !=
    pattern: str

    def __str__(self):
        return f"{self.name}{self.op}ip({q(self.pattern)})"


@dataclass
class BinaryLabelFilter(LabelFilter):
    op: str  # "and" (also comma/juxtaposition) or "or"
    left: LabelFilter
    right: LabelFilter

    def __str__(self):
        sep = " , " if self.op == "and" else " or "
        return f"( {self.left}{sep}{self.right} )"


@dataclass
class LabelFilterStage(Stage):
    filter: LabelFilter

    def __str__(self):
        return f"| {self.filter}"


@dataclass
class LogQuery(Expr):
    selector: Selector
    stages: list[Stage] = field(default_factory=list)

    def __str__(self):
        return " ".join([str(self.selector)] + [str(s) for s in self.stages])


# ---------------------------------------------------------------- metric queries
@dataclass
class Unwrap(Node):
    label: str
    conversion: str | None = None  # bytes | duration | duration_seconds
    post_filters: list[LabelFilter] = field(default_factory=list)

    def __str__(self):
        s = f"| unwrap {self.conversion}({self.label})" if self.conversion else f"| unwrap {self.label}"
        return s + "".join(f" | {f}" for f in self.post_filters)


@dataclass
class LogRange(Node):
    query: LogQuery
    range_ns: int
    offset_ns: int = 0
    unwrap: Unwrap | None = None

    def __str__(self):
        s = str(self.query)
        if self.unwrap:
            s += " " + str(self.unwrap)
        s += f"[{fmt_duration(self.range_ns)}]"
        if self.offset_ns:
            s += f" offset {fmt_duration(self.offset_ns)}"
        return s


@dataclass
class Grouping(Node):
    without: bool
    labels: list[str]

    def __str__(self):
        return ("without" if self.without else "by") + " (" + ",".join(self.labels) + ")"


@dataclass
class RangeAggregation(Expr):
    op: str
    range: LogRange
    param: float | None = None
    grouping: Grouping | None = None

    def __str__(self):
        p = f"{fmt_number(self.param)}," if self.param is not None else ""
        s = f"{self.op}({p}{self.range})"
        return s + (f" {self.grouping}" if self.grouping else "")


@dataclass
class VectorAggregation(Expr):
    op: str
    expr: Expr
    param: float | None = None
    grouping: Grouping | None = None

    def __str__(self):
        p = f"{fmt_number(self.param)}," if self.param is not None else ""
        g = f" {self.grouping}" if self.grouping else ""
        return f"{self.op}{g}({p}{self.expr})"


@dataclass
class VectorMatching(Node):
    on: bool = False
    labels: list[str] = field(default_factory=list)
    card: str | None = None  # group_left | group_right
    include: list[str] = field(default_factory=list)

    def __str__(self):
        s = ("on" if self.on else "ignoring") + "(" + ",".join(self.labels) + ")"
        if self.card:
            s += f" {self.card}(" + ",".join(self.include) + ")"
        return s


@dataclass
class BinaryOp(Expr):
    op: str
    left: Expr
    right: Expr
    return_bool: bool = False
    matching: VectorMatching | None = None

    def __str__(self):
        mods = ""
        if self.return_bool:
            mods += " bool"
        if self.matching:
            mods += f" {self.matching}"
        return f"({self.left} {self.op}{mods} {self.right})"


@dataclass
class Literal(Expr):
    value: float

    def __str__(self):
        return fmt_number(self.value)


@dataclass
class VectorExpr(Expr):
    value: float

    def __str__(self):
        return f"vector({fmt_number(self.value)})"


@dataclass
class LabelReplace(Expr):
    expr: Expr
    dst: str
    replacement: str
    src: str
    regex: str

    def __str__(self):
        return (f"label_replace({self.expr},{q(self.dst)},{q(self.replacement)},{q(self.src)},"
                f"{q(self.regex)})")


def is_log(e: Expr) -> bool:
    return isinstance(e, (Selector, LogQuery))
