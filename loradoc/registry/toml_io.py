"""Manifest TOML in and out: read with the standard library's ``tomllib``, written with ``tomli-w``.

A manifest loradoc rewrites is written whole from its model (a user's comments in that file are not kept; every
value is): the header comment names the schema document.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import tomli_w

from loradoc.registry.fields import SCHEMA_VERSION
from loradoc.registry.model import AdapterManifest, Manifest

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    """Parse a TOML document (raises :class:`TOMLDecodeError`, or ``RecursionError`` for absurd nesting)."""
    return tomllib.loads(text)


def error_line(e: tomllib.TOMLDecodeError) -> int | None:
    """The 1-based line a TOML error points at."""
    line = getattr(e, "lineno", None)
    if line is None:
        hit = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(hit.group(1)) if hit else None
    return line


def dumps(d: dict[str, Any], header: str | None = None) -> str:
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) if header else ""
    return comment + tomli_w.dumps(d)


def manifest_to_toml(m: Manifest) -> str:
    kind = "adapter" if isinstance(m, AdapterManifest) else "base"
    header = f"loradoc {kind} manifest (schema {SCHEMA_VERSION}); see loradoc/registry/SCHEMA.md"
    return dumps(m.to_dict(), header=header)
