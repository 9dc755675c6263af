"""LogQL parser stages: ``json``, ``logfmt``, ``regexp``, ``pattern``, ``unpack`` and the ``|>`` pattern filter.

Each stage reproduces Loki's ``pkg/logql/log/parser.go`` (and the libraries it relies on: grafana/jsonparser,
Loki's logfmt decoder and pattern matcher) closely enough that labels, error labels and the quirks users rely on
come out the same. Parsers never drop a line; failures become ``__error__``/``__error_details__``.

Speed matters (these run per log line), so the common case takes a fast path: ``| json`` and ``| unpack`` use
the C JSON decoder with hooks that keep number source text, ``| logfmt`` uses one possessive regex per pair.
Anything unusual (malformed input, odd escapes) falls back to a scanner that emulates the Go code step by step.
"""
from __future__ import annotations

import json
import re

from . import ast as A
from .labels import JSON_PARSER_ERR, LOGFMT_PARSER_ERR, LabelsBuilder
from .re2util import compile_re2
from .stage import Stage

__all__ = [
    "JSONStage", "LogfmtStage", "RegexpStage", "PatternStage", "UnpackStage", "PatternLineFilter",
    "sanitize_label_key",
]

# ================================================================================================ helpers
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"
_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_]")
_CACHE_MAX = 8192


def sanitize_label_key(key: str) -> str:
    """Loki ``sanitizeLabelKey(key, true)``: trim, non-``[A-Za-z0-9_]`` → ``_``, ``_`` prefix before a digit."""
    if _VALID_NAME.match(key):
        return key
    k = key.strip(_GO_SPACE)
    if not k:
        return ""
    if "0" <= k[0] <= "9":
        k = "_" + k
    return _BAD_CHARS.sub("_", k)


class _KeyCache(dict):
    """Raw key → sanitized key, bounded (Loki interns these per stage for the same reason: keys repeat)."""

    __slots__ = ()

    def __missing__(self, key: str) -> str:
        if len(self) >= _CACHE_MAX:
            self.clear()
        v = self[key] = sanitize_label_key(key)
        return v


def _is_valid_label_name(name: str) -> bool:
    return _VALID_NAME.match(name) is not None


# ================================================================================================ JSON scanning
# An emulation of grafana/jsonparser (ObjectEach / ArrayEach / Get) on Python strings. It is lenient where the
# library is (numbers are any token starting with [-0-9], nested blocks are only brace-matched) and produces the
# library's error texts, so the slow path reports what Loki reports.
class _JErr(Exception):
    pass


_E_JSON = "Malformed JSON error"
_E_STRING = "Value is string, but can't find closing '\"' symbol"
_E_ARRAY = "Value is array, but can't find closing ']' symbol"
_E_OBJECT = "Value looks like object, but can't find closing '}' symbol"
_E_UNKNOWN = "Unknown value type"
_E_ESCAPE = "Encountered an invalid escape sequence in a string"

T_STRING, T_NUMBER, T_OBJECT, T_ARRAY, T_BOOL, T_NULL = range(1, 7)

_NON_WS = re.compile(r"[^ \n\r\t]")
_STR_TAIL = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # from after an opening quote to the closing quote
_TOKEN = re.compile(r"[^ \n\r\t,}\]]*")
_OBJ_SYMS = re.compile(r'["{}]')
_ARR_SYMS = re.compile(r'["\[\]]')
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def _next_token(s: str, i: int, limit: int) -> int:
    m = _NON_WS.search(s, i, limit)
    return -1 if m is None else m.start()


def _string_end(s: str, i: int, limit: int) -> int:
    """``i`` is just after an opening quote; returns the index after the closing quote or -1."""
    m = _STR_TAIL.match(s, i, limit)
    return -1 if m is None else m.end()


def _block_end(s: str, i: int, limit: int, syms) -> int:
    """Index after the brace/bracket matching the one at ``i`` (strings skipped), or -1."""
    level = 0
    open_c = s[i]
    search = syms.search
    j = i
    while True:
        m = search(s, j, limit)
        if m is None:
            return -1
        c = m.group()
        j = m.end()
        if c == '"':
            j = _string_end(s, j, limit)
            if j == -1:
                return -1
        elif c == open_c:
            level += 1
        else:
            level -= 1
            if level == 0:
                return j


