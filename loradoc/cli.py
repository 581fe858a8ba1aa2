"""The ``loradoc`` command line: a thin shell over the core.

Parse, call one core function, print (human or ``--json``). Exceptions are mapped to exit codes in one place,
:func:`main`, via :func:`loradoc.errors.exit_code_for`. Heavy libraries are imported by the commands that need them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .errors import LoradocError, exit_code_for


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loradoc")
def cli() -> None:
    """loradoc: diagnose, repair, verify, convert and publish LoRA adapters.

    \b
    Start here:
      loradoc example ./demo                      build tiny bases + seed replicas, diagnose one
      loradoc doctor ADAPTER --base BASE          is this adapter silently broken?
    """


# --------------------------------------------------------------------------------------------------- doctor
@cli.command()
@click.argument("adapter")
@click.option("--base", "base", required=True, help="Local base directory (config.json) or a shipped base id.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report on stdout.")
@click.option("--fast", is_flag=True, help="Static analysis only: no torch import, cached/shipped base profile.")
@click.option("--endpoint", default=None, help="Hub endpoint for REPO@REV adapters (default: $HF_ENDPOINT).")
@click.option("--allow-pickle", is_flag=True, help="Read a pickle adapter_model.bin (torch weights_only=True).")
@click.option("--no-data", is_flag=True, help="Skip the checks that read tensor data (untrained, NaN/Inf).")
def doctor(
    adapter: str,
    base: str,
    as_json: bool,
    fast: bool,
    endpoint: str | None,
    allow_pickle: bool,
    no_data: bool,
) -> None:
    """Diagnose ADAPTER (a directory, HF cache snapshot, or REPO[@REV]) against BASE.

    Exit code: 0 healthy, 1 repairable or broken, 2 bad input.
    """
    from .repair.doctor import HEALTHY, diagnose

    d = diagnose(adapter, base, fast=fast, endpoint=endpoint, allow_pickle=allow_pickle, read_data=not no_data)
    if as_json:
        _emit_json(d.to_json())
    else:
        from .render import render_diagnosis

        render_diagnosis(d, adapter=adapter, base=base)
    sys.exit(0 if d.verdict == HEALTHY else 1)


# --------------------------------------------------------------------------------------------------- example
@cli.command()
@click.argument("directory", default="./demo")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--adapter",
    default="seed-clinical-endpoint-extractor",
    show_default=True,
    help="Which bundled adapter to diagnose after building.",
)
def example(directory: str, as_json: bool, adapter: str) -> None:
    """Build tiny real-architecture bases and seed-adapter replicas in DIRECTORY, then diagnose one."""
    from pathlib import Path

    from .fixtures import ADAPTER_SPECS, build_example
    from .repair.doctor import diagnose

    if adapter not in ADAPTER_SPECS:
        raise click.BadParameter(f"choose one of: {', '.join(ADAPTER_SPECS)}", param_hint="--adapter")
    root = Path(directory)
    ex = build_example(root)
    spec = ADAPTER_SPECS[adapter]
    a_dir = ex.adapters[adapter]
    b_dir = ex.bases[spec.base]
    d = diagnose(str(a_dir), str(b_dir))
    if as_json:
        _emit_json(
            {
                "root": str(root),
                "adapters": {k: str(v) for k, v in ex.adapters.items()},
                "bases": {k: str(v) for k, v in ex.bases.items()},
                "diagnosis": d.to_json(),
            }
        )
        return
    click.echo(f"built {len(ex.bases)} tiny bases and {len(ex.adapters)} adapters under {root}/")
    from .render import render_diagnosis

    render_diagnosis(d, adapter=str(a_dir), base=str(b_dir))


# --------------------------------------------------------------------------------------------------- base
@cli.group()
def base() -> None:
    """Base models: shipped bases and their module profiles."""


@base.command("list")
@click.option("--json", "as_json", is_flag=True)
def base_list(as_json: bool) -> None:
    """List the shipped bases."""
    from .profiles import resolve_base, shipped_bases

    rows = []
    for repo_id in shipped_bases():
        src = resolve_base(repo_id)
        prov = src.provenance or {}
        rows.append({"id": repo_id, "source_kind": prov.get("source_kind"), "config": str(src.config_path)})
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:<32} {r['source_kind'] or ''}")


@base.command("profile")
@click.argument("base_spec", metavar="BASE")
@click.option("--json", "as_json", is_flag=True)
def base_profile(base_spec: str, as_json: bool) -> None:
    """Build (or read from cache) the module profile of BASE."""
    from .profiles import get_profile

    p = get_profile(base_spec)
    summary = {
        "name": p.name,
        "architecture": p.architecture,
        "model_type": p.model_type,
        "transformers_version": p.transformers_version,
        "layers": p.num_layers,
        "kv_shared_layers": p.kv_shared_layers,
        "towers": p.towers,
        "modules": len(p.modules),
        "config_sha256": p.config_sha256,
    }
    if as_json:
        _emit_json(summary)
        return
    for k, v in summary.items():
        click.echo(f"{k:<22} {v}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place that maps exceptions to exit codes and one-line messages."""
    debug = bool(os.environ.get("LORADOC_DEBUG"))
    try:
        cli.main(args=argv, prog_name="loradoc", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
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


if __name__ == "__main__":  # pragma: no cover
    main()
