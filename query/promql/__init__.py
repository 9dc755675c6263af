"""PromQL: lexer, typed AST, parser, numpy evaluator and the engine the Prometheus HTTP API calls."""
from .errors import PromQLError
from .parser import parse

__all__ = ["PromQLError", "parse"]
