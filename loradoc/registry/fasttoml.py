"""A fast reader for the one-line-per-statement TOML that loradoc writes, with ``tomllib`` as the authority.

``tomllib`` is pure Python and parses about 1 MB/s; a registry of 10,000 manifests needs better. This reader
accepts a strict subset of TOML 1.0 (what :func:`loradoc.registry.schema.dumps` emits: comments, ``[table]`` and
``[[array.of.tables]]`` headers, ``key = value`` on one line with one-line basic/literal strings, decimal
integers, floats, booleans, one-line arrays and inline tables). Anything else (multi-line strings or arrays,
dates, dotted keys, hex integers, a redefinition, an error) raises :class:`Unsupported`, and :func:`loads` then
hands the text to ``tomllib``, which gives the authoritative result or the error with its line. A test checks
that both readers agree on every manifest it generates.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any


class Unsupported(Exception):
    """Outside the subset: let tomllib decide."""


_WS = re.compile(r"[ \t]*")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\(?:[btnfr"\\]|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}))*)"')
_LITERAL = re.compile(r"'([^'\x00-\x08\x0a-\x1f\x7f]*)'")
_NUMBER = re.compile(r"[+-]?(?:inf|nan)|[+-]?(?:0|[1-9][0-9]*)(?P<frac>\.[0-9]+)?(?P<exp>[eE][+-]?[0-9]+)?")
_BOOL = re.compile(r"true|false")
_COMMENT = re.compile(r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?$")
_ESC = re.compile(r"\\(?:([btnfr\"\\])|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))")
_SIMPLE = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
_VALUE_END = frozenset(" \t,]}#")


def _unescape(m: re.Match[str]) -> str:
    if m.group(1):
        return _SIMPLE[m.group(1)]
    cp = int(m.group(2) or m.group(3), 16)
    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        raise Unsupported("invalid unicode escape")
    return chr(cp)


def _basic(body: str) -> str:
    return _ESC.sub(_unescape, body) if "\\" in body else body


class _Parser:
    def __init__(self, line: str) -> None:
        self.s = line
        self.i = 0

    def ws(self) -> None:
        self.i = _WS.match(self.s, self.i).end()  # type: ignore[union-attr]

    def key(self) -> str:
        s, i = self.s, self.i
        if i < len(s) and s[i] == '"':
            m = _BASIC.match(s, i)
            if not m:
                raise Unsupported("key")
            self.i = m.end()
            return _basic(m.group(1))
        if i < len(s) and s[i] == "'":
            m = _LITERAL.match(s, i)
            if not m:
                raise Unsupported("key")
            self.i = m.end()
            return m.group(1)
        m = _BARE.match(s, i)
        if not m:
            raise Unsupported("key")
        self.i = m.end()
        return m.group(0)

    def value(self, frozen: set[int]) -> Any:
        s, i = self.s, self.i
        if i >= len(s):
            raise Unsupported("no value")
        c = s[i]
        if c == '"':
            if s.startswith('"""', i):
                raise Unsupported("multi-line string")
            m = _BASIC.match(s, i)
            if not m:
                raise Unsupported("string")
            self.i = m.end()
            return _basic(m.group(1))
        if c == "'":
            if s.startswith("'''", i):
                raise Unsupported("multi-line string")
            m = _LITERAL.match(s, i)
            if not m:
                raise Unsupported("string")
            self.i = m.end()
            return m.group(1)
        if c == "[":
            return self.array(frozen)
        if c == "{":
            return self.table(frozen)
        m = _BOOL.match(s, i)
        if m:
            self.i = m.end()
            self.end_of_value()
            return m.group(0) == "true"
        m = _NUMBER.match(s, i)
        if not m:
            raise Unsupported("value")
        self.i = m.end()
        self.end_of_value()
        text = m.group(0)
        if m.group("frac") or m.group("exp") or text.lstrip("+-") in ("inf", "nan"):
            return float(text)
        v = int(text)
        if not -(2**63) <= v < 2**63:
            raise Unsupported("integer range")
        return v

    def end_of_value(self) -> None:
        if self.i < len(self.s) and self.s[self.i] not in _VALUE_END:
            raise Unsupported("junk after value")

    def array(self, frozen: set[int]) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        while True:
            self.ws()
            if self.i >= len(self.s):
                raise Unsupported("multi-line array")
            if self.s[self.i] == "]":
                self.i += 1
                break
            out.append(self.value(frozen))
            self.ws()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            self.ws()
            if self.i < len(self.s) and self.s[self.i] == "]":
                self.i += 1
                break
            raise Unsupported("array")
        frozen.add(id(out))
        return out

    def table(self, frozen: set[int]) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        self.ws()
        if self.i < len(self.s) and self.s[self.i] == "}":
            self.i += 1
            frozen.add(id(out))
            return out
        while True:
            self.ws()
            k = self.key()
            self.ws()
            if self.i >= len(self.s) or self.s[self.i] != "=":
                raise Unsupported("inline table")
            self.i += 1
            self.ws()
            if k in out:
                raise Unsupported("duplicate key")
            out[k] = self.value(frozen)
            self.ws()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            if self.i < len(self.s) and self.s[self.i] == "}":
                self.i += 1
                break
            raise Unsupported("inline table")
        frozen.add(id(out))
        return out

    def header_keys(self, closing: str) -> list[str]:
        parts = []
        while True:
            self.ws()
            parts.append(self.key())
            self.ws()
            if self.s.startswith(closing, self.i):
                self.i += len(closing)
                break
            if self.i < len(self.s) and self.s[self.i] == ".":
                self.i += 1
                continue
            raise Unsupported("header")
        if not _COMMENT.match(self.s, self.i):
            raise Unsupported("after header")
        return parts


