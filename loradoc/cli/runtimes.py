"""``loradoc runtimes``."""

from __future__ import annotations

import sys

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json
from loradoc.errors import LoradocError


@click.command("runtimes")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Base directory, its config.json, or a shipped id (the "
              "architecture decides SupportsLoRA, tower and model-type rules). " + BASE_DEFAULT)  # fmt: skip
@click.option("--record", is_flag=True, help="Store the result with the adapter revision in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def runtimes_cmd(adapter: str, base: str | None, record: bool, registry_path: str | None, as_json: bool) -> None:
    """Will vLLM, SGLang, llama.cpp and mlx-lm load ADAPTER? Per runtime: loads / loads with flags / refused
    (the runtime's own message) / unknown, and the loradoc command or flag that makes it load. Rules:
    loradoc/runtimes/rules.toml (each names the runtime version and function it comes from). Exit 0 when every
    runtime loads it (with flags or not), 1 otherwise. (`loradoc registry compat` answers for peft/transformers.)"""
    from loradoc import workflows
    from loradoc.runtimes import FLAGS, LOADS, fill_placeholders

    try:
        base = base_for(adapter, base, registry_path)
    except LoradocError:
        base = None
        click.echo("base: none found (architecture-dependent rules answer unknown; pass --base)", err=True)
    report = workflows.runtimes(adapter, base, record=record, registry=registry_path)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"{adapter}  (base: {report.base or 'unknown'}, {report.architecture or 'architecture unknown'})")
        for r in report.results:
            click.echo(f"  {r.name + ' ' + r.version:<18} {r.summary()}")
            fix = fill_placeholders(r.fix, adapter, base)
            if fix:
                click.echo(f"  {'':<18} fix: {fix}")
    if any(r.verdict not in (LOADS, FLAGS) for r in report.results):
        sys.exit(1)


COMMANDS = [runtimes_cmd]
