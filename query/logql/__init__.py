"""LogQL lexer, AST and recursive-descent parser (sqlglot style)."""
from .lexer import LogQLSyntaxError, Token, tokenize
from .parser import parse, parse_log_selector, parse_matchers, parse_sample_expr
from . import ast

__all__ = ["LogQLSyntaxError", "Token", "tokenize", "parse", "parse_sample_expr",
           "parse_log_selector", "parse_matchers", "ast"]
