"""``loradoc check-load``."""

from __future__ import annotations

import sys

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json, progress_bar, recorded_note


@click.command("check-load")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory with weights. " + BASE_DEFAULT)
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option(
    "--certificate",
    "certificate",
    default=None,
    help="Write the certificate here (default: the registry's data directory, keyed by the files' sha256).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --certificate file.")
@click.option("--allow-pickle", is_flag=True, help="Read a pickle adapter_model.bin (torch weights_only=True).")
@click.option("--record", is_flag=True, help="Record the certificate in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def check_load_cmd(
    adapter: str,
    base: str,
    device: str,
    certificate: str | None,
    overwrite: bool,
    allow_pickle: bool,
    record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Really load BASE's weights and ADAPTER with peft (CUDA when present, else CPU) and certify the result.

    Exit code 0 only when every check passes.
    """
    from loradoc import workflows

    base = base_for(adapter, base, registry_path, weights=True)
    with progress_bar("check-load", as_json) as progress:
        done = workflows.check_load(
            adapter,
            base,
            device=device,
            certificate=certificate,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            record=record,
            registry=registry_path,
            progress=progress,
        )
    cert = done.certificate
    recorded_note(done.recorded)
    if as_json:
        emit_json({**cert.data, "certificate_path": str(cert.path)})
    else:
        from loradoc.cli.render import next_after_check, render_certificate

        render_certificate(cert)
        click.echo(f"next: {next_after_check(adapter, base, cert.passed)}")
    sys.exit(0 if cert.passed else 1)


COMMANDS = [check_load_cmd]
