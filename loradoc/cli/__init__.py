"""The ``loradoc`` command line: a thin shell over the workflow layer (:mod:`loradoc.workflows`).

One module per noun (``doctor``, ``repair``, ``check_load``, ``convert``, ``registry``, ``hub``, ``runtimes``,
``example``, ``base``, ``tui``): parse, call one workflow, print (human or ``--json``, :mod:`loradoc.cli._output`).
Exceptions are mapped to exit codes in one place, :func:`main`, via :func:`loradoc.errors.exit_code_for`. Heavy
libraries are imported by the commands that need them.
"""

from __future__ import annotations

import os
import sys

import click

from loradoc.errors import LoradocError, exit_code_for


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loradoc")
def cli() -> None:
    """loradoc: diagnose, repair, verify, convert and publish LoRA adapters.

    \b
    Start here:
      loradoc example ./demo                      build tiny bases + seed replicas, diagnose one
      loradoc doctor ADAPTER --base BASE          is this adapter silently broken?
    """


def _add_commands() -> None:
    from loradoc.cli import base, check_load, convert, doctor, example, hub, registry, repair, runtimes, tui

    for module in (doctor, repair, check_load, example, registry, convert, runtimes, hub, tui, base):
        for command in module.COMMANDS:
            cli.add_command(command)
    for command in hub.REGISTRY_COMMANDS:
        registry.registry.add_command(command)


_add_commands()


def _quiet_third_party_warnings() -> None:
    """Deprecation notices of torch / transformers / peft are theirs to fix, not the user's: hidden unless
    LORADOC_DEBUG=1. loradoc's own warnings still show."""
    import warnings

    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"loradoc(\.|$)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place that maps exceptions to exit codes and one-line messages."""
    debug = bool(os.environ.get("LORADOC_DEBUG"))
    if not debug:
        _quiet_third_party_warnings()
    try:
        cli.main(args=argv, prog_name="loradoc", standalone_mode=False)
        sys.exit(0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # usage errors: one line, naming the help to read
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "loradoc"
        text = " ".join(e.format_message().split()).rstrip(".")
        click.echo(f"error: {text}; next: see `{where} --help`", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except LoradocError as e:
        if debug:
            raise
        click.echo(f"error: {e.one_line()}", err=True)
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, no traceback
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(
            f"internal error: {e.__class__.__name__}: {first}; next: re-run with LORADOC_DEBUG=1 and report it",
            err=True,
        )
        sys.exit(exit_code_for(e))
