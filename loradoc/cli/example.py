"""``loradoc example``."""

from __future__ import annotations

import click

from loradoc.cli._output import REGISTRY_OPT, emit_json


@click.command()
@click.argument("directory", default="./demo")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--adapter",
    default="seed-clinical-endpoint-extractor",
    show_default=True,
    help="Which bundled adapter to diagnose after building.",
)
@REGISTRY_OPT
def example(directory: str, as_json: bool, adapter: str, registry_path: str | None) -> None:
    """Build tiny real-architecture bases and seed-adapter replicas in DIRECTORY, record each adapter with its
    tiny base in the registry (so --base can be left out), then diagnose one."""
    from pathlib import Path

    from loradoc import workflows
    from loradoc.demo.builder import ADAPTER_SPECS

    if adapter not in ADAPTER_SPECS:
        raise click.BadParameter(f"choose one of: {', '.join(ADAPTER_SPECS)}", param_hint="--adapter")
    root = Path(directory)
    built = workflows.example(root, registry=registry_path)
    ex = built.example
    pairs = {
        name: {"adapter": str(p.adapter), "base": str(p.base), "verdict": p.diagnosis.verdict}
        for name, p in built.pairs.items()
    }
    shown = built.pairs[adapter].diagnosis
    if as_json:
        emit_json(
            {
                "root": str(root),
                "adapters": {k: v["adapter"] for k, v in pairs.items()},
                "bases": {k: str(v) for k, v in ex.bases.items()},
                "pairs": pairs,
                "registry": str(built.registry),
                "diagnosis": shown.to_json(),
            }
        )
        return
    click.echo(f"built {len(ex.bases)} tiny bases and {len(ex.adapters)} adapters under {root}/")
    click.echo(f"recorded each adapter with its tiny base in the registry ({built.registry}):")
    for name, row in pairs.items():
        click.echo(f"  {name:<34} base {Path(row['base']).name:<18} {row['verdict']}")
    click.echo(f"\n{adapter}:")
    from loradoc.cli.render import render_diagnosis

    render_diagnosis(shown, adapter=pairs[adapter]["adapter"], base=pairs[adapter]["base"])


COMMANDS = [example]