def _get_type(s: str, off: int, limit: int):
    """jsonparser ``getType``: (type, start, end) of the value starting at ``off``."""
    c = s[off]
    if c == '"':
        e = _string_end(s, off + 1, limit)
        if e == -1:
            raise _JErr(_E_STRING)
        return T_STRING, off, e
    if c == "[":
        e = _block_end(s, off, limit, _ARR_SYMS)
        if e == -1:
            raise _JErr(_E_ARRAY)
        return T_ARRAY, off, e
    if c == "{":
        e = _block_end(s, off, limit, _OBJ_SYMS)
        if e == -1:
            raise _JErr(_E_OBJECT)
        return T_OBJECT, off, e
    end = _TOKEN.match(s, off, limit).end()
    tok = s[off:end]
    if c == "t" or c == "f":
        if tok == "true" or tok == "false":
            return T_BOOL, off, end
        raise _JErr(_E_UNKNOWN)
    if c == "n" or c == "u":
        if tok == "null":
            return T_NULL, off, end
        raise _JErr(_E_UNKNOWN)
    if c in "-0123456789":
        return T_NUMBER, off, end
    raise _JErr(_E_UNKNOWN)


def _get(s: str, off: int, limit: int):
    i = _next_token(s, off, limit)
    if i == -1:
        raise _JErr(_E_JSON)
    return _get_type(s, i, limit)


def _iter_object(s: str, off: int, limit: int):
    """jsonparser ``ObjectEach``: yields (unescaped key, type, value start, value end); raises _JErr."""
    i = _next_token(s, off, limit)
    if i == -1 or s[i] != "{":
        raise _JErr(_E_OBJECT)
    i = _next_token(s, i + 1, limit)
    if i == -1:
        raise _JErr(_E_JSON)
    if s[i] == "}":
        return
    last_comma = -1
    while i < limit:
        c = s[i]
        if c == '"':
            i += 1
        elif c == "}":
            if last_comma != -1 and last_comma + 1 == i:
                raise _JErr(_E_OBJECT)
            return
        else:
            raise _JErr(_E_OBJECT)
        e = _string_end(s, i, limit)
        if e == -1:
            raise _JErr(_E_JSON)
        key = s[i:e - 1]
        i = e
        if "\\" in key:
            key = _json_unescape(key)
            if key is None:
                raise _JErr(_E_ESCAPE)
        j = _next_token(s, i, limit)
        if j == -1 or s[j] != ":":
            raise _JErr(_E_JSON)
        typ, vs, ve = _get(s, j + 1, limit)
        yield key, typ, vs, ve
        i = ve
        j = _next_token(s, i, limit)
        if j == -1:
            raise _JErr(_E_ARRAY)
        c = s[j]
        if c == "}":
            return
        if c != ",":
            raise _JErr(_E_OBJECT)
        last_comma = j
        i = j + 1
        j = _next_token(s, i, limit)
        if j == -1:
            raise _JErr(_E_ARRAY)
        if j > i:
            last_comma += j - i - 1
        i = j
    raise _JErr(_E_OBJECT)


def _iter_array(s: str, off: int, limit: int):
    """jsonparser ``ArrayEach``: yields (type, start, end) of each element; raises _JErr."""
    i = _next_token(s, off, limit)
    if i == -1:
        raise _JErr(_E_JSON)
    i = _next_token(s, i + 1, limit)
    if i == -1:
        raise _JErr(_E_JSON)
    if s[i] == "]":
        return
    while True:
        typ, vs, ve = _get(s, i, limit)
        yield typ, vs, ve
        i = _next_token(s, ve, limit)
        if i == -1:
            raise _JErr(_E_ARRAY)
        if s[i] == "]":
            return
        if s[i] != ",":
            raise _JErr(_E_ARRAY)
        i += 1


