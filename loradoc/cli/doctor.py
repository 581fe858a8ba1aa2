"""``loradoc doctor``."""

from __future__ import annotations

import os
import sys

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json, recorded_note


@click.command()
@click.argument("adapter")
@click.option(
    "--base", "base", default=None, help="Local base directory (config.json) or a shipped base id. " + BASE_DEFAULT
)
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report on stdout.")
@click.option("--fast", is_flag=True, help="Static analysis only: no torch import, cached/shipped base profile.")
@click.option("--endpoint", default=None, help="Hub endpoint for REPO@REV adapters (default: $HF_ENDPOINT).")
@click.option("--offline", is_flag=True, help="REPO@REV adapters: answer from the cache only (as HF_HUB_OFFLINE=1).")
@click.option("--allow-pickle", is_flag=True, help="Read a pickle adapter_model.bin (torch weights_only=True).")
@click.option("--no-data", is_flag=True, help="Skip the checks that read tensor data (untrained, NaN/Inf).")
@click.option("--record", is_flag=True, help="Write the result into the adapter's manifest and the registry.")
@REGISTRY_OPT
def doctor(
    adapter: str,
    base: str,
    as_json: bool,
    fast: bool,
    endpoint: str | None,
    offline: bool,
    allow_pickle: bool,
    no_data: bool,
    record: bool,
    registry_path: str | None,
) -> None:
    """Diagnose ADAPTER (a directory, HF cache snapshot, or REPO[@REV]) against BASE.

    Exit code: 0 healthy, 1 repairable or broken, 2 bad input.
    """
    from loradoc import workflows

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by loradoc.hub.pull for REPO@REV adapters
    base = base_for(adapter, base, registry_path)
    done = workflows.diagnose(
        adapter,
        base,
        fast=fast,
        endpoint=endpoint,
        allow_pickle=allow_pickle,
        read_data=not no_data,
        record=record,
        registry=registry_path,
    )
    recorded_note(done.recorded)
    if as_json:
        emit_json(done.diagnosis.to_json())
    else:
        from loradoc.cli.render import render_diagnosis

        render_diagnosis(done.diagnosis, adapter=adapter, base=base)
    sys.exit(0 if done.healthy else 1)


COMMANDS = [doctor]
