"""Manifest TOML in and out: read with ``tomli`` (the parser the standard library's ``tomllib`` was taken from,
same grammar and errors, installed as a mypyc-compiled wheel: 3x faster, most of a full sync's time); a new manifest
is written with ``tomli-w``; a manifest loradoc rewrites (a record added to a user's file, or a shipped file copied
to the user's directory) is updated in place with ``tomlkit``, so that its comments and layout stay where they were
and only the values that changed are rewritten. The rewrite is checked: when the updated text does not read back as
exactly the new data (an exotic layout tomlkit cannot update), the file is written whole with ``tomli-w`` instead.
"""

from __future__ import annotations

import re
from typing import Any

import tomli
import tomli_w

from loradoc.registry.fields import SCHEMA_VERSION
from loradoc.registry.model import AdapterManifest, Manifest

TOMLDecodeError = tomli.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    """Parse a TOML document (raises :class:`TOMLDecodeError`, or ``RecursionError`` for absurd nesting)."""
    return tomli.loads(text)


def error_line(e: tomli.TOMLDecodeError) -> int | None:
    """The 1-based line a TOML error points at."""
    line = getattr(e, "lineno", None)
    if line is None:
        hit = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(hit.group(1)) if hit else None
    return line


def dumps(d: dict[str, Any], header: str | None = None) -> str:
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) if header else ""
    # multi-line strings read best, but a TOML reader turns a CRLF inside one into LF: then one-line escapes
    return comment + tomli_w.dumps(d, multiline_strings=not _has_cr(d))


def _has_cr(value: Any) -> bool:
    if isinstance(value, str):
        return "\r" in value
    if isinstance(value, dict):
        return any(_has_cr(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cr(v) for v in value)
    return False


def manifest_to_toml(m: Manifest) -> str:
    kind = "adapter" if isinstance(m, AdapterManifest) else "base"
    header = f"loradoc {kind} manifest (schema {SCHEMA_VERSION}); see loradoc/registry/SCHEMA.md"
    return dumps(m.to_dict(), header=header)


def rewrite_manifest(old_text: str | None, m: Manifest) -> str:
    """The TOML of ``m``, as an update of ``old_text`` (the file it replaces) that keeps its comments and layout;
    the whole file from :func:`manifest_to_toml` when there is no old text or it cannot be updated exactly."""
    new = m.to_dict()
    if old_text is not None:
        try:
            import tomlkit

            doc = tomlkit.parse(old_text)
            _merge(doc, new)
            text = tomlkit.dumps(doc)
            if same_data(tomli.loads(text), new):
                return text
        except Exception:  # noqa: BLE001, S110 - any layout tomlkit cannot update: the whole file is written below
            pass
    return manifest_to_toml(m)


def same_data(a: Any, b: Any) -> bool:
    """Equal TOML data, types included (``1`` is not ``1.0`` nor ``true``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_data(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_data(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _merge(box: Any, new: dict[str, Any]) -> None:
    """Update a tomlkit table in place to hold ``new``: unchanged values keep their text and comments."""
    from tomlkit.items import AoT, InlineTable, Table

    for k in [k for k in box if k not in new]:
        del box[k]
    for k, v in new.items():
        if k not in box:
            box[k] = v
            continue
        cur = box[k]
        if isinstance(v, dict) and isinstance(cur, Table | InlineTable):
            _merge(cur, v)
        elif isinstance(cur, AoT) and isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            if len(cur) > len(v):
                box[k] = v  # records removed: the array is written again
                continue
            for i, x in enumerate(v):
                if i < len(cur):
                    _merge(cur[i], x)
                else:
                    cur.append(x)
        elif not same_data(cur.unwrap() if hasattr(cur, "unwrap") else cur, v):
            box[k] = v