# The common lines, matched whole: `key = <scalar>`, `key = [<scalars>]`, `key = { k = <scalar>, ... }`,
# `[a.b]`, `[[a.b]]`, where a scalar is a string without escapes, a decimal int, a plain float or a boolean.
_STR = r'"([^"\\\x00-\x08\x0a-\x1f\x7f]*)"'
_FLT = r"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))"
_INT = r"(-?(?:0|[1-9][0-9]{0,17}))"
_BOOLV = r"(true|false)"
_SCALAR = rf"(?:{_STR}|{_FLT}|{_INT}|{_BOOLV})"
_SCALAR_NC = (  # the same, without capturing groups
    r'(?:"[^"\\\x00-\x08\x0a-\x1f\x7f]*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)'
    r"|-?(?:0|[1-9][0-9]{0,17})|true|false)"
)
_TAIL = r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?$"
_KEY = r"[ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*"
_ARRAY_NC = rf"\[(?:[ \t]*{_SCALAR_NC}[ \t]*,)*(?:[ \t]*{_SCALAR_NC})?[ \t]*,?[ \t]*\]"
_PAIR_NC = rf"[A-Za-z0-9_-]+[ \t]*=[ \t]*{_SCALAR_NC}"
_TABLE_NC = rf"\{{[ \t]*(?:(?:{_PAIR_NC}[ \t]*,[ \t]*)*{_PAIR_NC})?[ \t]*\}}"
# groups: key, (string, float, int, bool), array text, inline-table text
_KV_ANY = re.compile(_KEY + rf"(?:{_SCALAR}|({_ARRAY_NC})|({_TABLE_NC}))" + _TAIL)
_SCALAR_FIND = re.compile(_SCALAR)
_PAIR_FIND = re.compile(rf"([A-Za-z0-9_-]+)[ \t]*=[ \t]*{_SCALAR}")
_HDR_SIMPLE = re.compile(r"[ \t]*(?P<o>\[\[?)(?P<p>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)(?P<c>\]\]?)" + _TAIL)


def _scalar(s: str | None, f: str | None, i: str | None, b: str | None) -> Any:
    if s is not None:
        return s
    if f is not None:
        return float(f)
    if i is not None:
        return int(i)
    return b == "true"


