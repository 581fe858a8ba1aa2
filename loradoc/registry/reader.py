"""Reading manifest files: the bytes of one file -> its manifest, or its problems as ``FILE:LINE: key: message``
(every schema problem, each with the line of its key); and the manifest files of a directory."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, MalformedConfigError
from loradoc.registry import toml_io
from loradoc.registry.issues import SchemaError
from loradoc.registry.keylines import format_path, key_lines, line_of
from loradoc.registry.model import Manifest
from loradoc.registry.validate import parse_manifest

#: No real manifest comes near this (thousands of revisions are well under 1 MB): a bigger file is refused unread.
MAX_MANIFEST_BYTES = 4 * 2**20
#: At most this many problems are reported per file (the first ones by line).
MAX_PROBLEMS = 20
FIX_HINT = "fix that line (the schema is in loradoc/registry/SCHEMA.md), then run `loradoc registry sync`"


@dataclass
class ManifestProblem:
    path: str
    line: int | None
    message: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line if self.line is not None else '?'}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "key": self.key, "message": self.message}


def too_large(path: Path, size: int) -> ManifestProblem | None:
    if size <= MAX_MANIFEST_BYTES:
        return None
    return ManifestProblem(
        str(path), None, f"{size / 2**20:.1f} MiB is over the {MAX_MANIFEST_BYTES // 2**20} MiB limit for a manifest"
    )


def check_manifest(path: Path, data: bytes) -> tuple[Manifest | None, list[ManifestProblem]]:
    """Parse + validate one manifest's bytes: the manifest, or the problems (file, line, message)."""
    m, problems, _ = check_document(path, data)
    return m, problems


def check_document(path: Path, data: bytes) -> tuple[Manifest | None, list[ManifestProblem], dict[str, Any] | None]:
    """check_manifest, plus the parsed TOML document (what the index stores: it validates to the same manifest)."""
    doc, problems = parse_document(path, data)
    if doc is None:
        return None, problems, None
    m, problems = validate_document(path, data, doc)
    return m, problems, doc if m is not None else None


def parse_document(path: Path, data: bytes) -> tuple[dict[str, Any] | None, list[ManifestProblem]]:
    """UTF-8 + TOML: the parsed document, or the one problem (file, line, message)."""
    p = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, [ManifestProblem(p, line, f"not UTF-8 text (byte {e.start})")]
    try:
        return toml_io.loads(text), []
    except RecursionError:
        return None, [ManifestProblem(p, None, "invalid manifest: nested too deeply to read")]
    except toml_io.TOMLDecodeError as e:
        return None, [ManifestProblem(p, toml_io.error_line(e), f"invalid TOML: {e}")]


def validate_document(path: Path, data: bytes, doc: dict[str, Any]) -> tuple[Manifest | None, list[ManifestProblem]]:
    """The schema (validate.py): the manifest, or every problem with the line of its key (the first 20 by line)."""
    p = str(path)
    try:
        return parse_manifest(doc), []
    except RecursionError:
        return None, [ManifestProblem(p, None, "invalid manifest: nested too deeply to check")]
    except SchemaError as e:
        lines = key_lines(data.decode("utf-8"))
        out = [
            ManifestProblem(p, line_of(lines, i.path), f"{format_path(i.path)}: {i.message}", format_path(i.path))
            for i in e.issues
        ]
        out.sort(key=lambda x: x.line if x.line is not None else 0)
        return None, out[:MAX_PROBLEMS]


def parse_all(items: list[tuple[Path, bytes]]) -> Iterator[tuple[dict[str, Any] | None, list[ManifestProblem]]]:
    """:func:`parse_document` of each (path, bytes), in order, as they come."""
    for p, d in items:
        yield parse_document(p, d)


def raise_problems(problems: list[ManifestProblem]) -> None:
    """One error for a file's problems: the first, and how many more."""
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    raise MalformedConfigError(f"{problems[0]}{more}", hint=FIX_HINT)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read one manifest file, raising :class:`MalformedConfigError` naming the file and line."""
    p = Path(path)
    try:
        big = too_large(p, p.stat().st_size)
        if big is not None:
            raise MalformedConfigError(str(big), hint="a manifest that large is not one loradoc wrote: check the file")
        data = p.read_bytes()
    except OSError as e:
        raise BadInputError(f"cannot read manifest {p}: {e.strerror or e}", hint="check the path") from None
    m, problems = check_manifest(p, data)
    if m is None:
        raise_problems(problems)
    assert m is not None
    return m


def manifest_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """(path, stat) of ``adapters/*.toml`` and ``bases/*/manifest.toml`` under root, sorted; one stat each."""
    try:
        with os.scandir(root / "adapters") as it:
            entries = sorted(
                (e for e in it if e.name.endswith(".toml") and not e.name.startswith(".")), key=lambda e: e.name
            )
        for e in entries:
            with contextlib.suppress(OSError):
                if e.is_file():
                    yield Path(e.path), e.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass
    try:
        with os.scandir(root / "bases") as it:
            dirs = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        for d in dirs:
            f = Path(d.path) / "manifest.toml"
            with contextlib.suppress(OSError):
                st = f.stat()
                if stat.S_ISREG(st.st_mode):
                    yield f, st
    except (FileNotFoundError, NotADirectoryError):
        pass
