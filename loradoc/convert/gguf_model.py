"""``loradoc convert gguf``: base + LoRA adapter -> the merged *text* model as one GGUF file, in one fused pass.

For every text tensor of the base checkpoint, in row chunks: read, upcast to float32, add ``scale * B @ A`` when
the adapter adapts it (the same float32 arithmetic as peft's ``merge_and_unload``, with ``B @ A`` rounded once from
its exact value as in ``convert merged``: :class:`~loradoc.convert.delta.ExactDelta`), apply llama.cpp's per-tensor
rules (Gemma 3 norm +1, vocabulary rows, F32 for norms and vectors) and convert to the output type with gguf-py's
own routines; then write it. No merged checkpoint ever touches the disk and memory stays bounded by the chunk size.
Tensors that the adapter does not touch and whose type does not change are copied byte for byte.

The metadata (architecture keys, tokenizer) is what llama.cpp's ``convert_hf_to_gguf.py`` writes for
Gemma4ForConditionalGeneration / Gemma4ForCausalLM (``gemma4``) and Gemma3ForConditionalGeneration /
Gemma3ForCausalLM (``gemma3``): the text model only. Vision / audio towers are not written (``mmproj`` is not
supported yet) and tower LoRAs are reported as not included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..outputs import guard_outputs
from ..progress import Progress
from ..safetensors_io import SafetensorsHeader, TensorInfo
from .delta import ExactDelta
from .gguf_io import (
    AdapterLoras,
    LoraPair,
    PlannedTensor,
    atomic_output,
    check_float,
    collect_loras,
    iter_row_chunks,
    make_writer,
    open_base,
    quantize_chunk,
    read_adapter_f32,
    require_healthy,
    rows_and_cols,
    text_hparams,
    write_gguf,
)
from .gguf_names import OUTTYPES, TensorNamer, check_outtype, gguf_arch_for, is_tower_tensor, output_qtype
from .gguf_tokenizer import add_tokenizer, read_tokenizer

_IGNORED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


@dataclass
class GgufResult:
    out: Path
    arch: str
    outtype: str
    tensors: int
    bytes: int
    seconds: float
    adapter: str | None = None
    merged_modules: int = 0
    not_included: list[str] = field(default_factory=list)  # adapter tensors not in the text GGUF (towers)
    skipped_base_tensors: int = 0  # base tower tensors (vision / audio / projector) not written
    vocab_size: int = 0
    tokenizer: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "arch": self.arch,
            "outtype": self.outtype,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "adapter": self.adapter,
            "merged_modules": self.merged_modules,
            "not_included": self.not_included,
            "skipped_base_tensors": self.skipped_base_tensors,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------------------------------------
# architecture metadata (what llama.cpp's Gemma3Model / Gemma4Model.set_gguf_parameters write)


def _rope(hp: dict[str, Any]) -> dict[str, Any]:
    rp = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
    return rp if isinstance(rp, dict) else {}


def _full_head_dim(hp: dict[str, Any]) -> int:
    hd = hp.get("global_head_dim")
    if hd is None:
        per_layer = hp.get("per_layer_config") or {}
        types = hp.get("layer_types") or []
        for idx, lc in per_layer.items():
            i = int(idx)
            if i < len(types) and types[i] == "full_attention" and isinstance(lc, dict) and "head_dim" in lc:
                hd = lc["head_dim"]
                break
    return int(hd if hd is not None else hp["head_dim"])


def _full_kv_heads(hp: dict[str, Any]) -> int | None:
    n = hp.get("num_global_key_value_heads")
    if n is None:
        per_layer = hp.get("per_layer_config") or {}
        types = hp.get("layer_types") or []
        for idx, lc in per_layer.items():
            i = int(idx)
            if i < len(types) and types[i] == "full_attention" and isinstance(lc, dict) and "num_key_value_heads" in lc:
                n = lc["num_key_value_heads"]
                break
    return n


def add_arch_metadata(w: Any, arch: str, hp: dict[str, Any], file_type: Any) -> None:
    import gguf

    n_layers = int(hp["num_hidden_layers"])
    rope = _rope(hp)
    full = rope.get("full_attention", rope) if isinstance(rope.get("full_attention", rope), dict) else {}
    sliding = rope.get("sliding_attention") or {}

    w.add_block_count(n_layers)
    w.add_context_length(int(hp.get("max_position_embeddings", 131072)))
    w.add_embedding_length(int(hp["hidden_size"]))
    if not (arch == "gemma4" and hp.get("use_double_wide_mlp")):  # gemma4 double-wide: a per-layer array below
        w.add_feed_forward_length(int(hp["intermediate_size"]))
    w.add_head_count(int(hp.get("num_attention_heads", 8)))
    w.add_head_count_kv(int(hp.get("num_key_value_heads", 4)))
    rope_type = full.get("rope_type") or full.get("type")
    factor = full.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(full["original_max_position_embeddings"]))
    theta = full.get("rope_theta", hp.get("rope_theta", 1_000_000.0))
    w.add_rope_freq_base(float(theta))
    swa_theta = sliding.get("rope_theta", hp.get("rope_local_base_freq"))
    if swa_theta is not None:
        w.add_rope_freq_base_swa(float(swa_theta))
    w.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
    if hp.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(hp["final_logit_softcapping"]))
    if hp.get("sliding_window") and hp.get("sliding_window_pattern") != 1:
        w.add_sliding_window(int(hp["sliding_window"]))
    layer_types = list(hp.get("layer_types") or [])
    swa = [t == "sliding_attention" for t in layer_types]
    w.add_file_type(file_type)

    if arch == "gemma3":
        head_dim = int(hp.get("head_dim", 256))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if len(swa) == n_layers:  # llama.cpp would otherwise assume the 5:1 pattern
            w.add_sliding_window_pattern(swa)
        return

    # gemma4
    if hp.get("enable_moe_block") or hp.get("num_experts"):
        raise BadInputError(
            "Gemma 4 mixture-of-experts bases (26B-A4B) are not supported by loradoc's GGUF converter yet",
            hint="merge with `loradoc convert merged` and convert with llama.cpp's convert_hf_to_gguf.py",
        )
    n_shared = int(hp.get("num_kv_shared_layers") or 0)
    w.add_shared_kv_layers(n_shared)
    w.add_embedding_length_per_layer_input(int(hp.get("hidden_size_per_layer_input") or 0))
    w.add_sliding_window_pattern(swa)
    hd_full = _full_head_dim(hp)
    hd_swa = int(hp["head_dim"])
    w.add_key_length(hd_full)
    w.add_value_length(hd_full)
    w.add_key_length_swa(hd_swa)
    w.add_value_length_swa(hd_swa)
    if hp.get("use_double_wide_mlp"):
        n_ff = int(hp["intermediate_size"])
        first_shared = n_layers - n_shared
        w.add_feed_forward_length([n_ff if i < first_shared else 2 * n_ff for i in range(n_layers)])
    kv_full = _full_kv_heads(hp)
    kv_swa = hp.get("num_key_value_heads")
    if kv_full is not None and kv_swa is not None:
        w.add_head_count_kv([int(kv_swa) if s else int(kv_full) for s in swa])
    prf_swa = float(rope.get("partial_rotary_factor", 1.0)) if "full_attention" in rope else 1.0
    w.add_rope_dimension_count(hd_full)
    w.add_rope_dimension_count_swa(int(hd_swa * prf_swa))


def gemma4_rope_freqs(hp: dict[str, Any]) -> Any:
    """llama.cpp's generated ``rope_freqs.weight`` for Gemma 4's proportional RoPE on full-attention layers."""
    import numpy as np

    full = _rope(hp).get("full_attention") or {}
    hd = _full_head_dim(hp)
    prf = float(full.get("partial_rotary_factor", 1.0))
    n_rot = int(hd * prf / 2)
    n_unrot = int(hd / 2) - n_rot
    return np.array([1.0] * n_rot + [1e30] * n_unrot, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# the fused pass


def _producer(
    fd: int,
    header: SafetensorsHeader,
    info: TensorInfo,
    rows: int,
    qtype: str,
    shift: float,
    lora: LoraPair | None,
    load_lora: Callable[[LoraPair], tuple[Any, Any]],
) -> Callable[[], Iterator[Any]]:
    raw_ok = lora is None and shift == 0.0 and qtype == info.dtype

    def chunks() -> Iterator[Any]:
        if raw_ok:
            for _, data in iter_row_chunks(fd, header, info, rows=rows, raw=True):
                yield data
            return
        import numpy as np

        product = None
        scale = np.float32(0.0)
        if lora is not None:
            a_np, b_np = load_lora(lora)
            # embedding LoRA: delta = (B @ A).T, so the embedding's rows are columns of A: rows of A.T @ B.T
            product = ExactDelta(a_np.T, b_np.T) if lora.embedding else ExactDelta(b_np, a_np)
            scale = np.float32(lora.scale)
        for r0, chunk in iter_row_chunks(fd, header, info, rows=rows):
            if shift:
                chunk += shift
            if product is not None:
                n = chunk.shape[0]
                delta = product.rows(slice(r0, r0 + n)).reshape(chunk.shape)
                np.multiply(delta, scale, out=delta)
                np.add(chunk, delta, out=chunk)
                del delta
            yield quantize_chunk(chunk, qtype)

    return chunks


def convert_gguf(
    adapter: str | None,
    base: str,
    out: str | os.PathLike[str],
    *,
    outtype: str = "bf16",
    mmproj: str | os.PathLike[str] | None = None,
    check_health: bool = True,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> GgufResult:
    """Write the merged text model of ``base`` + ``adapter`` (None: the base alone) as a GGUF file at ``out``.

    ``outtype``: f32 | f16 | bf16 | q8_0. The adapter must be healthy (``loradoc doctor``) unless
    ``check_health`` is False. ``progress(done, total, tensor_name)`` is called after each tensor."""
    import gguf

    t0 = time.perf_counter()
    outtype = check_outtype(outtype)
    out = Path(out)
    if mmproj is not None:
        raise BadInputError(
            "--mmproj is not supported yet: loradoc writes the text model only",
            hint="for the vision/audio projector run llama.cpp's convert_hf_to_gguf.py --mmproj on the base "
            "(tower LoRAs need a merged checkpoint: `loradoc convert merged`)",
        )
    ckpt = open_base(base)
    arch = gguf_arch_for(ckpt.config, str(ckpt.directory / "config.json"))
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out} is a directory", hint="pass the path of the .gguf file to write")
    for f in ckpt.files:
        if out.resolve() == f.resolve():
            raise BadInputError(f"{out} is an input file", hint="write the GGUF somewhere else")

    snapshot = None
    loras = AdapterLoras([])
    if adapter is not None:
        from ..snapshot import open_snapshot

        snapshot = open_snapshot(adapter)
    guard_outputs(
        [("--out", out)],
        adapter=snapshot.directory if snapshot else None,
        base=ckpt.directory,
        overwrite=overwrite,
    )
    if adapter is not None:
        if check_health:
            snapshot = require_healthy(adapter, base).snapshot
        assert snapshot is not None
        loras = collect_loras(snapshot)

    hp = text_hparams(ckpt, arch)
    n_layers = int(hp["num_hidden_layers"])
    namer = TensorNamer(arch, n_layers)
    tok = read_tokenizer(ckpt.directory, arch, int(hp["vocab_size"]) if hp.get("vocab_size") else None)
    n_vocab = len(tok)

    # which base tensor each LoRA adapts
    from ..layout import address_of

    lora_for: dict[str, LoraPair] = {}
    for pair in loras.pairs:
        g = namer.name_for_address(address_of(pair.module))
        if g is None:
            raise BadInputError(
                f"adapter module {pair.module} has no tensor in llama.cpp's {arch} text model",
                hint="run `loradoc doctor` on the adapter; LoRAs on the output head of tied-embedding bases "
                "cannot be converted",
            )
        pair.gguf_name = g
        lora_for[g] = pair

    # full weights saved with the adapter (peft's save_embedding_layers) replace the base's, as a peft load does
    replace: dict[str, str] = {}
    if loras.full_weights and (snapshot is None or snapshot.header is None):
        raise BadInputError(
            "the adapter carries full weights in a pickle file", hint="convert it to safetensors first (loradoc repair)"
        )
    for module, key in loras.full_weights.items():
        g = namer.name_for_address(address_of(module))
        if g is None:
            raise BadInputError(
                f"adapter weight {key} has no tensor in llama.cpp's {arch} text model", hint="run `loradoc doctor`"
            )
        replace[g] = key

    plan: list[PlannedTensor] = []
    fds: dict[Path, int] = {}
    skipped = 0
    unmapped: list[str] = []
    adapter_fh = open(snapshot.weights_path, "rb") if snapshot is not None else None  # noqa: SIM115

    def load_lora(pair: LoraPair) -> tuple[Any, Any]:
        assert snapshot is not None
        return read_adapter_f32(snapshot, pair.a_key, adapter_fh), read_adapter_f32(snapshot, pair.b_key, adapter_fh)

    try:
        if arch == "gemma4":
            freqs = gemma4_rope_freqs(hp)
            plan.append(PlannedTensor("rope_freqs.weight", freqs.shape, "F32", lambda f=freqs: iter([f]), "generated"))
        used: set[str] = set()
        used_full: set[str] = set()
        # A tied base (no lm_head tensor) whose embedding or output head the adapter changes is written untied,
        # as the PeftModel computes it: token_embd gets the embedding LoRA, output.weight the lm_head LoRA.
        untie = not any(n.endswith("lm_head.weight") for n in ckpt.tensors) and (
            "token_embd.weight" in lora_for or "output.weight" in lora_for
        )

        def check_lora(lora: LoraPair, hf_name: str, info: TensorInfo) -> None:
            assert snapshot is not None
            a_shape = snapshot.tensors[lora.a_key].shape
            b_shape = snapshot.tensors[lora.b_key].shape
            have = (a_shape[1], b_shape[0]) if lora.embedding else (b_shape[0], a_shape[1])
            if len(info.shape) != 2 or tuple(info.shape) != have:
                raise BadInputError(
                    f"LoRA on {lora.module} has shape {list(have)} but the base tensor {hf_name} is {list(info.shape)}",
                    hint="the adapter was trained on a different base: run `loradoc doctor`",
                )

        for hf_name, (header, info) in ckpt.tensors.items():
            if is_tower_tensor(hf_name):
                skipped += 1
                continue
            if hf_name.endswith(_IGNORED_SUFFIXES):
                continue
            g = namer.gguf_name(hf_name)
            if g is None:
                unmapped.append(hf_name)
                continue
            check_float(hf_name, info, header.path)
            shape = info.shape
            rows = rows_and_cols(info.shape)[0]
            if g in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
                if shape[0] < n_vocab:
                    raise BadInputError(
                        f"{hf_name} has {shape[0]} rows but the tokenizer has {n_vocab} tokens",
                        hint="the tokenizer files do not belong to this checkpoint",
                    )
                rows = n_vocab
                shape = (n_vocab, *shape[1:])
            if g in replace:
                assert snapshot is not None and snapshot.header is not None
                sub = snapshot.header.tensors[replace[g]]
                if sub.shape != info.shape:
                    raise BadInputError(
                        f"the adapter's {replace[g]} has shape {list(sub.shape)} but the base's {hf_name} is "
                        f"{list(info.shape)} (a resized vocabulary?)",
                        hint="merge it with peft and convert the merged checkpoint together with its tokenizer",
                    )
                check_float(replace[g], sub, snapshot.weights_path)
                header, info = snapshot.header, sub
                used_full.add(g)
            if header.path not in fds:
                fds[header.path] = os.open(header.path, os.O_RDONLY)
            shift = namer.norm_shift(hf_name)
            targets = [g, "output.weight"] if (untie and g == "token_embd.weight") else [g]
            for name in targets:
                lora = lora_for.get(name)
                if lora is not None:
                    used.add(name)
                    check_lora(lora, hf_name, info)
                qtype = output_qtype(name, shape, outtype)
                producer = _producer(fds[header.path], header, info, rows, qtype, shift, lora, load_lora)
                plan.append(PlannedTensor(name, shape, qtype, producer, hf_name))
        if unmapped:
            raise BadInputError(
                f"{len(unmapped)} text tensors of the base have no llama.cpp {arch} name, e.g. {unmapped[0]}",
                hint="this checkpoint variant is not supported by loradoc's GGUF converter",
            )
        missing = sorted((set(lora_for) - used) | (set(replace) - used_full))
        if missing:
            raise BadInputError(
                f"the adapter adapts {missing[0]} but the base checkpoint has no such tensor",
                hint="the adapter was trained on a different base: run `loradoc doctor`",
            )
        names = [t.name for t in plan]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise BadInputError(
                f"two checkpoint tensors map to {sorted(dupes)[0]}", hint="the checkpoint mixes two layouts"
            )

        ftype = getattr(gguf.LlamaFileType, OUTTYPES[outtype][0])
        with atomic_output(out, overwrite=overwrite) as tmp:
            w = make_writer(arch)
            w.add_type(gguf.GGUFType.MODEL)
            name = ckpt.directory.name
            if snapshot is not None:
                name = f"{name} + {snapshot.directory.name}"
            w.add_name(name)
            add_arch_metadata(w, arch, hp, ftype)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            add_tokenizer(w, ckpt.directory, tok)
            if snapshot is not None:
                w.add_string("loradoc.adapter", snapshot.label)
                w.add_uint32("loradoc.merged_modules", len(loras.pairs))
            size = write_gguf(w, tmp, plan, progress)
    finally:
        for fd in fds.values():
            os.close(fd)
        if adapter_fh is not None:
            adapter_fh.close()
    notes = list(tok.notes)
    if untie:
        notes.append(
            "the adapter changes the tied embedding / output head: written untied (token_embd.weight and "
            "output.weight), as the PeftModel computes it (peft's merge_and_unload would change both)"
        )
    if loras.tower_keys:
        notes.append(
            f"{len(loras.tower_keys)} tower LoRA tensors are not included: a text GGUF has no vision/audio tower"
        )
    return GgufResult(
        out=out,
        arch=arch,
        outtype=outtype,
        tensors=len(plan),
        bytes=size,
        seconds=time.perf_counter() - t0,
        adapter=snapshot.label if snapshot is not None else None,
        merged_modules=len(loras.pairs),
        not_included=list(loras.tower_keys),
        skipped_base_tensors=skipped,
        vocab_size=n_vocab,
        tokenizer=tok.model,
        notes=notes,
    )
