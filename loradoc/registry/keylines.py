"""Where is a key in a TOML text? The line of every table header and key assignment, by key path, so that a schema
error (a key path from validate.py) is reported as ``FILE:LINE: key.path: message``."""

from __future__ import annotations

import re
from collections.abc import Mapping

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + p
    return out or "(top level)"


_HDR_ARRAY = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_HDR_TABLE = re.compile(r"^\[\s*(.+?)\s*\]\s*(#.*)?$")
_KEYPART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_ASSIGN = re.compile(rf"^({_KEYPART}(?:\s*\.\s*{_KEYPART})*)\s*=\s*(.*)$")
_STRINGS = re.compile(r'"""|\'\'\'|"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split_key(s: str) -> list[str]:
    parts = re.findall(_KEYPART, s)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Line number (1-based) of every table header and key assignment, by concrete key path
    (``("revisions", 1, "compat", 0, "verdict")``). Approximate for exotic TOML; exact for what we write."""
    lines: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}
    current: KeyPath = ()
    in_ml: str | None = None
    depth = 0

    def resolve(parts: list[str]) -> KeyPath:
        p: KeyPath = ()
        for part in parts:
            p = p + (part,)
            if p in arrays:
                p = p + (arrays[p],)
        return p

    for lineno, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if in_ml:
            if in_ml in s:
                in_ml = None
            continue
        if depth > 0:
            body = _STRINGS.sub("", s).split("#", 1)[0]
            depth += body.count("[") - body.count("]")
            continue
        if not s or s.startswith("#"):
            continue
        m = _HDR_ARRAY.match(s)
        if m:
            parts = _split_key(m.group(1))
            concrete = resolve(parts[:-1]) + (parts[-1],)
            idx = arrays.get(concrete, -1) + 1
            arrays[concrete] = idx
            current = concrete + (idx,)
            lines.setdefault(concrete, lineno)
            lines[current] = lineno
            continue
        m = _HDR_TABLE.match(s)
        if m and not s.startswith("[["):
            current = resolve(_split_key(m.group(1)))
            lines[current] = lineno
            continue
        m = _ASSIGN.match(s)
        if m:
            path = current + tuple(_split_key(m.group(1)))
            lines[path] = lineno
            value = m.group(2)
            for delim in ('"""', "'''"):
                if value.startswith(delim) and value.count(delim) == 1:
                    in_ml = delim
            if in_ml is None:
                body = _STRINGS.sub("", value)
                body = body.split("#", 1)[0]
                depth = max(0, body.count("[") - body.count("]"))
    return lines


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest enclosing key that has one."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None