_SIMPLE_ESC = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(s: str, table: dict[str, str], bad_pair_is_error: bool) -> str | None:
    """JSON-style backslash escapes with Go's surrogate rules: None on an invalid escape; a lone surrogate becomes
    U+FFFD. ``table`` holds the one-character escapes; ``bad_pair_is_error`` says whether a high surrogate followed
    by a malformed ``\\u`` is an error (jsonparser) or just a lone surrogate (encoding/json, used by logfmt)."""
    i = s.find("\\")
    if i < 0:
        return s
    out = []
    start = 0
    n = len(s)
    while i >= 0:
        out.append(s[start:i])
        if i + 1 >= n:
            return None
        c = s[i + 1]
        simple = table.get(c)
        if simple is not None:
            out.append(simple)
            start = i + 2
        elif c == "u":
            if not _HEX4.match(s, i + 2):
                return None
            r = int(s[i + 2:i + 6], 16)
            start = i + 6
            if r < 0xD800 or r > 0xDFFF:
                out.append(chr(r))
            elif r >= 0xDC00 or s[i + 6:i + 8] != "\\u":
                out.append("\ufffd")
            elif not _HEX4.match(s, i + 8):
                if bad_pair_is_error:
                    return None
                out.append("\ufffd")
            else:
                r2 = int(s[i + 8:i + 12], 16)
                if 0xDC00 <= r2 <= 0xDFFF:
                    out.append(chr(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)))
                    start = i + 12
                else:
                    out.append("\ufffd")
        else:
            return None
        i = s.find("\\", start)
    out.append(s[start:])
    return "".join(out)


def _json_unescape(s: str) -> str | None:
    """jsonparser ``Unescape``."""
    return _unescape(s, _SIMPLE_ESC, True)


def _label_string(raw: str) -> str:
    """Loki ``unescapeJSONString``: bad escapes give ""; U+FFFD (rejected by Prometheus) becomes a space."""
    v = _json_unescape(raw) if "\\" in raw else raw
    if v is None:
        return ""
    if "\ufffd" in v:
        v = v.replace("\ufffd", " ")
    return v


def _reject_constant(name: str):
    raise ValueError(name)


class _Num(str):
    """Marks a JSON number (kept as its source text) so ``unpack`` can tell it from a string."""
    __slots__ = ()


# parse_float/parse_int receive the number's source text, which is exactly what Loki puts in the label.
_FAST_JSON = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=_reject_constant,
                              object_pairs_hook=tuple, strict=False)
_FAST_JSON_TYPED = json.JSONDecoder(parse_float=_Num, parse_int=_Num, parse_constant=_reject_constant,
                                    object_pairs_hook=tuple, strict=False)


def _fast_json_ok(line: str) -> int:
    """Start index when the C decoder can be trusted to agree with jsonparser, else -1."""
    if not line:
        return -1
    i = 0
    if line[0] != "{":
        m = _NON_WS.search(line)
        if m is None or line[m.start()] != "{":
            return -1
        i = m.start()
    # lone surrogate escapes: Python keeps them, jsonparser replaces them
    if "\\ud" in line or "\\uD" in line:
        return -1
    return i


