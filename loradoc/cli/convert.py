"""``loradoc convert``: merged, gguf, gguf-lora, mlx-lm."""

from __future__ import annotations

import click

from loradoc.cli._output import BASE_DEFAULT, REGISTRY_OPT, base_for, emit_json, progress_bar


@click.group()
def convert() -> None:
    """Merged checkpoints and GGUF files (merged model, or a LoRA adapter for llama-server --lora)."""


def _run(
    kind: str,
    adapter: str,
    base: str,
    out: str,
    dtype: str | None,
    record: bool,
    registry_path: str | None,
    as_json: bool,
    **options: object,
) -> None:
    """Convert through the workflow (recording the artifact when asked), then print the result: JSON, or a summary
    with every note and every tensor that could not go in."""
    from loradoc import workflows

    with progress_bar("merge" if kind == "merged" else kind, as_json) as progress:
        done = workflows.convert(
            kind, adapter, base, out, dtype=dtype, record=record, registry=registry_path, progress=progress, **options
        )  # type: ignore[arg-type]
    d = done.result.to_json()
    if as_json:
        emit_json(d)
        return
    merged = d.get("merged", d.get("merged_modules", 0))
    n_merged = len(merged) if isinstance(merged, list | dict) else int(merged or 0)
    click.echo(f"wrote {out} ({done.format}; {n_merged} modules merged)" if kind != "gguf-lora" else f"wrote {out}")
    for note in d.get("notes", []):
        click.echo(f"note: {note}")
    for key in d.get("not_included", []) or []:
        click.echo(f"not included: {key}")
    from loradoc.cli.render import next_after_convert

    click.echo(f"next: {next_after_convert(kind, out)}")


@convert.command("merged")
@click.argument("adapter")
@click.option("--base", "base", default=None, help="Local base directory with weights. " + BASE_DEFAULT)
@click.option("--out", "out", required=True, help="Output directory (must not exist unless --overwrite).")
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option(
    "--shard-size",
    default="5GB",
    show_default=True,
    help="Maximum shard size as Hugging Face reads it (1GB = 10^9 bytes), e.g. 2GB, 500MB or 4GiB.",
)
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
    base = base_for(adapter, base, registry_path, weights=True)
    from loradoc.convert.shards import parse_shard_size

    size = parse_shard_size(shard_size)
    _run("merged", adapter, base, out, dtype, record, registry_path, as_json, shard_size=size, overwrite=overwrite)


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
    base = base_for(adapter, base, registry_path, weights=True)
    _run("gguf", adapter, base, out, outtype, record, registry_path, as_json, mmproj=mmproj, overwrite=overwrite)


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
    base = base_for(adapter, base, registry_path)
    _run("gguf-lora", adapter, base, out, None, record, registry_path, as_json, overwrite=overwrite)


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
    from loradoc import workflows

    if not workflows.is_mlx_adapter(adapter):
        base = base_for(adapter, base, registry_path)
    result = workflows.convert_mlx_lm(adapter, base, out, overwrite=overwrite)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"wrote {result.out} ({result.direction}, {result.tensors} tensors, rank {result.rank}, "
               f"scale {result.scale})")  # fmt: skip
    for n in result.notes:
        click.echo(f"note: {n}")


COMMANDS = [convert]
