"""PromQL function signatures (Prometheus ``promql/parser/functions.go``), used by the parser's type checks."""
from __future__ import annotations

from dataclasses import dataclass

from .ast import MATRIX, SCALAR, STRING, VECTOR

__all__ = ["Function", "FUNCTIONS", "AGGREGATORS", "PARAM_AGGREGATORS"]


@dataclass(frozen=True)
class Function:
    name: str
    args: tuple[str, ...]
    ret: str
    variadic: int = 0          # 0: fixed; n>0: up to n optional trailing args; -1: unlimited


def _f(name, args, ret=VECTOR, variadic=0):
    return name, Function(name, tuple(args), ret, variadic)


_V, _M, _S, _STR = VECTOR, MATRIX, SCALAR, STRING
_ONE_V = ["abs", "ceil", "floor", "exp", "sqrt", "ln", "log2", "log10", "sgn", "deg", "rad",
          "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh",
          "sort", "sort_desc", "timestamp", "absent",
          "histogram_count", "histogram_sum", "histogram_avg", "histogram_stddev", "histogram_stdvar"]
_OVER_TIME = ["avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
              "last_over_time", "first_over_time", "present_over_time", "absent_over_time",
              "stddev_over_time", "stdvar_over_time", "mad_over_time", "rate", "irate", "increase", "delta",
              "idelta", "deriv", "changes", "resets", "ts_of_min_over_time", "ts_of_max_over_time",
              "ts_of_first_over_time", "ts_of_last_over_time"]
_DATE = ["days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month", "year"]

FUNCTIONS: dict[str, Function] = dict(
    [_f(n, [_V]) for n in _ONE_V]
    + [_f(n, [_M]) for n in _OVER_TIME]
    + [_f(n, [_V], variadic=1) for n in _DATE]
    + [
        _f("clamp", [_V, _S, _S]), _f("clamp_max", [_V, _S]), _f("clamp_min", [_V, _S]),
        _f("round", [_V, _S], variadic=1),
        _f("histogram_quantile", [_S, _V]), _f("histogram_fraction", [_S, _S, _V]),
        _f("label_replace", [_V, _STR, _STR, _STR, _STR]),
        _f("label_join", [_V, _STR, _STR, _STR], variadic=-1),
        _f("histogram_quantiles", [_V, _STR, _S, _S], variadic=-1),
        _f("step", [], _S), _f("range", [], _S), _f("start", [], _S), _f("end", [], _S),
        _f("min_of", [_S, _S], _S), _f("max_of", [_S, _S], _S),
        _f("sort_by_label", [_V, _STR], variadic=-1),
        _f("sort_by_label_desc", [_V, _STR], variadic=-1),
        _f("quantile_over_time", [_S, _M]), _f("predict_linear", [_M, _S]),
        _f("double_exponential_smoothing", [_M, _S, _S]),
        _f("vector", [_S]), _f("scalar", [_V], _S), _f("time", [], _S), _f("pi", [], _S),
        _f("info", [_V, _V], variadic=1),
    ]
)

AGGREGATORS = {"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
               "count_values", "quantile", "limitk", "limit_ratio"}
PARAM_AGGREGATORS = {"topk", "bottomk", "count_values", "quantile", "limitk", "limit_ratio"}