# ================================================================================================ | json
class JSONStage(Stage):
    """``| json`` (flatten every scalar, nested keys joined by ``_``) or ``| json a="path", ...``."""

    def __init__(self, params: list[A.Extraction] | None = None):
        self.params = list(params or [])
        self._keys = _KeyCache()
        self._exprs: list[tuple[str, list]] = []
        for p in self.params:
            expr = p.expr if p.expr is not None else p.name
            path = _parse_json_expr(expr)
            if not _is_valid_label_name(p.name):
                raise ValueError(f"invalid extracted label name '{p.name}'")
            self._exprs.append((p.name, path))

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        if self._exprs:
            self._process_exprs(line, lb)
        else:
            self._process_flat(line, lb)
        return line

    # ------------------------------------------------------------------ flatten
    def _process_flat(self, line: str, lb: LabelsBuilder) -> None:
        start = _fast_json_ok(line)
        if start >= 0:
            try:
                obj, _ = _FAST_JSON.raw_decode(line, start)
            except (ValueError, RecursionError):
                pass
            else:
                if type(obj) is tuple:
                    try:
                        self._walk(obj, "", lb.add_parsed)
                        return
                    except RecursionError:
                        pass
        self._slow_flat(line, lb)

    def _walk(self, pairs: tuple, prefix: str, add) -> None:
        keys = self._keys
        for k, v in pairs:
            t = type(v)
            if t is str:
                name = prefix + "_" + keys[k] if prefix else keys[k]
                if name:
                    if "\ufffd" in v:
                        v = v.replace("\ufffd", " ")
                    add(name, v)
            elif t is tuple:
                san = keys[k]
                self._walk(v, (prefix + "_" + san if prefix else san), add)
            elif v is True:
                name = prefix + "_" + keys[k] if prefix else keys[k]
                if name:
                    add(name, "true")
            elif v is False:
                name = prefix + "_" + keys[k] if prefix else keys[k]
                if name:
                    add(name, "false")
            # None and lists are skipped, as in Loki

    def _slow_flat(self, line: str, lb: LabelsBuilder) -> None:
        try:
            self._slow_walk(line, 0, len(line), "", lb.add_parsed)
        except _JErr as err:
            lb.set_error(JSON_PARSER_ERR, str(err))
        except RecursionError:
            lb.set_error(JSON_PARSER_ERR, _E_JSON)

    def _slow_walk(self, s: str, off: int, limit: int, prefix: str, add) -> None:
        keys = self._keys
        for k, typ, vs, ve in _iter_object(s, off, limit):
            if typ == T_OBJECT:
                san = keys[k]
                self._slow_walk(s, vs, ve, (prefix + "_" + san if prefix else san), add)
                continue
            if typ == T_STRING:
                value = _label_string(s[vs + 1:ve - 1])
            elif typ == T_NUMBER:
                value = s[vs:ve]
            elif typ == T_BOOL:
                value = "true" if s[vs:ve] == "true" else "false"
            else:
                continue
            name = prefix + "_" + keys[k] if prefix else keys[k]
            if name:
                add(name, value)

    # ------------------------------------------------------------------ expressions
    def _process_exprs(self, line: str, lb: LabelsBuilder) -> None:
        if not line:
            return
        c = line[0]
        if c not in '{["':
            lb.set_error(JSON_PARSER_ERR)
            return
        n = len(line)
        found: dict[str, str] = {}
        if c == '"':
            # jsonparser.EachKey meets a key at nesting level 0: it reports malformed JSON
            e = _string_end(line, 1, n)
            if e != -1:
                j = _next_token(line, e, n)
                if j != -1 and line[j] == ":":
                    lb.set_error(JSON_PARSER_ERR, _E_JSON)
        else:
            tree = _NO_TREE
            if "\\ud" not in line and "\\uD" not in line:
                try:
                    tree, _ = _FAST_JSON.raw_decode(line, 0)
                except (ValueError, RecursionError):
                    tree = _NO_TREE
            for name, path in self._exprs:
                if name in found:
                    continue
                if tree is not _NO_TREE:
                    v = _lookup(tree, path, 0)
                    if v is _MISSING:
                        continue
                    if v is not _NEED_RAW:
                        found[name] = v
                        continue
                try:
                    r = _resolve(line, 0, n, path, 0)
                except (_JErr, RecursionError):
                    r = None
                if r is None:
                    continue
                typ, vs, ve = r
                if typ == T_NULL:
                    value = ""
                elif typ == T_OBJECT:
                    value = line[vs:ve]
                elif typ == T_STRING:
                    value = _label_string(line[vs + 1:ve - 1])
                else:  # numbers, booleans and (quirk) arrays go through the string unescaper
                    value = _label_string(line[vs:ve])
                found[name] = value
        add = lb.add_parsed
        for name, _ in self._exprs:
            v = found.get(name)
            if v is not None:
                add(name, v)
            elif lb.get(name) is None:
                add(name, "")


_NO_TREE = object()
_MISSING = object()
_NEED_RAW = object()


def _lookup(node, path: list, k: int):
    """Path lookup in a fast-decoded tree: the label value, _MISSING, or _NEED_RAW for object/array results
    (those must be cut from the input text to keep its spacing)."""
    if k == len(path):
        t = type(node)
        if t is str:
            return node.replace("\ufffd", " ") if "\ufffd" in node else node
        if node is None:
            return ""
        if node is True:
            return "true"
        if node is False:
            return "false"
        return _NEED_RAW
    step = path[k]
    if type(step) is int:
        if type(node) is list and step < len(node):
            return _lookup(node[step], path, k + 1)
        return _MISSING
    if type(node) is not tuple:
        return _MISSING
    for key, child in node:
        if key == step:
            r = _lookup(child, path, k + 1)
            if r is not _MISSING:
                return r
    return _MISSING


