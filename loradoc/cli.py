"""The ``loradoc`` command line: a thin shell over the core.

Parse, call one core function, print (human or ``--json``). Exceptions are mapped to exit codes in one place,
:func:`main`, via :func:`loradoc.errors.exit_code_for`. Heavy libraries are imported by the commands that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from loradoc.errors import LoradocError, exit_code_for
from loradoc.progress import Progress


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _registry(path: str | None) -> Any:
    from pathlib import Path

    from loradoc.registry import Registry

    return Registry(Path(path) if path else None)


BASE_DEFAULT = "Default: the base the registry knows for ADAPTER, else the one its adapter_config.json names."


def _base_for(adapter: str, base: str | None, registry_path: str | None, *, weights: bool = False) -> str:
    """--base, or the base the registry / adapter_config.json knows for ADAPTER (said on stderr)."""
    if base:
        return base
    from loradoc.workflows import choose_base

    try:
        reg = _registry(registry_path)
    except LoradocError:
        reg = None
    choice = choose_base(adapter, base, reg, weights=weights)
    click.echo(f"base: {choice.base} (from {choice.why}; pass --base to choose another)", err=True)
    return choice.base


@contextlib.contextmanager
def _progress_bar(label: str, quiet: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr for a long job (the one progress protocol: ``(done, total, what)``).

    Shown only on a terminal and never with --json; None otherwise (the job then reports to nobody)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[what]}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None, what="")

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total or None, what=str(what)[-48:])

    with bar:
        yield update


REGISTRY_OPT = click.option(
    "--registry", "registry_path", default=None, help="SQLite index to use (default: $LORADOC_REGISTRY or user data)."
)


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
    from loradoc.diagnose.doctor import HEALTHY, diagnose

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by loradoc.hub.pull for REPO@REV adapters
    base = _base_for(adapter, base, registry_path)
    d = diagnose(adapter, base, fast=fast, endpoint=endpoint, allow_pickle=allow_pickle, read_data=not no_data)
    if record:
        manifest = _registry(registry_path).add_from_diagnosis(d)
        click.echo(f"recorded in {manifest}", err=True)
    if as_json:
        _emit_json(d.to_json())
    else:
        from loradoc.render import render_diagnosis

        render_diagnosis(d, adapter=adapter, base=base)
    sys.exit(0 if d.verdict == HEALTHY else 1)


# --------------------------------------------------------------------------------------------------- repair
@cli.command()
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
            _emit_json(rows)
        else:
            for r in rows:
                flag = "default" if r["default"] else "on request"
                click.echo(f"{r['name']:<24} {flag:<11} answers {','.join(r['answers']):<18} {r['description']}")
        return
    if not adapter:
        raise click.UsageError("missing argument ADAPTER (or pass --list-passes)")
    from pathlib import Path

    from loradoc.diagnose.doctor import spec_of
    from loradoc.model.profiles import get_profile, resolve_base
    from loradoc.repair.passes import build_plan, dry_load_judge

    base = _base_for(adapter, base, registry_path)
    from loradoc.io.snapshot import open_snapshot

    consent = allow_pickle or "pickle-to-safetensors" in (*only, *also)
    snap = open_snapshot(adapter, endpoint=endpoint, allow_pickle=consent)
    source = resolve_base(base)
    if out and not plan_only:  # before any work: --out must not touch the inputs
        from loradoc.io.outputs import guard_outputs

        guard_outputs([("--out", out)], adapter=snap.directory, base=source.directory, overwrite=overwrite)
    spec = spec_of(snap)
    profile = get_profile(source, spec=spec)
    judge = dry_load_judge(source, spec) if verify == "full" else None
    plan = build_plan(
        snap, profile, only=list(only) or None, also=list(also) or None, peft_version=peft_version, judge=judge
    )
    if plan_only:
        if as_json:
            _emit_json({"plan": plan.to_json(), "written": False})
        else:
            from loradoc.render import render_plan

            render_plan(plan)
        sys.exit(0 if not any(f.severity == "error" for f in plan.after) else 1)
    if not out:
        raise click.UsageError("--out DIR is required (or use --plan)")
    from loradoc.repair.apply import apply_plan

    with _progress_bar("repair", as_json) as progress:
        result = apply_plan(plan, Path(out), source, verify=verify, overwrite=overwrite, progress=progress)
    if record:
        manifest = _registry(registry_path).record_repair(result.report, result.out)
        click.echo(f"recorded in {manifest}", err=True)
    if as_json:
        _emit_json({"out": str(result.out), "verdict": result.verdict, "report": result.report})
    else:
        from loradoc.render import render_plan

        render_plan(plan)
        click.echo(
            f"wrote {result.out} ({len(plan.kept())} tensors kept, {len(plan.dropped())} dropped, "
            f"{len(plan.renamed())} renamed); output verdict: {result.verdict or 'not verified'}"
        )
        if result.ok:
            click.echo(f"next: loradoc check-load {result.out} --base {base}")
    sys.exit(0 if result.ok else 1)


# --------------------------------------------------------------------------------------------------- check-load
@cli.command("check-load")
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
    from pathlib import Path

    from loradoc.verify.checkload import check_load

    base = _base_for(adapter, base, registry_path, weights=True)
    cert = check_load(
        adapter,
        base,
        device=device,
        certificate=Path(certificate) if certificate else None,
        allow_pickle=allow_pickle,
        overwrite=overwrite,
        registry=registry_path,
    )
    if record:
        manifest = _registry(registry_path).record_certificate(cert.data, path=cert.path)
        click.echo(f"recorded in {manifest}", err=True)
    if as_json:
        _emit_json({**cert.data, "certificate_path": str(cert.path)})
    else:
        from loradoc.render import next_after_check, render_certificate

        render_certificate(cert)
        click.echo(f"next: {next_after_check(adapter, base, cert.passed)}")
    sys.exit(0 if cert.passed else 1)


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
@REGISTRY_OPT
def example(directory: str, as_json: bool, adapter: str, registry_path: str | None) -> None:
    """Build tiny real-architecture bases and seed-adapter replicas in DIRECTORY, record each adapter with its
    tiny base in the registry (so --base can be left out), then diagnose one."""
    from pathlib import Path

    from loradoc.demo.builder import ADAPTER_SPECS, build_example
    from loradoc.diagnose.doctor import diagnose

    if adapter not in ADAPTER_SPECS:
        raise click.BadParameter(f"choose one of: {', '.join(ADAPTER_SPECS)}", param_hint="--adapter")
    root = Path(directory)
    ex = build_example(root)
    reg = _registry(registry_path)
    pairs: dict[str, dict[str, str]] = {}
    shown = None
    for name, spec in ADAPTER_SPECS.items():
        a_dir, b_dir = ex.adapters[name].resolve(), ex.bases[spec.base].resolve()
        d = diagnose(str(a_dir), str(b_dir))
        reg.add_from_diagnosis(d)
        pairs[name] = {"adapter": str(a_dir), "base": str(b_dir), "verdict": d.verdict}
        if name == adapter:
            shown = d
    assert shown is not None
    if as_json:
        _emit_json(
            {
                "root": str(root),
                "adapters": {k: v["adapter"] for k, v in pairs.items()},
                "bases": {k: str(v) for k, v in ex.bases.items()},
                "pairs": pairs,
                "registry": str(reg.path),
                "diagnosis": shown.to_json(),
            }
        )
        return
    click.echo(f"built {len(ex.bases)} tiny bases and {len(ex.adapters)} adapters under {root}/")
    click.echo(f"recorded each adapter with its tiny base in the registry ({reg.path}):")
    for name, row in pairs.items():
        click.echo(f"  {name:<34} base {Path(row['base']).name:<18} {row['verdict']}")
    click.echo(f"\n{adapter}:")
    from loradoc.render import render_diagnosis

    render_diagnosis(shown, adapter=pairs[adapter]["adapter"], base=pairs[adapter]["base"])


# --------------------------------------------------------------------------------------------------- registry
@cli.group()
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
    reg = _registry(registry_path)
    if show_bases:
        brows = reg.list_bases()
        if as_json:
            _emit_json([r.to_json() for r in brows])
            return
        for b in brows:
            rel = f"{b.relation} of {b.of}" if b.relation else ""
            click.echo(f"{b.id:<48} {b.architecture:<34} {rel}")
        return
    rows = reg.list(base=base_id, status=status, runtime=runtime)
    if as_json:
        _emit_json({"adapters": [r.to_json() for r in rows], "bases": [b.to_json() for b in reg.list_bases()]})
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

    m = _registry(registry_path).show(ident)
    if as_json:
        _emit_json(m.to_json())
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
    from loradoc.diagnose.doctor import diagnose

    base = _base_for(adapter, base, registry_path)
    d = diagnose(adapter, base, fast=fast, endpoint=endpoint)
    path = _registry(registry_path).add_from_diagnosis(d)
    if as_json:
        _emit_json({"manifest": str(path), "verdict": d.verdict})
    else:
        click.echo(f"{d.verdict}: recorded in {path}")


@registry.command("sync")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_sync(registry_path: str | None, as_json: bool) -> None:
    """Re-index the manifest directories (incremental). Malformed manifests are reported; the others load."""
    rep = _registry(registry_path).sync()
    if as_json:
        _emit_json(rep.to_json())
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
    ans = _registry(registry_path).compat(ident, peft=peft_v, transformers=tf_v)
    if as_json:
        _emit_json(ans.to_json())
    else:
        click.echo(f"{ans.adapter}@{ans.revision}: {ans.verdict} with peft {ans.peft}, transformers {ans.transformers}")
        for r in ans.reasons:
            click.echo(f"  - {r}")
        if ans.hint:
            click.echo(f"next: {ans.hint}")
    sys.exit(0 if ans.loads_cleanly else 1)


# --------------------------------------------------------------------------------------------------- convert
@cli.group()
def convert() -> None:
    """Merged checkpoints and GGUF files (merged model, or a LoRA adapter for llama-server --lora)."""


@convert.command("merged")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory with weights. " + BASE_DEFAULT)
@click.option("--out", "out", required=True, help="Output directory (must not exist unless --overwrite).")
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option("--shard-size", default="5GB", show_default=True, help="Maximum shard size, e.g. 2GB or 500MB.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--record", is_flag=True, help="Record the output as an artifact in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def convert_merged(
    adapter: str,
    base: str,
    out: str,
    dtype: str,
    shard_size: str,
    overwrite: bool,
    record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Merge ADAPTER into BASE tensor by tensor (W + scale*B@A in fp32) and write a sharded checkpoint."""
    from pathlib import Path

    from loradoc.convert.merge import merge_adapter

    base = _base_for(adapter, base, registry_path, weights=True)
    with _progress_bar("merge", as_json) as progress:
        result = merge_adapter(
            adapter, base, Path(out), dtype=dtype, shard_size=_size(shard_size), progress=progress, overwrite=overwrite
        )
    _finish_convert(result, "merged", dtype, adapter, out, record, registry_path, as_json)


