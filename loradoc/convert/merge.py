"""``loradoc convert merged``: bake a LoRA adapter into its base checkpoint, streaming tensor by tensor.

What the output holds is what the *PeftModel* computes (peft loading the adapter onto the base), not what
``merge_and_unload`` happens to produce where the two differ (tied embeddings, see below):

- every base weight an adapter LoRA targets becomes ``W + scale * (B @ A)`` computed in float32 and rounded once to
  the output dtype, in peft's order, with ``B @ A`` itself rounded once from its exact value
  (:class:`~loradoc.convert.delta.ExactDelta`: a float32 BLAS matmul rounds differently per library, kernel and
  machine, which would make a bf16 output machine-dependent); ``scale`` is ``alpha / r`` (``alpha / sqrt(r)``
  with rslora), with ``rank_pattern`` / ``alpha_pattern`` resolved on the model's module name exactly as peft
  does; Conv1D targets are transposed (fan_in_fan_out; peft ignores the flag on nn.Linear and so does this);
  embedding LoRAs add ``(B @ A).T``;
- DoRA is merged with peft's formula: ``m / ||W + dW|| * (W + dW)``, the norm per output row for linear layers
  and per embedding dimension (over the whole vocabulary, two passes) for embeddings;
- ``lora_B.bias`` (lora_bias) is added, scaled, to the base bias; full tensors in the adapter (modules_to_save,
  ``bias="all"``, peft's saved ``base_layer.weight`` of targeted embeddings) replace the base tensor;
- tied input/output embeddings: if the adapter changes one of them (or both differently), the output is *untied*
  (``tie_word_embeddings: false`` and a separate ``lm_head.weight``), because the PeftModel applies the LoRA to one
  module only. peft's own ``merge_and_unload`` adds the delta to the shared tensor instead (changing the other
  module too); the result notes this. Identical changes to both (peft ``ensure_weight_tying``) stay tied;
- everything else, vision/audio towers included, is copied (cast when the dtype changes); tower LoRAs are merged
  into the tower weights (the merged model keeps its towers).

The adapter must be healthy (``loradoc doctor --fast`` verdict), the base a full-precision safetensors
checkpoint. Base tensor names may be in another layout than the adapter's keys: both are mapped to
layout-independent addresses (:mod:`loradoc.model.layout`), Gemma4ClippableLinear's ``.linear`` included.

Memory: tensors are read and written in chunks of ``COPY_CHUNK`` bytes and computed on in cache-sized row
blocks; peak memory is a constant plus the LoRA factors of one module, whatever the model size.

Output: ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` + index (shards of at most ``shard_size``
bytes, Hugging Face's decimal units and file names: :mod:`loradoc.convert.shards`), config/tokenizer/processor
files, ``loradoc-merge.json``; all written into a temp directory beside ``out``, fsync'd and renamed (a crash never
leaves a complete-looking ``out``).

The jobs, one module each: this one (the gates and the order of the steps); :mod:`~loradoc.convert.merge_plan`
(what happens to every output tensor; tied embeddings in :mod:`~loradoc.convert.merge_tied`);
:mod:`~loradoc.convert.merge_tensors` (the numerics of one tensor); :mod:`~loradoc.convert.shards` (shard sizes,
names and the index); :mod:`~loradoc.convert.merge_writer` (streaming the shards);
:mod:`~loradoc.convert.merge_files` (config, side files, ``loradoc-merge.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.convert.checkpoint import INDEX_NAME, QUANT_DTYPES, open_checkpoint, single_threaded_blas
from loradoc.convert.merge_files import (
    MANIFEST_NAME,
    build_manifest,
    copy_side_files,
    output_config,
    set_task_class,
    write_text,
)
from loradoc.convert.merge_plan import build_plan
from loradoc.convert.merge_tensors import AdapterTensors
from loradoc.convert.merge_writer import write_shards
from loradoc.convert.shards import DEFAULT_SHARD_SIZE, index_json, parse_shard_size, plan_shards, shard_name
from loradoc.errors import BadInputError
from loradoc.io.atomic import atomic_directory
from loradoc.io.hashing import sha256_file
from loradoc.io.snapshot import AdapterSnapshot, open_snapshot
from loradoc.model.profiles import BaseSource, get_profile, read_config, resolve_base
from loradoc.model.repacks import full_precision_original

__all__ = ["MANIFEST_NAME", "MergeResult", "merge_adapter"]

DTYPES = {"bf16": "BF16", "bfloat16": "BF16", "f16": "F16", "fp16": "F16", "float16": "F16",
          "f32": "F32", "fp32": "F32", "float32": "F32"}  # fmt: skip

#: adapter_config fields that change what a LoRA computes in ways this merge does not reproduce.
_UNSUPPORTED_FIELDS = {
    "use_qalora": "QA-LoRA pools the input before lora_A",
    "use_bdlora": "block-diagonal LoRA",
    "layer_replication": "layer replication changes the model's structure",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "trainable_token_indices": "trainable tokens",
    "alora_invocation_tokens": "activated LoRA applies only after its invocation tokens",
    "arrow_config": "Arrow routing",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
}


# ----------------------------------------------------------------------------------------------------------
# result


@dataclass
class MergeResult:
    out: Path
    dtype: str  # safetensors dtype of the floats written: BF16 | F16 | F32
    adapter: str
    base: str
    merged: list[dict[str, Any]]  # one row per merged LoRA module
    replaced: list[dict[str, Any]]  # base tensors replaced by full adapter tensors
    tensors: list[dict[str, Any]]  # one row per output tensor
    files: list[dict[str, Any]]  # every file written
    untied: bool
    tokenizer_source: str  # "base" | "adapter" | "base+adapter-chat-template" | "none"
    notes: list[str]
    timings: dict[str, float]
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "dtype": self.dtype,
            "adapter": self.adapter,
            "base": self.base,
            "merged": self.merged,
            "replaced": self.replaced,
            "untied": self.untied,
            "tokenizer_source": self.tokenizer_source,
            "notes": self.notes,
            "files": self.files,
            "tensors": self.tensors,
            "timings": self.timings,
        }


# ----------------------------------------------------------------------------------------------------------
# entry point


def merge_adapter(
    adapter: str,
    base: str,
    out: Path,
    *,
    dtype: str = "bf16",
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    require_healthy: bool = True,
    allow_pickle: bool = False,
    hash_base: bool = True,
) -> MergeResult:
    """Merge ``adapter`` into the base checkpoint in directory ``base`` and write a full model to ``out``.

    ``dtype``: bf16 | f16 | f32, the dtype of every float tensor written (integer tensors are copied).
    ``shard_size``: bytes of tensor data per output shard (one ``model.safetensors`` when everything fits), or a
    size as Hugging Face reads it (``"5GB"`` = 5 * 10**9 bytes: :func:`loradoc.convert.shards.parse_shard_size`).
    ``progress(done_bytes, total_bytes, tensor_name)`` is called after each tensor is produced.
    ``require_healthy=False`` skips the doctor gate (every adapter tensor must still land on a base tensor).
    ``hash_base=False`` leaves the base weight files' sha256 out of ``loradoc-merge.json``. Otherwise they are
    taken from the same sequential read (on a side thread) unless already known: files in a Hugging Face cache are
    named by their sha256, and loradoc caches the digests it computed (keyed by path, size, mtime and inode), so
    only the first merge against a base pays for hashing it.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    out_dtype = parse_dtype(dtype)
    shard_bytes = parse_shard_size(shard_size)
    original = full_precision_original(str(base))
    if original and not Path(base).expanduser().exists():
        raise BadInputError(
            f"base {base} is a quantized repack; a merge needs the full-precision weights",
            hint=f"download the original {original} and pass its directory as --base",
        )
    source = resolve_base(str(base))
    if source.shipped:
        raise BadInputError(
            f"base {source.name} is a shipped base profile without weights; a merge needs the checkpoint",
            hint=f"download it (e.g. `hf download {source.name} --local-dir DIR`) and pass DIR as --base",
        )
    base_cfg, _ = read_config(source.config_path)
    snap = open_snapshot(adapter, allow_pickle=allow_pickle)
    _check_out(out, snap.directory, source.directory, overwrite)
    notes: list[str] = []
    _refuse_quantized(base_cfg, source, snap, notes)
    ckpt = open_checkpoint(source.directory)
    quant = sorted({i.dtype for f in ckpt.files for i in ckpt.headers[f].tensors.values()} & QUANT_DTYPES)
    if quant:
        raise BadInputError(
            f"base {source.directory} holds {quant[0]} weights (a quantized checkpoint)",
            hint=_original_hint(base_cfg, snap),
        )
    timings["open_s"] = time.perf_counter() - t_start

    t = time.perf_counter()
    from loradoc.diagnose.doctor import spec_of

    profile = get_profile(source, spec=spec_of(snap))
    if require_healthy:
        _require_healthy(snap, source, adapter, base)
    timings["doctor_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _refuse_unsupported(snap)
    reader = AdapterTensors(snap)
    plan = build_plan(snap, reader, profile, ckpt, base_cfg, out_dtype, notes)
    shards = [[plan.ops[i] for i in s] for s in plan_shards([op.nbytes for op in plan.ops], shard_bytes)]
    for i, ops in enumerate(shards):
        for op in ops:
            op.shard = i
    timings["plan_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        try:
            with single_threaded_blas():
                rows, files, base_hashes, hash_sources = write_shards(tmp, ckpt, reader, shards, progress, hash_base)
        finally:
            reader.close()
        timings["write_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if len(shards) > 1:
            text = index_json(
                {op.name: shard_name(op.shard, len(shards)) for op in plan.ops},
                total_size=sum(op.nbytes for op in plan.ops),
                total_parameters=sum(op.src.numel for op in plan.ops),
            )
            files.append(write_text(tmp / INDEX_NAME, text))
        new_cfg = output_config(base_cfg, out_dtype, plan.untied)
        set_task_class(new_cfg, profile, notes)
        files.append(write_text(tmp / "config.json", json.dumps(new_cfg, indent=2, sort_keys=True) + "\n"))
        copied, tok_source = copy_side_files(source.directory, snap.directory, tmp, notes)
        files.extend(copied)
        base_files = {f["name"]: f["sha256"] for f in copied if f["from"] == "base"}
        base_files.update(base_hashes)
        base_files["config.json"] = sha256_file(source.config_path)
        manifest = build_manifest(snap, source, profile, out_dtype, plan, files, base_files, tok_source, hash_sources)
        files.append(write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n"))
        timings["files_s"] = time.perf_counter() - t
        t = time.perf_counter()
    timings["publish_s"] = time.perf_counter() - t  # fsync of the tree + rename into place
    timings["total_s"] = time.perf_counter() - t_start
    return MergeResult(
        out=out,
        dtype=out_dtype,
        adapter=snap.label,
        base=str(source.directory),
        merged=plan.merged,
        replaced=plan.replaced,
        tensors=rows,
        files=files,
        untied=plan.untied,
        tokenizer_source=tok_source,
        notes=plan.notes,
        timings={k: round(v, 4) for k, v in timings.items()},
        manifest=manifest,
    )


# ----------------------------------------------------------------------------------------------------------
# checks


def parse_dtype(dtype: str) -> str:
    d = DTYPES.get(str(dtype).lower())
    if d is None:
        raise BadInputError(f"unknown output dtype {dtype!r}", hint="use bf16, f16 or f32")
    return d


def _check_out(out: Path, adapter_dir: Path, base_dir: Path, overwrite: bool) -> None:
    """--out must not be, contain or lie inside an input; an existing --out only with ``overwrite``."""
    from loradoc.io.outputs import guard_outputs

    guard_outputs([("--out", out)], adapter=adapter_dir, base=base_dir, overwrite=overwrite)


def _original_hint(base_cfg: dict[str, Any], snap: AdapterSnapshot) -> str:
    candidates = [snap.config.base_model, base_cfg.get("_name_or_path")]
    for c in candidates:
        if isinstance(c, str) and c:
            orig = full_precision_original(c)
            if orig:
                return f"download the full-precision original {orig} and pass its directory as --base"
    for c in candidates:
        if isinstance(c, str) and c and not Path(c).is_absolute():
            return f"download the full-precision original ({c}, bf16) and pass its directory as --base"
    return "pass the directory of the full-precision (bf16) original of this base as --base"


def _refuse_quantized(base_cfg: dict[str, Any], source: BaseSource, snap: AdapterSnapshot, notes: list[str]) -> None:
    q = base_cfg.get("quantization_config")
    if q is None:
        for sub in ("text_config",):
            sc = base_cfg.get(sub)
            if isinstance(sc, dict) and sc.get("quantization_config") is not None:
                q = sc["quantization_config"]
    if q is not None:
        method = q.get("quant_method", "quantized") if isinstance(q, dict) else "quantized"
        raise BadInputError(
            f"base {source.directory} is a {method} checkpoint; merging into quantized weights is not supported",
            hint=_original_hint(base_cfg, snap),
        )
    trained_on = snap.config.base_model
    if isinstance(trained_on, str) and trained_on:
        orig = full_precision_original(trained_on)
        if orig:
            notes.append(
                f"the adapter was trained on the quantized repack {trained_on}; it is merged into the "
                f"full-precision base given ({source.directory}), which should be {orig}"
            )


def _require_healthy(snap: AdapterSnapshot, source: BaseSource, adapter: str, base: str) -> None:
    from loradoc.diagnose.doctor import HEALTHY, REPAIRABLE, diagnose

    d = diagnose(str(snap.directory), source, fast=True, snapshot=snap)
    if d.verdict == HEALTHY:
        return
    codes = ", ".join(sorted({f.code for f in d.findings if f.severity == "error"})) or "peft load problems"
    if d.verdict == REPAIRABLE:
        hint = f"run `loradoc repair {adapter} --base {base} --out FIXED`, then merge FIXED"
    else:
        hint = f"run `loradoc doctor {adapter} --base {base}` to see why; `loradoc repair` fixes what it can"
    raise BadInputError(
        f"adapter {snap.label} is not healthy (doctor: {d.verdict}; {codes}); merging would bake that into the weights",
        hint=hint,
    )


def _refuse_unsupported(snap: AdapterSnapshot) -> None:
    cfg = snap.config
    if cfg.peft_type != "LORA":
        raise BadInputError(
            f"adapter {snap.label} is a {cfg.peft_type} adapter; merge supports LoRA (and DoRA)",
            hint="merge it with peft's merge_and_unload",
        )
    for name, what in _UNSUPPORTED_FIELDS.items():
        value = cfg.raw.get(name)
        if value not in (None, False, [], {}, "", 0):
            raise BadInputError(
                f"adapter {snap.label} uses {name} ({what}), which loradoc does not merge",
                hint="merge it with peft's merge_and_unload",
            )