def _resolve(s: str, off: int, limit: int, path: list, k: int):
    """The value at ``path`` below the value starting at ``off`` (first match in document order wins).

    Streams like jsonparser's ``EachKey``: containers on the way need not be closed or valid after the match
    (``{"app":{"x":1}`` still yields ``app``); only the value that is returned must be complete.
    """
    i = _next_token(s, off, limit)
    if i == -1:
        return None
    if k == len(path):
        return _get_type(s, i, limit)
    step = path[k]
    c = s[i]
    if type(step) is int:
        if c != "[":
            return None
        j = _next_token(s, i + 1, limit)
        if j == -1 or s[j] == "]":
            return None
        idx = 0
        while True:
            if idx == step:
                return _resolve(s, j, limit, path, k + 1)
            _, _, ve = _get(s, j, limit)
            j = _next_token(s, ve, limit)
            if j == -1 or s[j] != ",":
                return None
            j += 1
            idx += 1
    if c != "{":
        return None
    j = _next_token(s, i + 1, limit)
    while j != -1 and s[j] == '"':
        e = _string_end(s, j + 1, limit)
        if e == -1:
            return None
        key = s[j + 1:e - 1]
        if "\\" in key:
            key = _json_unescape(key)
            if key is None:
                return None
        j = _next_token(s, e, limit)
        if j == -1 or s[j] != ":":
            return None
        if key == step:
            r = _resolve(s, j + 1, limit, path, k + 1)
            if r is not None:
                return r
        _, _, ve = _get(s, j + 1, limit)
        j = _next_token(s, ve, limit)
        if j == -1 or s[j] != ",":
            return None
        j = _next_token(s, j + 1, limit)
    return None


_JEXPR_TOKEN = re.compile(r'[ \t\n]*(?:(?P<int>[0-9]+)|(?P<lsb>\[)|(?P<rsb>\])|(?P<dot>\.)'
                          r'|(?P<field>[A-Za-z_][A-Za-z0-9_]*)|"(?P<str>[^"\]]*)["\]]?|(?P<bad>.))', re.S)


def _parse_json_expr(expr: str) -> list:
    """Loki's jsonexpr grammar: ``field``, ``.field``, ``["key"]``, ``[0]`` in sequence → list of str|int."""
    toks = []
    pos = 0
    n = len(expr)
    while pos < n:
        m = _JEXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:  # only trailing whitespace left
            break
        pos = m.end()
        kind = m.lastgroup
        if kind is None:  # trailing whitespace
            break
        if kind == "bad":
            raise ValueError(f"cannot parse expression [{expr}]: unexpected char {m.group('bad')}")
        if kind == "int":
            nxt = expr[pos:pos + 1]
            if nxt not in (" ", "\t", "\n", "]"):
                raise ValueError(f"cannot parse expression [{expr}]: non-integer value: {nxt}")
            toks.append(("int", int(m.group("int"))))
        else:
            toks.append((kind, m.group(kind)))
    path: list = []
    i = 0
    first = True

    def fail():
        raise ValueError(f"cannot parse expression [{expr}]: syntax error")

    while i < len(toks):
        kind, val = toks[i]
        if kind == "field" and first:
            path.append(val)
            i += 1
        elif kind == "dot" and not first:
            if i + 1 < len(toks) and toks[i + 1][0] == "field":
                path.append(toks[i + 1][1])
                i += 2
            else:
                fail()
        elif kind == "lsb":
            if i + 2 < len(toks) and toks[i + 2][0] == "rsb" and toks[i + 1][0] in ("str", "int"):
                path.append(toks[i + 1][1])
                i += 3
            else:
                fail()
        else:
            fail()
        first = False
    if not path:
        fail()
    return path


# ================================================================================================ | unpack
class UnpackStage(Stage):
    """``| unpack``: top-level string fields become labels and ``_entry`` replaces the line (Promtail ``pack``)."""

    def __init__(self):
        self._keys = _KeyCache()

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        if not line:
            return line
        if line[0] != "{":
            lb.set_error(JSON_PARSER_ERR, "expecting json object(6), but it is not")
            return line
        if "\\ud" in line or "\\uD" in line:
            return self._slow(line, lb)
        try:
            obj, _ = _FAST_JSON_TYPED.raw_decode(line, 0)
        except (ValueError, RecursionError):
            return self._slow(line, lb)
        entry = None
        labels: list[tuple[str, str]] = []
        keys = self._keys
        for k, v in obj:
            if type(v) is str:  # numbers are _Num, objects tuples, arrays lists: all ignored
                if k == "_entry":
                    entry = v
                else:
                    if "\ufffd" in v:
                        v = v.replace("\ufffd", " ")
                    labels.append((keys[k], v))
        return self._finish(line, entry, labels, lb)

    def _slow(self, line: str, lb: LabelsBuilder) -> str:
        """Step-by-step jsonparser emulation (malformed or unusual input)."""
        entry = None
        labels: list[tuple[str, str]] = []
        keys = self._keys
        try:
            for k, typ, vs, _ve in _iter_object(line, 0, len(line)):
                if typ != T_STRING:
                    continue
                raw = line[vs + 1:_ve - 1]
                if k == "_entry":
                    entry = _json_unescape(raw)
                    if entry is None:
                        raise _JErr(_E_ESCAPE)
                else:
                    labels.append((keys[k], _label_string(raw)))
        except _JErr as err:
            lb.set_error(JSON_PARSER_ERR, str(err))
            return line
        except RecursionError:
            lb.set_error(JSON_PARSER_ERR, _E_JSON)
            return line
        return self._finish(line, entry, labels, lb)

    @staticmethod
    def _finish(line: str, entry: str | None, labels: list[tuple[str, str]], lb: LabelsBuilder) -> str:
        """Labels are only added when the line was packed (has ``_entry``), which then becomes the line."""
        if entry is None:
            return line
        add = lb.add_parsed
        for name, v in labels:
            if name:
                add(name, v)
        return entry