class _Doc:
    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        self.current = self.root
        self.frozen: set[int] = set()  # inline tables and value arrays: never extended by headers
        self.aot: set[int] = set()  # arrays of tables
        self.declared: set[int] = set()  # tables opened by a [header] (a second [header] is an error)

    def open(self, parts: list[str], is_aot: bool) -> None:
        node = self.root
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif isinstance(nxt, list) and id(nxt) in self.aot:
                nxt = nxt[-1]
            elif not isinstance(nxt, dict) or id(nxt) in self.frozen:
                raise Unsupported("header through a value")
            node = nxt
        last = parts[-1]
        existing = node.get(last)
        if is_aot:
            if existing is None:
                existing = node[last] = []
                self.aot.add(id(existing))
            elif not (isinstance(existing, list) and id(existing) in self.aot):
                raise Unsupported("array of tables over a value")
            current: dict[str, Any] = {}
            existing.append(current)
        elif existing is None:
            current = node[last] = {}
        elif isinstance(existing, dict) and id(existing) not in self.frozen and id(existing) not in self.declared:
            current = existing
        else:
            raise Unsupported("table redefined")
        self.declared.add(id(current))
        self.current = current


def fast_loads(text: str) -> dict[str, Any]:
    """Parse the subset, or raise :class:`Unsupported`."""
    if "\r" in text or text.startswith("\ufeff"):
        raise Unsupported("CR or BOM")
    doc = _Doc()
    kv_any, hdr_simple = _KV_ANY.match, _HDR_SIMPLE.match
    frozen = doc.frozen
    for line in text.split("\n"):
        if not line:
            continue
        m = None if line[0] == "[" else kv_any(line)
        if m:
            k, sv, fv, iv, bv, av, tv = m.groups()
            cur = doc.current
            if k in cur:
                raise Unsupported("duplicate key")
            if av is not None:
                arr = [_scalar(*x.group(1, 2, 3, 4)) for x in _SCALAR_FIND.finditer(av[1:-1])]
                frozen.add(id(arr))
                cur[k] = arr
            elif tv is not None:
                tab: dict[str, Any] = {}
                for x in _PAIR_FIND.finditer(tv[1:-1]):
                    if x.group(1) in tab:
                        raise Unsupported("duplicate key")
                    tab[x.group(1)] = _scalar(*x.group(2, 3, 4, 5))
                frozen.add(id(tab))
                cur[k] = tab
            else:
                cur[k] = _scalar(sv, fv, iv, bv)
            continue
        m = hdr_simple(line)
        if m:
            is_aot = m.group("o") == "[["
            if (m.group("c") == "]]") != is_aot:
                raise Unsupported("header brackets")
            doc.open(m.group("p").split("."), is_aot)
            continue
        p = _Parser(line)
        p.ws()
        if p.i >= len(line) or line[p.i] == "#":
            if not _COMMENT.match(line, p.i):
                raise Unsupported("comment")
            continue
        if line[p.i] == "[":
            is_aot = line.startswith("[[", p.i)
            p.i += 2 if is_aot else 1
            doc.open(p.header_keys("]]" if is_aot else "]"), is_aot)
            continue
        k = p.key()
        p.ws()
        if p.i >= len(line) or line[p.i] != "=":
            raise Unsupported("dotted key or no '='")
        p.i += 1
        p.ws()
        if k in doc.current:
            raise Unsupported("duplicate key")
        v = p.value(doc.frozen)
        if not _COMMENT.match(line, p.i):
            raise Unsupported("after value")
        doc.current[k] = v
    return doc.root


def loads(text: str) -> dict[str, Any]:
    """TOML text -> dict: the fast reader when it applies, else ``tomllib`` (which raises on errors)."""
    try:
        return fast_loads(text)
    except (Unsupported, RecursionError, ValueError):
        return tomllib.loads(text)
