"""Conversions: merged safetensors, GGUF, LoRA GGUF (recorded as artifacts), and mlx-lm's adapter layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, LoradocError
from loradoc.progress import Progress
from loradoc.workflows.recording import RegistryRef, artifact_format, record_convert, registry_of

#: the conversions recorded as artifacts
KINDS = ("merged", "gguf", "gguf-lora")


@dataclass
class Converted:
    kind: str
    out: Path
    format: str  # how the registry describes the output: safetensors-bf16, gguf-q8_0, gguf-lora
    result: Any  # MergeResult | GgufResult | GgufLoraResult
    recorded: Path | None = None


def convert(
    kind: str,
    adapter: str,
    base: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    shard_size: int | None = None,
    mmproj: str | None = None,
    overwrite: bool = False,
    endpoint: str | None = None,
    record: bool = False,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> Converted:
    """Convert ``adapter`` (+ ``base``) to ``kind`` at ``out``; ``dtype``: the merged checkpoint's dtype, the GGUF's
    outtype (default bf16), none for gguf-lora. With ``record``, the output is recorded as an artifact of the
    adapter's current revision (its format and sha256). Every converter writes under a temporary name and renames
    into place at the end: a failed or cancelled conversion leaves ``out`` as it was and records nothing."""
    from loradoc.workflows.source import local_adapter

    local = local_adapter(adapter, endpoint=endpoint)
    if kind == "merged":
        from loradoc.convert.merge import merge_adapter

        dtype = dtype or "bf16"
        extra: dict[str, Any] = {"shard_size": shard_size} if shard_size else {}
        result = merge_adapter(local, base, Path(out), dtype=dtype, progress=progress, overwrite=overwrite, **extra)
    elif kind == "gguf":
        from loradoc.convert.gguf_model import convert_gguf

        dtype = dtype or "bf16"
        result = convert_gguf(local, base, out, outtype=dtype, mmproj=mmproj, progress=progress, overwrite=overwrite)
    elif kind == "gguf-lora":
        from loradoc.convert.gguf_lora import convert_gguf_lora

        dtype = None
        result = convert_gguf_lora(local, base, out, progress=progress, overwrite=overwrite)
    else:
        raise BadInputError(f"unknown conversion {kind}", hint="choose merged, gguf or gguf-lora")
    done = Converted(kind, Path(out), artifact_format(kind, dtype), result)
    if record:
        with registry_of(registry) as reg:
            done.recorded = record_convert(reg, adapter, kind, out, dtype)
    return done


def base_model_type(base: str) -> str | None:
    """The ``model_type`` of a base directory, its config.json or a shipped id (None: none readable)."""
    from loradoc.runtimes import read_base

    b = read_base(base)
    return b.model_type if b else None


def is_mlx_adapter(adapter: str | Path) -> bool:
    """An mlx-lm adapter directory (``adapters.safetensors``), which converts back to peft."""
    from loradoc.convert.mlx_lm import MLX_WEIGHTS

    return (Path(adapter) / MLX_WEIGHTS).is_file()


def convert_mlx_lm(adapter: str, base: str | None, out: str | Path, *, overwrite: bool = False) -> Any:
    """peft -> mlx-lm's layout (``base``'s model_type picks mlx-lm's module names), or an mlx-lm adapter
    (``adapters.safetensors``) back to peft (``base`` optional). Tensors are transposed, never changed."""
    from loradoc.convert.mlx_lm import mlx_to_peft, peft_to_mlx

    if is_mlx_adapter(adapter):
        mt = base_model_type(base) if base else None
        return mlx_to_peft(adapter, out, model_type=mt, overwrite=overwrite)
    if base is None:
        raise BadInputError(f"{adapter}: converting to mlx-lm needs the base", hint="pass --base with a config.json")
    mt = base_model_type(base)
    if not mt:
        raise LoradocError(f"{base}: config.json names no model_type", hint="pass --base with a config.json")
    return peft_to_mlx(adapter, out, model_type=mt, overwrite=overwrite, base=base)
