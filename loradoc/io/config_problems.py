"""Every problem of an ``adapter_config.json``, each with its key path and, when the text is at hand, its line.

pydantic reports where it looked (``('target_modules', 'list[str]', 3)``: the union member it tried is part of
the place); this module keeps only the places that exist in the file (``target_modules[3]``) and says, for a
value of the wrong shape altogether, what the field must be (its ``description``). A small scanner over the JSON
text finds the line each key or list entry starts on (json itself keeps no positions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from loradoc.errors import MalformedConfigError

__all__ = ["ConfigFieldsError", "Problem", "json_lines", "problems_from", "shown", "with_lines"]

Path = tuple[str | int, ...]

# What an entry inside a field must be, by pydantic's error type.
_ENTRY_WANT = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "list_type": "a list",
}
_MAX_SHOWN = 5  # problems spelled out in the one-line message; the rest are counted


def shown(value: Any) -> str:
    """A value as the user wrote it (JSON), cut to 60 characters."""
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


@dataclass(frozen=True)
class Problem:
    """One problem: where (``path``), what is wrong (``text``), and the line of the file when known."""

    path: Path
    text: str  # "must be a string, got 3" or "has 100000 entries (limit 10000)"
    too_big: bool = False
    line: int | None = None

    @property
    def where(self) -> str:
        """The key path as written in messages: ``target_modules[3]``, ``rank_pattern["q_proj"]``."""
        out = str(self.path[0])
        for part in self.path[1:]:
            out += f"[{part}]" if isinstance(part, int) else f"[{json.dumps(part)}]"
        return out

    def describe(self) -> str:
        at = f"line {self.line}: " if self.line is not None else ""
        return f"{at}field {self.where!r} {self.text}"


class ConfigFieldsError(MalformedConfigError):
    """A PEFT config whose fields are wrongly typed or too large: ``problems`` lists every one."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(p.describe() for p in problems[:_MAX_SHOWN])
        more = len(problems) - _MAX_SHOWN
        names = ", ".join(dict.fromkeys(repr(p.where) for p in problems))
        if all(p.too_big for p in problems):
            hint = f"fix {names} in {source}: no real adapter needs that much (a regex or a shorter list does)"
        else:
            hint = f"fix {names} in {source} (or re-save the config with peft's save_pretrained)"
        super().__init__(
            f"{source}: {listed}" + (f"; and {more} more" if more > 0 else ""),
            hint=hint + ", then run `loradoc doctor ADAPTER` again",
        )


def _place(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> tuple[Path, Any]:
    """The part of ``loc`` that names places in ``data`` (dropping union-member tags), and the value there."""
    path: list[str | int] = [loc[0]]
    cur: Any = data.get(str(loc[0]))
    for part in loc[1:]:
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if not (in_list or (isinstance(cur, dict) and part in cur)):
            continue  # a union member pydantic tried ('list[str]'), or '[key]': not a place in the file
        cur = cur[part]
        path.append(part)
    return tuple(path), cur


def problems_from(exc: ValidationError, data: Mapping[str, Any], wants: Mapping[str, str]) -> list[Problem]:
    """pydantic's errors as problems: one per wrong entry, or one per field whose value has the wrong shape
    (``wants``: JSON key -> what the field must be)."""
    by_field: dict[str | int, list[tuple[Path, Any, dict[str, Any]]]] = {}
    for err in exc.errors(include_url=False):
        path, value = _place(data, err["loc"])
        by_field.setdefault(path[0], []).append((path, value, dict(err)))
    out: list[Problem] = []
    for key, errs in by_field.items():
        deep = [e for e in errs if len(e[0]) > 1]
        custom = [e for e in errs if e[2]["type"].startswith("loradoc_")]
        chosen = deep or custom or errs[:1]
        seen: set[Path] = set()
        for path, value, err in chosen:
            if path in seen:
                continue
            seen.add(path)
            ctx = err.get("ctx") or {}
            if err["type"] == "loradoc_too_big":
                out.append(Problem(path, str(ctx["what"]), too_big=True))
                continue
            if err["type"] == "loradoc_want":
                phrase = str(ctx["want"])
            elif len(path) > 1:
                phrase = _ENTRY_WANT.get(err["type"], err["msg"][0].lower() + err["msg"][1:])
            else:
                phrase = wants.get(str(key)) or err["msg"]
            out.append(Problem(path, f"must be {phrase}, got {shown(value)}"))
    return out


# -- lines -----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:\n]|[^\s"{}\[\],:]+')


def json_lines(text: str, *, depth: int = 2) -> dict[Path, int]:
    """The line (1-based) each object key or list entry starts on, for paths up to ``depth`` deep.

    ``text`` is a document ``json.loads`` accepted (JSON strings hold no raw newline); a key that appears twice
    maps to its last line, as json keeps its last value.
    """
    out: dict[Path, int] = {}
    line = 1
    # one frame per open container: [path, kind, index in a list / current key, expecting a key]
    stack: list[list[Any]] = []

    def here() -> Path | None:
        if not stack:
            return None
        path, kind, at, _ = stack[-1]
        return (*path, at) if at is not None else None

    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
            continue
        top = stack[-1] if stack else None
        if tok in "{[":
            where = here()
            if top is not None and top[1] == "[" and where is not None and len(where) <= depth:
                out.setdefault(where, line)
            path = where if where is not None else ()
            stack.append([path, tok, 0 if tok == "[" else None, tok == "{"])
        elif tok in "}]":
            if stack:
                stack.pop()
        elif tok == ":":
            if top is not None:
                top[3] = False
        elif tok == ",":
            if top is not None and top[1] == "[":
                top[2] += 1
            elif top is not None:
                top[3] = True
        elif top is not None and top[1] == "{" and top[3]:
            try:
                top[2] = json.loads(tok)
            except ValueError:
                top[2] = tok
            where = here()
            if where is not None and len(where) <= depth:
                out[where] = line
        elif top is not None and top[1] == "[":
            where = here()
            if where is not None and len(where) <= depth:
                out.setdefault(where, line)
    return out


def with_lines(problems: list[Problem], text: str | None) -> list[Problem]:
    """The problems with the line of their path (or of its nearest ancestor) in ``text``."""
    if text is None:
        return problems
    lines = json_lines(text)
    out: list[Problem] = []
    for p in problems:
        line = next((lines[p.path[:n]] for n in range(len(p.path), 0, -1) if p.path[:n] in lines), None)
        out.append(Problem(p.path, p.text, p.too_big, line))
    return out