def _finish_convert(
    result: Any,
    kind: str,
    dtype: str | None,
    adapter: str,
    out: str,
    record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Record the artifact when asked, then print the result (JSON, or a summary with every note and every tensor
    that could not go in)."""
    from loradoc.workflows import artifact_format, record_convert

    fmt = artifact_format(kind, dtype)
    if record:
        record_convert(_registry(registry_path), adapter, kind, out, dtype)
    d = result.to_json()
    if as_json:
        _emit_json(d)
        return
    merged = d.get("merged", d.get("merged_modules", 0))
    n_merged = len(merged) if isinstance(merged, list | dict) else int(merged or 0)
    click.echo(f"wrote {out} ({fmt}; {n_merged} modules merged)" if kind != "gguf-lora" else f"wrote {out}")
    for note in d.get("notes", []):
        click.echo(f"note: {note}")
    for key in d.get("not_included", []) or []:
        click.echo(f"not included: {key}")
    from loradoc.render import next_after_convert

    click.echo(f"next: {next_after_convert(kind, out)}")


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 5GB or 500MB") from None


@convert.command("gguf")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory with weights and tokenizer. " + BASE_DEFAULT)
@click.option("--out", "out", required=True, help="Output .gguf file.")
@click.option(
    "--outtype",
    type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q3_k_m", "q6_k", "q4_0"]),
    default="bf16",
    show_default=True,
    help="q4_k_m and the other quantizations: llama.cpp's quantizer (needs llama-cpp-python)",
)
@click.option(
    "--mmproj",
    "mmproj",
    default=None,
    help="Also write the vision/audio towers, tower LoRAs merged, as llama.cpp's projector GGUF (mtmd) here.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--record", is_flag=True, help="Record the output as an artifact in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def convert_gguf_cmd(
    adapter: str,
    base: str,
    out: str,
    outtype: str,
    mmproj: str | None,
    overwrite: bool,
    record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """The merged text model of BASE + ADAPTER as GGUF, in one fused pass (no intermediate checkpoint)."""
    from loradoc.convert.gguf_model import convert_gguf

    base = _base_for(adapter, base, registry_path, weights=True)
    with _progress_bar("gguf", as_json) as progress:
        result = convert_gguf(
            adapter, base, out, outtype=outtype, mmproj=mmproj, progress=progress, overwrite=overwrite
        )
    _finish_convert(result, "gguf", outtype, adapter, out, record, registry_path, as_json)


@convert.command("gguf-lora")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory (config.json is enough). " + BASE_DEFAULT)
@click.option("--out", "out", required=True, help="Output .gguf file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--record", is_flag=True, help="Record the output as an artifact in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def convert_gguf_lora_cmd(
    adapter: str, base: str, out: str, overwrite: bool, record: bool, registry_path: str | None, as_json: bool
) -> None:
    """ADAPTER as a llama.cpp LoRA GGUF (llama-server --lora); tensors that cannot go in are listed, not dropped
    silently."""
    from loradoc.convert.gguf_lora import convert_gguf_lora

    base = _base_for(adapter, base, registry_path)
    with _progress_bar("gguf-lora", as_json) as progress:
        result = convert_gguf_lora(adapter, base, out, progress=progress, overwrite=overwrite)
    _finish_convert(result, "gguf-lora", None, adapter, out, record, registry_path, as_json)


@convert.command("mlx-lm")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Base directory or config.json (its model_type picks mlx-lm's "
              "module names). " + BASE_DEFAULT)  # fmt: skip
@click.option("--out", "out", required=True, help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def convert_mlx_lm_cmd(adapter: str, base: str | None, out: str, overwrite: bool, registry_path: str | None,
                       as_json: bool) -> None:  # fmt: skip
    """ADAPTER (peft) in mlx-lm's adapter layout (mlx_lm.generate --adapter-path OUT), or an mlx-lm adapter
    (adapters.safetensors) back to peft. Tensors are transposed, never changed: the round trip is bit-identical."""
    from pathlib import Path

    from loradoc.convert.mlx_lm import MLX_WEIGHTS, mlx_to_peft, peft_to_mlx

    if (Path(adapter) / MLX_WEIGHTS).is_file():
        mt = _model_type(base) if base else None
        result = mlx_to_peft(adapter, out, model_type=mt, overwrite=overwrite)
    else:
        base = _base_for(adapter, base, registry_path)
        mt = _model_type(base)
        if not mt:
            raise LoradocError(f"{base}: config.json names no model_type", hint="pass --base with a config.json")
        result = peft_to_mlx(adapter, out, model_type=mt, overwrite=overwrite)
    if as_json:
        _emit_json(result.to_json())
        return
    click.echo(f"wrote {result.out} ({result.direction}, {result.tensors} tensors, rank {result.rank}, "
               f"scale {result.scale})")  # fmt: skip
    for n in result.notes:
        click.echo(f"note: {n}")


def _model_type(base: str) -> str | None:
    from loradoc.runtimes import read_base

    b = read_base(base)
    return b.model_type if b else None


@cli.command("runtimes")
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
    from loradoc.runtimes import FLAGS, LOADS, check_runtimes, fill_placeholders

    try:
        base = _base_for(adapter, base, registry_path)
    except LoradocError:
        base = None
        click.echo("base: none found (architecture-dependent rules answer unknown; pass --base)", err=True)
    report = check_runtimes(adapter, base)
    if record:
        _registry(registry_path).record_runtimes(report.to_json())
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(f"{adapter}  (base: {report.base or 'unknown'}, {report.architecture or 'architecture unknown'})")
        for r in report.results:
            click.echo(f"  {r.name + ' ' + r.version:<18} {r.summary()}")
            fix = fill_placeholders(r.fix, adapter, base)
            if fix:
                click.echo(f"  {'':<18} fix: {fix}")
    if any(r.verdict not in (LOADS, FLAGS) for r in report.results):
        sys.exit(1)


# --------------------------------------------------------------------------------------------------- hub
@cli.command()
@click.argument("repo", metavar="REPO[@REVISION]")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT, then huggingface.co).")
@click.option("--base", "base", default=None, help="Diagnose against this base when recording (default: declared).")
@click.option("--no-record", is_flag=True, help="Do not record the pulled commit in the registry.")
@click.option("--cache-dir", default=None, help="huggingface_hub cache directory (default: its own).")
@click.option("--offline", is_flag=True, help="Answer from this endpoint's cache only (as HF_HUB_OFFLINE=1).")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def pull(
    repo: str,
    endpoint: str | None,
    base: str | None,
    no_record: bool,
    cache_dir: str | None,
    offline: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Fetch an adapter snapshot through the huggingface_hub cache, pinned to the commit its revision resolves to."""
    from loradoc.hub import pull as hub_pull
    from loradoc.io.snapshot import parse_source

    repo_id, rev = parse_source(repo)
    got = hub_pull(repo_id, rev, endpoint=endpoint, cache_dir=cache_dir, offline=offline)
    if got.from_cache:
        click.echo(f"note: offline: {got.spec} comes from the cache, not from the endpoint", err=True)
    recorded = None
    if not no_record:
        recorded = _record_pull(got, base, registry_path)
    if as_json:
        _emit_json({**got.to_json(), "recorded": str(recorded) if recorded else None})
    else:
        click.echo(f"{got.repo_id}@{got.commit_sha} -> {got.path}")
        if recorded:
            click.echo(f"recorded in {recorded}")


def _record_pull(got: Any, base: str | None, registry_path: str | None) -> Any:
    """Record the pulled commit: with a static diagnosis when the base is known here, else the bare revision."""
    from loradoc.errors import LoradocError
    from loradoc.io.adapter_config import load_adapter_config
    from loradoc.registry import record as R
    from loradoc.registry.schema import AdapterManifest, BaseRef

    reg = _registry(registry_path)
    declared = load_adapter_config(got.path).base_model
    target = base or declared
    if target:
        try:
            from loradoc.diagnose.doctor import diagnose
            from loradoc.model.profiles import get_profile

            get_profile(target, allow_build=False)
            d = diagnose(str(got.path), target, fast=True)
            return reg.add_from_diagnosis(d, repo_id=got.repo_id, revision=got.commit_sha)
        except LoradocError:
            pass

    def create() -> Any:
        return AdapterManifest(
            id=got.repo_id, repo_id=got.repo_id, base=BaseRef(declared or "unknown"), revisions=[], current=""
        )

    def change(m: Any) -> None:
        R.ensure_revision(m, commit=got.commit_sha, path=str(got.path), label_prefix="pulled")

    return reg.update(got.repo_id, change, create=create)


@cli.command()
@click.argument("directory", metavar="DIR")
@click.option("--repo", "repo", required=True, help="Hub repo id to push to.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--tag", default=None, help="Tag the new commit.")
@click.option(
    "--tag-existing",
    is_flag=True,
    help="With --tag: when there is nothing to publish, tag the existing commit that already holds DIR's files.",
)
@click.option("--message", "-m", default=None, help="Commit message.")
@click.option("--parent", "parent", default=None, help="Parent commit (default: the revision the repair started from).")
@click.option("--force", is_flag=True, help="Push without a passing certificate (said loudly in the card).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the commit (operations, card diff) and write nothing.")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT, then huggingface.co).")
@click.option("--no-record", is_flag=True, help="Do not record the pushed commit in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def publish(
    directory: str,
    repo: str,
    create_pr: bool,
    tag: str | None,
    tag_existing: bool,
    message: str | None,
    parent: str | None,
    force: bool,
    plan_only: bool,
    endpoint: str | None,
    no_record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Push a repaired, certified adapter DIR to REPO as ONE commit with the card, certificate and repair report.

    Exit code: 0 pushed (the new commit, read back from the Hub), 4 nothing to publish (REPO's head already holds
    exactly these files: no commit, no record, no tag unless --tag-existing), 2 bad input / refused (stale parent,
    unverified files, existing tag), 3 network."""
    from pathlib import Path

    from loradoc.errors import NothingToDo
    from loradoc.hub import NothingToPublishError, plan_publish
    from loradoc.hub import publish as hub_publish

    plan = plan_publish(
        Path(directory),
        repo,
        parent_commit=parent,
        create_pr=create_pr,
        tag=tag,
        message=message,
        force=force,
        endpoint=endpoint,
        tag_existing=tag_existing,
        registry=registry_path,
    )
    if plan.warning:
        click.secho(plan.warning, fg="red", bold=True, err=True)
    if plan_only:
        if as_json:
            _emit_json({"plan": plan.to_json(), "written": False})
        else:
            data = plan.to_json()
            click.echo(f"commit to {plan.repo_id} (parent {plan.parent_commit or 'none'}, {plan.parent_source})")
            for op in data.get("operations", []):
                click.echo(f"  {op.get('op', op.get('kind', ''))} {op.get('path')} {op.get('size', '')}")
            if data.get("card_diff"):
                click.echo(data["card_diff"])
            if plan.nothing_to_publish:
                click.echo(f"nothing to publish: {plan.directory} equals {plan.repo_id}@{plan.head_commit}")
        if plan.nothing_to_publish:
            sys.exit(NothingToDo.exit_code)  # what publish would exit with
        return
    try:
        result = hub_publish(plan, endpoint=endpoint)
    except NothingToPublishError as e:  # not a failure: say so on stdout (or as JSON), exit 4, record nothing
        if as_json:
            _emit_json({**e.to_json(), "recorded": None})
        else:
            click.echo(e.one_line())
        sys.exit(exit_code_for(e))
    if result.warning:
        click.secho(result.warning, fg="red", bold=True, err=True)
    recorded = None
    if not no_record:
        from loradoc.workflows import record_publish

        recorded = record_publish(_registry(registry_path), directory, result)
    if as_json:
        _emit_json({**result.to_json(), "recorded": str(recorded) if recorded else None})
    else:
        where = f"{result.commit_sha} as PR #{result.pr_num}" if result.pr_num else result.commit_sha
        click.echo(f"pushed {where} to {result.repo_id} (parent {result.parent_commit}): {result.commit_url}")
        if recorded:
            click.echo(f"recorded in {recorded}")


@registry.command("scan-hub")
@click.option("--base", "base", required=True, help="Base id whose adapters to audit (base_model:adapter:ID).")
@click.option("--limit", type=int, default=None)
@click.option("--concurrency", type=int, default=16, show_default=True)
@click.option("--endpoint", default=None)
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_scan_hub(
    base: str, limit: int | None, concurrency: int, endpoint: str | None, registry_path: str | None, as_json: bool
) -> None:
    """Audit every adapter of BASE on the Hub from adapter_config.json and the safetensors header alone."""
    from loradoc.hub import scan_hub

    with _progress_bar("scan-hub", as_json) as progress:
        res = scan_hub(base, limit=limit, endpoint=endpoint, concurrency=concurrency, progress=progress)
    reg = _registry(registry_path)
    for row in res.rows:
        if row.verdict is None:
            continue
        reg.add_from_diagnosis(
            {
                "verdict": row.verdict,
                "findings": row.findings,
                "mode": "static",
                "adapter": {"repo_id": row.repo_id, "commit": row.sha, "base_model": base, "tensors": row.tensors},
                "base": {"name": base},
            },
            repo_id=row.repo_id,
            revision=row.sha,
        )
    if as_json:
        _emit_json(res.to_json())
        return
    if res.profile_note:
        click.echo(f"note: {res.profile_note}", err=True)
    for row in res.rows:
        click.echo(f"{row.repo_id:<56} {row.verdict or 'error':<11} {row.error or ''}")
    click.echo(
        f"{len(res.rows)} adapters in {res.seconds:.1f} s; fetched {res.bytes_fetched} bytes "
        f"({res.weight_bytes_fetched} of {res.weight_bytes_total} weight bytes)"
    )


# --------------------------------------------------------------------------------------------------- tui
@cli.command()
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


# --------------------------------------------------------------------------------------------------- base
@cli.group()
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
        _emit_json(rows)
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
        _emit_json(summary)
        return
    for k, v in summary.items():
        click.echo(f"{k:<22} {v}")


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


if __name__ == "__main__":  # pragma: no cover
    main()
