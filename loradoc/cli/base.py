"""``loradoc base``: the shipped bases and their module profiles."""

from __future__ import annotations

import click

from loradoc.cli._output import emit_json


@click.group()
def base() -> None:
    """Base models: shipped bases and their module profiles."""


@base.command("list")
@click.option("--json", "as_json", is_flag=True)
def base_list(as_json: bool) -> None:
    """List the shipped bases."""
    from loradoc.model.profiles import resolve_base, shipped_bases

    rows = []
    for repo_id in shipped_bases():
        src = resolve_base(repo_id)
        prov = src.provenance or {}
        rows.append({"id": repo_id, "source_kind": prov.get("source_kind"), "config": str(src.config_path)})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:<32} {r['source_kind'] or ''}")


@base.command("profile")
@click.argument("base_spec", metavar="BASE")
@click.option("--json", "as_json", is_flag=True)
def base_profile(base_spec: str, as_json: bool) -> None:
    """Build the module profile of BASE under the installed transformers and cache it (for doctor --fast).

    For a shipped base, says whether the build differs from the shipped profile (a drift) and where."""
    from loradoc.model.profiles import build_and_cache

    p, path, drift = build_and_cache(base_spec)
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
        "cached_at": str(path),
        "drift_from_shipped": drift,
    }
    if as_json:
        emit_json(summary)
        return
    for k, v in summary.items():
        click.echo(f"{k:<22} {v}")


COMMANDS = [base]
