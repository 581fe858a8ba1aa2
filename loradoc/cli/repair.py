"""``loradoc repair``."""

from __future__ import annotations

import sys

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json, progress_bar, recorded_note


@click.command()
@click.argument("adapter", required=False)
@click.option(
    "--base", "base", default=None, help="Local base directory (config.json) or a shipped base id. " + BASE_DEFAULT
)
@click.option("--out", "out", default=None, help="Directory to write the repaired adapter to (must not exist).")
@click.option("--plan", "plan_only", is_flag=True, help="Print what would happen; write nothing.")
@click.option("--only", "only", multiple=True, help="Run exactly these passes (repeatable).")
@click.option("--also", "also", multiple=True, help="Run these passes on top of the default ones (repeatable).")
@click.option("--peft-version", default=None, help="Target peft version for drop-unsupported-fields.")
@click.option(
    "--verify",
    type=click.Choice(["full", "fast", "none"]),
    default="full",
    show_default=True,
    help="Re-run doctor on the output (full: real peft dry load).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--allow-pickle", is_flag=True, help="Read a pickle adapter_model.bin (torch weights_only=True).")
@click.option("--endpoint", default=None, help="Hub endpoint for REPO@REV adapters.")
@click.option("--list-passes", is_flag=True, help="List the repair passes and exit.")
@click.option("--record", is_flag=True, help="Record the repair lineage in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def repair(
    adapter: str | None,
    base: str,
    out: str | None,
    plan_only: bool,
    only: tuple[str, ...],
    also: tuple[str, ...],
    peft_version: str | None,
    verify: str,
    overwrite: bool,
    allow_pickle: bool,
    endpoint: str | None,
    list_passes: bool,
    record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Write a repaired copy of ADAPTER to --out (the input is never modified).

    By default the passes answering error findings run; warning passes (full-precision-base,
    pickle-to-safetensors, drop-tower-loras for tower LoRAs that load, ...) run only when named.
    Exit code: 0 when the output is healthy (or, with --plan, when it would be), 1 otherwise, 2 bad input.
    """
    from loradoc.repair.passes import describe_passes

    if list_passes:
        rows = describe_passes()
        if as_json:
            emit_json(rows)
        else:
            for r in rows:
                flag = "default" if r["default"] else "on request"
                click.echo(f"{r['name']:<24} {flag:<11} answers {','.join(r['answers']):<18} {r['description']}")
        return
    if not adapter:
        raise click.UsageError("missing argument ADAPTER (or pass --list-passes)")
    from loradoc import workflows
    from loradoc.cli.render import render_plan

    base = base_for(adapter, base, registry_path)
    planned = workflows.plan_repair(
        adapter,
        base,
        only=only,
        also=also,
        peft_version=peft_version,
        verify=verify,
        allow_pickle=allow_pickle,
        endpoint=endpoint,
        out=out if not plan_only else None,
        overwrite=overwrite,
    )
    plan = planned.plan
    if plan_only:
        if as_json:
            emit_json({"plan": plan.to_json(), "written": False})
        else:
            render_plan(plan)
        sys.exit(0 if planned.would_be_healthy else 1)
    if not out:
        raise click.UsageError("--out DIR is required (or use --plan)")
    with progress_bar("repair", as_json) as progress:
        done = workflows.apply_repair(
            planned, out, verify=verify, overwrite=overwrite, record=record, registry=registry_path, progress=progress
        )
    result = done.result
    recorded_note(done.recorded)
    if as_json:
        emit_json({"out": str(result.out), "verdict": result.verdict, "report": result.report})
    else:
        render_plan(plan)
        click.echo(
            f"wrote {result.out} ({len(plan.kept())} tensors kept, {len(plan.dropped())} dropped, "
            f"{len(plan.renamed())} renamed); output verdict: {result.verdict or 'not verified'}"
        )
        if result.ok:
            click.echo(f"next: loradoc check-load {result.out} --base {base}")
    sys.exit(0 if result.ok else 1)


COMMANDS = [repair]
