"""``loradoc tui``."""

from __future__ import annotations

import click

from loradoc.cli._output import REGISTRY_OPT


@click.command()
@REGISTRY_OPT
@click.option("--endpoint", default=None, help="Hub endpoint for publishing (default: $HF_ENDPOINT).")
def tui(registry_path: str | None, endpoint: str | None) -> None:
    """Open the terminal UI: browse adapters, diagnose, repair, check loads, convert and publish."""
    from pathlib import Path

    try:
        from loradoc.tui.app import run
    except ImportError as e:
        from loradoc.errors import EnvironmentProblem

        raise EnvironmentProblem(f"the TUI needs textual ({e})", hint='pip install "loradoc[tui]"') from None
    run(Path(registry_path) if registry_path else None, endpoint=endpoint)


COMMANDS = [tui]
