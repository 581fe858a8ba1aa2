"""``loradoc registry``: list, show, add, sync, compat (scan-hub lives with the Hub commands)."""

from __future__ import annotations

import sys

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json, open_registry


@click.group()
def registry() -> None:
    """The manifest registry: adapters, bases, compatibility and lineage (TOML manifests + SQLite index)."""


@registry.command("list")
@click.option("--base", "base_id", default=None, help="Only adapters of this base id.")
@click.option("--status", default=None, help="healthy | repairable | broken | repaired | verified")
@click.option("--bases", "show_bases", is_flag=True, help="List the bases instead.")
@click.option("--runtime", default=None, help="Only adapters a recorded `loradoc runtimes` check says RUNTIME loads "
              "(vllm | sglang | llama_cpp | mlx_lm), or RUNTIME:VERDICT (e.g. vllm:refused).")  # fmt: skip
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_list(
    base_id: str | None,
    status: str | None,
    show_bases: bool,
    runtime: str | None,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """List adapters (or --bases)."""
    reg = open_registry(registry_path)
    if show_bases:
        brows = reg.list_bases()
        if as_json:
            emit_json([r.to_json() for r in brows])
            return
        for b in brows:
            rel = f"{b.relation} of {b.of}" if b.relation else ""
            click.echo(f"{b.id:<48} {b.architecture:<34} {rel}")
        return
    rows = reg.list(base=base_id, status=status, runtime=runtime)
    if as_json:
        emit_json({"adapters": [r.to_json() for r in rows], "bases": [b.to_json() for b in reg.list_bases()]})
        return
    for r in rows:
        rts = " ".join(f"{k}={v}" for k, v in r.runtimes.items())
        click.echo(f"{r.id:<56} {r.status:<11} {r.base:<40} r={r.r} alpha={r.alpha}" + (f"  {rts}" if rts else ""))


@registry.command("show")
@click.argument("ident", metavar="ID")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_show(ident: str, registry_path: str | None, as_json: bool) -> None:
    """Show the manifest of an adapter or base (repo id, id@revision, or a local adapter path)."""
    from loradoc.registry import manifest_to_toml

    m = open_registry(registry_path).show(ident)
    if as_json:
        emit_json(m.to_json())
    else:
        click.echo(manifest_to_toml(m))


@registry.command("add")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory or shipped base id. " + BASE_DEFAULT)
@click.option("--fast", is_flag=True, help="Static analysis only.")
@click.option("--endpoint", default=None)
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_add(
    adapter: str, base: str, fast: bool, endpoint: str | None, registry_path: str | None, as_json: bool
) -> None:
    """Run doctor on ADAPTER (a path or REPO[@REV]) and write its manifest."""
    from loradoc import workflows

    base = base_for(adapter, base, registry_path)
    done = workflows.diagnose(adapter, base, fast=fast, endpoint=endpoint, record=True, registry=registry_path)
    if as_json:
        emit_json({"manifest": str(done.recorded), "verdict": done.diagnosis.verdict})
    else:
        click.echo(f"{done.diagnosis.verdict}: recorded in {done.recorded}")


@registry.command("sync")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_sync(registry_path: str | None, as_json: bool) -> None:
    """Re-index the manifest directories (incremental). Malformed manifests are reported; the others load."""
    rep = open_registry(registry_path).sync()
    if as_json:
        emit_json(rep.to_json())
    else:
        click.echo(
            f"added {len(rep.added)}, updated {len(rep.updated)}, removed {len(rep.removed)}, "
            f"unchanged {len(rep.unchanged)}"
        )
        for p in rep.problems:
            click.echo(f"problem: {p}", err=True)
    sys.exit(0 if rep.ok else 1)


@registry.command("compat")
@click.argument("ident", metavar="ID")
@click.option("--peft", "peft_v", default=None, help="peft version (default: installed).")
@click.option("--transformers", "tf_v", default=None, help="transformers version (default: installed).")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_compat(ident: str, peft_v: str | None, tf_v: str | None, registry_path: str | None, as_json: bool) -> None:
    """Will ID (or ID@revision) load cleanly with these peft / transformers versions, and why?

    Exit code: 0 clean, 1 broken or unknown.
    """
    ans = open_registry(registry_path).compat(ident, peft=peft_v, transformers=tf_v)
    if as_json:
        emit_json(ans.to_json())
    else:
        click.echo(f"{ans.adapter}@{ans.revision}: {ans.verdict} with peft {ans.peft}, transformers {ans.transformers}")
        for r in ans.reasons:
            click.echo(f"  - {r}")
        if ans.hint:
            click.echo(f"next: {ans.hint}")
    sys.exit(0 if ans.loads_cleanly else 1)


COMMANDS = [registry]
