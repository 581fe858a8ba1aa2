"""What every command shares: human or ``--json`` output, the progress bar, the registry option and the base
default (said on stderr)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from loradoc.errors import LoradocError
from loradoc.progress import Progress


def emit_json(data: Any) -> None:
    """The machine-readable output: indented JSON on stdout, never cut, no progress."""
    click.echo(json.dumps(data, indent=2, default=str))


def recorded_note(manifest: Any) -> None:
    """Where ``--record`` wrote (stderr, so that stdout stays the report)."""
    if manifest is not None:
        click.echo(f"recorded in {manifest}", err=True)


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr for a long job (the one progress protocol: ``(done, total, what)``).

    Shown only on a terminal and never with --json; None otherwise (the job then reports to nobody)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[what]}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None, what="")

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total or None, what=str(what)[-48:])

    with bar:
        yield update


REGISTRY_OPT = click.option(
    "--registry", "registry_path", default=None, help="SQLite index to use (default: $LORADOC_REGISTRY or user data)."
)

BASE_DEFAULT = "Default: the base the registry knows for ADAPTER, else the one its adapter_config.json names."


def open_registry(path: str | None) -> Any:
    from pathlib import Path

    from loradoc.registry import Registry

    return Registry(Path(path) if path else None)


def base_for(adapter: str, base: str | None, registry_path: str | None, *, weights: bool = False) -> str:
    """--base, or the base the registry / adapter_config.json knows for ADAPTER (said on stderr)."""
    if base:
        return base
    from loradoc.workflows import choose_base

    try:
        reg = open_registry(registry_path)
    except LoradocError:
        reg = None
    try:
        choice = choose_base(adapter, base, reg, weights=weights)
    finally:
        if reg is not None:
            reg.close()
    click.echo(f"base: {choice.base} (from {choice.why}; pass --base to choose another)", err=True)
    return choice.base