# ================================================================================================ | logfmt
# One key/value pair in the common, well-formed shape. Possessive quantifiers keep the regex from finding a
# shorter key by backtracking; anything it rejects goes through the exact emulation of Loki's decoder.
_LF_PAIR = re.compile(
    r'[\x00-\x20]*+([^\x00-\x20="]++)(?:=(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^\x00-\x20="]*+)))?+(?![="])', re.S)
_LF_NONSPACE = re.compile(r"[^\x00-\x20]")
_LF_KEY_END = re.compile(r'[\x00-\x20="]')
_LF_SPACE = re.compile(r"[\x00-\x20]")
_LF_QTAIL = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_LF_ESC = {'"': '"', "\\": "\\", "/": "/", "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _logfmt_unquote(s: str) -> str | None:
    """Loki's logfmt ``unquoteBytes`` (encoding/json rules, ``\\'`` allowed, literal control characters allowed)."""
    return _unescape(s, _LF_ESC, False)


def _logfmt_err(line: str, pos: int, msg: str) -> str:
    """Loki's ``logfmt syntax error at pos N : msg``; N is a 1-based *byte* offset."""
    bpos = pos if line.isascii() else len(line[:pos].encode("utf-8", "surrogatepass"))
    return f"logfmt syntax error at pos {bpos + 1} : {msg}"


def _logfmt_scan(line: str, pos: int):
    """One ``ScanKeyval`` of Loki's decoder from ``pos``: returns (ok, key, value, new_pos, error)."""
    n = len(line)
    m = _LF_NONSPACE.search(line, pos)
    if m is None:
        return False, None, None, n, None
    start = m.start()
    m = _LF_KEY_END.search(line, start)
    if m is None:  # key runs to the end of the line
        key = line[start:]
        if "\ufffd" in key:
            return False, None, None, n, _logfmt_err(line, n, "invalid key")
        return True, key, None, n, None
    p = m.start()
    c = line[p]
    if c == "=":
        if p > start:
            key = line[start:p]
            if "\ufffd" in key:
                return False, None, None, _skip_value(line, p), _logfmt_err(line, p, "invalid key")
        else:
            return False, None, None, _skip_value(line, p), _logfmt_err(line, p, "unexpected '='")
    elif c == '"':
        return False, None, None, _skip_value(line, p), _logfmt_err(line, p, "unexpected '\"'")
    else:  # whitespace: standalone key
        key = line[start:p]
        if "\ufffd" in key:
            return False, None, None, p, _logfmt_err(line, p, "invalid key")
        return True, key, None, p, None
    # after '='
    p += 1
    if p >= n:
        return True, key, None, p, None
    c = line[p]
    if c <= " ":
        return True, key, None, p, None
    if c == '"':
        m = _LF_QTAIL.match(line, p + 1)
        if m is None:
            return False, None, None, n, _logfmt_err(line, n, "unterminated quoted value")
        end = m.end()
        inner = line[p + 1:end - 1]
        if "\\" in inner:
            v = _logfmt_unquote(inner)
            if v is None:
                return False, None, None, end, _logfmt_err(line, end, "invalid quoted value")
            return True, key, v, end, None
        return True, key, (inner or None), end, None
    vstart = p
    m = _LF_KEY_END.search(line, p)
    if m is None:
        return True, key, line[vstart:], n, None
    p = m.start()
    c = line[p]
    if c == "=" or c == '"':
        return False, None, None, _skip_value(line, p), _logfmt_err(line, p, "unexpected %s" % ("'='" if c == "=" else "'\"'"))
    return True, key, (line[vstart:p] or None), p, None


def _skip_value(line: str, p: int) -> int:
    m = _LF_SPACE.search(line, p)
    return len(line) if m is None else m.start()


def _logfmt_pairs(line: str, strict: bool):
    """Yields (key, value|None) pairs like Loki's decode loop; the last item may be ("", error) in strict mode."""
    n = len(line)
    pos = 0
    match = _LF_PAIR.match
    while pos < n:
        m = match(line, pos)
        if m is not None:
            key = m.group(1)
            q = m.group(2)
            if "\ufffd" not in key and (q is None or "\\" not in q):
                pos = m.end()
                if q is not None:
                    yield key, (q or None)
                else:
                    yield key, (m.group(3) or None)
                continue
        ok, key, value, pos, err = _logfmt_scan(line, pos)
        if ok:
            yield key, value
        elif strict:
            if err is not None:
                yield None, err
            return


class LogfmtStage(Stage):
    """``| logfmt [--strict] [--keep-empty] [a="key", b]``."""

    def __init__(self, strict: bool = False, keep_empty: bool = False, params: list[A.Extraction] | None = None):
        self.strict = bool(strict)
        self.keep_empty = bool(keep_empty)
        self.params = list(params or [])
        self._keys = _KeyCache()
        # expression form: sanitized line key → label ids that want it
        self._wanted: dict[str, list[str]] = {}
        self._ids: list[str] = []
        for p in self.params:
            expr = p.expr if p.expr is not None else p.name
            if not expr:
                raise ValueError(f"cannot parse expression [{expr}]: syntax error")
            if not _is_valid_label_name(p.name):
                raise ValueError(f"invalid extracted label name '{p.name}'")
            if p.name not in self._ids:
                self._ids.append(p.name)
                self._wanted.setdefault(expr, []).append(p.name)

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        if self._ids:
            self._process_exprs(line, lb)
            return line
        keys = self._keys
        keep_empty = self.keep_empty
        add = lb.add_parsed
        for key, value in _logfmt_pairs(line, self.strict):
            if key is None:
                lb.set_error(LOGFMT_PARSER_ERR, value)
                break
            name = keys[key]
            if not name:
                continue
            if value is None:
                if not keep_empty:
                    continue
                value = ""
            elif "\ufffd" in value:
                value = value.replace("\ufffd", " ")
            add(name, value)
        return line

    def _process_exprs(self, line: str, lb: LabelsBuilder) -> None:
        keys = self._keys
        wanted = self._wanted
        found: dict[str, str] = {}
        err = None
        for key, value in _logfmt_pairs(line, self.strict):
            if key is None:
                err = value
                break
            ids = wanted.get(keys[key])
            if not ids:
                continue
            if value is None or "\ufffd" in value:
                value = ""
            for i in ids:
                if i not in found:
                    found[i] = value
        add = lb.add_parsed
        for i in self._ids:
            v = found.get(i)
            if v is not None:
                add(i, v)
            elif not lb.base_has(i):
                add(i, "")
        if err is not None:
            lb.set_error(LOGFMT_PARSER_ERR, err)


# ================================================================================================ | regexp
class RegexpStage(Stage):
    """``| regexp "re"``: every named group of the first (leftmost) match becomes a label."""

    def __init__(self, regex: str):
        self.regex = regex
        try:
            self._rx = compile_re2(regex)
        except ValueError as err:
            if "duplicate" in str(err):
                dup = _duplicate_group_name(regex)
                if dup is not None:
                    raise ValueError(f"duplicate extracted label name '{dup}'") from None
            raise
        if self._rx.groups == 0:
            raise ValueError("at least one named capture must be supplied")
        groups = sorted(self._rx.groupindex.items(), key=lambda kv: kv[1])
        dup = _duplicate_group_name(regex)  # RE2 accepts repeated names (groupindex keeps one of them)
        if dup is not None and dup in self._rx.groupindex:
            if not _is_valid_label_name(dup):
                raise ValueError(f"invalid extracted label name '{dup}'")
            raise ValueError(f"duplicate extracted label name '{dup}'")
        seen = set()
        for name, _ in groups:
            if not _is_valid_label_name(name):
                raise ValueError(f"invalid extracted label name '{name}'")
            if name in seen:
                raise ValueError(f"duplicate extracted label name '{name}'")
            seen.add(name)
        if not groups:
            raise ValueError("at least one named capture must be supplied")
        self._groups = [(sanitize_label_key(n), i) for n, i in groups]

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        # RE2 works on UTF-8 and the binding maps every offset back for str input; matching the encoded line
        # and decoding only the groups is several times faster with identical results.
        m = self._rx.search(line.encode("utf-8", "surrogatepass"))
        if m is None:
            return line
        groups = m.groups()
        add = lb.add_parsed
        for name, idx in self._groups:
            v = groups[idx - 1]
            add(name, "" if v is None else v.decode("utf-8", "surrogatepass"))
        return line


_GROUP_NAME = re.compile(r"(?<!\\)\(\?P?<([^>]*)>")


def _duplicate_group_name(regex: str) -> str | None:
    seen = set()
    for name in _GROUP_NAME.findall(regex):
        if name in seen:
            return name
        seen.add(name)
    return None


# ================================================================================================ | pattern
_PATTERN_CAPTURE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def _parse_pattern(pattern: str) -> list[tuple[bool, str]]:
    """Loki's pattern lexer: ``<identifier>`` is a capture, everything else (``<1_>``, ``<>``...) literal text."""
    nodes: list[tuple[bool, str]] = []
    pos = 0
    for m in _PATTERN_CAPTURE.finditer(pattern):
        if m.start() > pos:
            nodes.append((False, pattern[pos:m.start()]))
        nodes.append((True, m.group(1)))
        pos = m.end()
    if pos < len(pattern):
        nodes.append((False, pattern[pos:]))
    return nodes


def _check_no_consecutive(nodes) -> None:
    for a, b in zip(nodes, nodes[1:]):
        if a[0] and b[0]:
            raise ValueError("found consecutive capture: invalid expression")


class PatternStage(Stage):
    """``| pattern "<ip> - <_> ..."``: anchored at the start when the pattern begins with a literal."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        nodes = _parse_pattern(pattern)
        names = [n for cap, n in nodes if cap and n != "_"]
        if not names:
            raise ValueError("at least one capture is required")
        _check_no_consecutive(nodes)
        seen = set()
        for n in names:
            if n in seen:
                raise ValueError(f"duplicate capture name ({n}): invalid expression")
            seen.add(n)
        self._names = names
        lead = None
        if nodes and not nodes[0][0]:
            lead = nodes[0][1]
            nodes = nodes[1:]
        self._lead = lead
        # (capture name or None for <_>, following literal or None at the end)
        steps = []
        i = 0
        while i < len(nodes):
            name = nodes[i][1]
            lit = nodes[i + 1][1] if i + 1 < len(nodes) else None
            steps.append((None if name == "_" else name, lit))
            i += 2
        self._steps = steps

    def matches(self, line: str) -> list[str]:
        """Loki ``Matcher.Matches``: captured values in order of the named captures (may stop early)."""
        if not line or not self._steps:
            return []
        pos = 0
        lead = self._lead
        if lead is not None:
            if not line.startswith(lead):
                return []
            pos = len(lead)
        out = []
        for name, lit in self._steps:
            if lit is None:
                if name is not None:
                    out.append(line[pos:])
                return out
            i = line.find(lit, pos)
            if i == -1:
                if name is not None:
                    out.append(line[pos:])
                return out
            if name is not None:
                out.append(line[pos:i])
            pos = i + len(lit)
        return out

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        values = self.matches(line)
        if values:
            add = lb.add_parsed
            for name, v in zip(self._names, values):
                add(name, v)
        return line


class PatternLineFilter:
    """``|> "p"`` / ``!> "p"``: pattern test with ``<_>`` wildcards only (no named captures)."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        nodes = _parse_pattern(pattern) if pattern else []
        _check_no_consecutive(nodes)
        for cap, name in nodes:
            if cap and name != "_":
                raise ValueError(f"named captures are not allowed in a pattern line filter: <{name}>")
        self._lits = [(i, text) for i, (cap, text) in enumerate(nodes) if not cap]
        self._empty = not nodes
        self._ends_with_capture = bool(nodes) and nodes[-1][0]

    def matches(self, line: str) -> bool:
        """Loki ``Matcher.Test``: literals in order, each ``<_>`` covers ≥1 char, a trailing literal ends the line."""
        if not line or self._empty:
            return not line and self._empty
        off = 0
        for i, lit in self._lits:
            j = line.find(lit, off)
            if j == -1:
                return False
            if i != 0 and j == off:
                return False
            off = j + len(lit)
        return self._ends_with_capture == (off != len(line))
