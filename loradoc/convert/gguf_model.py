"""``loradoc convert gguf``: base + LoRA adapter -> the merged *text* model as one GGUF file, in one fused pass.

Every architecture llama.cpp's converter supports: the architecture knowledge (tensor names, hyper-parameters,
tokenizer, per-tensor transforms such as Q/K permutes, norm offsets, vocabulary slices, splits and fusions) is
llama.cpp's own converter class for the base (``gguf_llama``), run on lazy tensors whose data is the merged weight
``W + scale * B @ A`` computed in float32 (the same arithmetic as peft's ``merge_and_unload``) and cast once to the
output type. Tensors llama.cpp passes through unchanged are merged, cast and written in row chunks straight from
the safetensors file (memory does not grow with the largest tensor; untouched tensors of unchanged type are copied
byte for byte); the others are computed by llama.cpp's code one tensor at a time. No merged checkpoint touches the
disk; the output appears atomically.

With ``mmproj``, the vision / audio towers and projector (tower LoRAs merged) are written as llama.cpp's
projector GGUF by llama.cpp's own mmproj class (Gemma 3, Gemma 4, Qwen2-VL, ...), the same way; without it, tower
LoRAs are reported as not included. A tied base whose embedding or head the adapter changes is written untied,
as the PeftModel computes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.convert.gguf_io import (
    AdapterLoras,
    LoraPair,
    PlannedTensor,
    atomic_output,
    check_float,
    collect_loras,
    open_base,
    read_adapter_f32,
    require_healthy,
    rows_and_cols,
    write_gguf,
)
from loradoc.convert.gguf_names import QUANTIZED, base_towers, check_outtype, is_tower_tensor
from loradoc.errors import BadInputError, MissingFileError
from loradoc.io.outputs import guard_outputs
from loradoc.io.safetensors import TensorInfo
from loradoc.progress import Progress

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
    mmproj: str | None = None  # the projector GGUF written beside the text model (--mmproj)

    def to_json(self) -> dict[str, Any]:
        return {
            "mmproj": self.mmproj,
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
# the fused pass


def text_weights(ckpt: Any, towers: dict[str, str] | None = None) -> dict[Any, str]:
    """Layout-independent module address -> checkpoint key of its weight (text model only; ``towers``: the base
    profile's, else tower names decide)."""
    from loradoc.model.layout import address_of

    out: dict[Any, str] = {}
    for name in ckpt.tensors:
        if name.endswith(".weight") and not is_tower_tensor(name, towers):
            out.setdefault(address_of(name[: -len(".weight")], towers), name)
    return out


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

    The architecture knowledge (names, hyper-parameters, tokenizer, per-tensor transforms) is llama.cpp's own
    converter class for the base (``gguf_llama``); loradoc supplies the merged tensors and writes the file.
    ``outtype``: f32 | f16 | bf16 | q8_0 (written directly), or a llama.cpp quantization (q4_k_m, q5_k_m, q3_k_m,
    q6_k, q4_0, ...: the fused bf16 GGUF, then llama.cpp's own quantizer, ``llama_model_quantize`` from
    llama-cpp-python; the intermediate file is removed). The adapter must be healthy (``loradoc doctor``) unless
    ``check_health`` is False. ``progress(done, total, tensor_name)`` is called after each tensor."""
    from loradoc.convert.gguf_llama import MergedSource, converter_class, planned, prepare
    from loradoc.model.layout import address_of

    t0 = time.perf_counter()
    outtype = check_outtype(outtype)
    out = Path(out)
    if outtype in QUANTIZED:
        return _quantized(adapter, base, out, outtype, check_health, progress, t0, mmproj, overwrite)
    mm_out = Path(mmproj) if mmproj is not None else None
    if mm_out is not None and mm_out.resolve() == out.resolve():
        raise BadInputError("--mmproj names the same file as --out", hint="write the projector to its own .gguf")
    ckpt = open_base(base)
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out} is a directory", hint="pass the path of the .gguf file to write")
    adapter_dir = None
    if adapter is not None:
        from loradoc.io.snapshot import open_snapshot

        adapter_dir = open_snapshot(adapter).directory
    outputs = [("--out", out)] + ([("--mmproj", mm_out)] if mm_out is not None else [])
    guard_outputs(outputs, adapter=adapter_dir, base=ckpt.directory, overwrite=overwrite)

    converter_class(ckpt.config, str(ckpt.directory / "config.json"))  # refuse what llama.cpp cannot convert
    if not any((ckpt.directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise MissingFileError(
            f"base directory {ckpt.directory} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
            hint="copy the tokenizer files of the base model into the base directory (a GGUF embeds its tokenizer)",
        )
    snapshot = None
    loras = AdapterLoras([])
    if adapter is not None:
        from loradoc.io.snapshot import open_snapshot

        snapshot = require_healthy(adapter, base).snapshot if check_health else open_snapshot(adapter)
    bt = base_towers(ckpt.directory)  # the towers from the base's profile (its structure), not from names
    if snapshot is not None:
        loras = collect_loras(snapshot, towers=mm_out is not None, base_towers=bt.towers)

    weights = text_weights(ckpt, bt.towers)
    has_head = any(n.endswith("lm_head.weight") for n in ckpt.tensors)
    embed_key = next((k for a, k in weights.items() if a.layer is None and a.local == "embed_tokens"), None)
    lora_for: dict[str, LoraPair] = {}
    head_lora: LoraPair | None = None
    for pair in loras.pairs:
        addr = address_of(pair.module, bt.towers)
        key = weights.get(addr)
        if key is None and addr.layer is None and addr.local == "lm_head" and not has_head and embed_key:
            head_lora = pair  # the output head of a tied base: written untied below
            continue
        if key is None:
            raise BadInputError(
                f"adapter module {pair.module} has no weight in the base checkpoint",
                hint="the adapter was trained on a different base: run `loradoc doctor`",
            )
        _check_lora(snapshot, pair, key, ckpt.tensors[key][1])
        lora_for[key] = pair

    # full weights saved with the adapter (peft's save_embedding_layers) replace the base's, as a peft load does
    replace: dict[str, tuple[Any, Any]] = {}
    if loras.full_weights and (snapshot is None or snapshot.header is None):
        raise BadInputError(
            "the adapter carries full weights in a pickle file", hint="convert it to safetensors first (loradoc repair)"
        )
    for module, akey in loras.full_weights.items():
        key = weights.get(address_of(module, bt.towers))
        if key is None:
            raise BadInputError(
                f"adapter weight {akey} has no tensor in the base checkpoint", hint="run `loradoc doctor`"
            )
        assert snapshot is not None and snapshot.header is not None
        sub = snapshot.header.tensors[akey]
        if sub.shape != ckpt.tensors[key][1].shape:
            raise BadInputError(
                f"the adapter's {akey} has shape {list(sub.shape)} but the base's {key} is "
                f"{list(ckpt.tensors[key][1].shape)} (a resized vocabulary?)",
                hint="merge it with peft and convert the merged checkpoint together with its tokenizer",
            )
        check_float(akey, sub, snapshot.weights_path)
        replace[key] = (snapshot.header, sub)

    adapter_fh = open(snapshot.weights_path, "rb") if snapshot is not None else None  # noqa: SIM115

    def load_lora(pair: LoraPair) -> tuple[Any, Any]:
        assert snapshot is not None
        return read_adapter_f32(snapshot, pair.a_key, adapter_fh), read_adapter_f32(snapshot, pair.b_key, adapter_fh)

    for key, (header, info) in ckpt.tensors.items():
        if key in lora_for:
            check_float(key, info, header.path)
    name = ckpt.directory.name if snapshot is None else f"{ckpt.directory.name} + {snapshot.directory.name}"
    source = MergedSource(ckpt, lora_for, load_lora, replace)
    sources = [source]
    try:
        prep = prepare(ckpt, source, outtype, model_name=name)
        missing = sorted(k for k in (*lora_for, *replace) if k not in prep.used)
        if missing:
            raise BadInputError(
                f"the adapter changes {missing[0]}, which llama.cpp's {prep.arch} model does not read",
                hint="a LoRA on a tensor llama.cpp drops cannot be converted; `loradoc convert merged` can",
            )
        plan = planned(prep, source)
        untie = head_lora is not None or (embed_key is not None and not has_head and embed_key in (*lora_for, *replace))
        if untie:
            assert embed_key is not None
            plan = _untied_head(plan, prep, source, embed_key, head_lora)
        w = prep.writer
        if snapshot is not None:
            w.add_string("loradoc.adapter", snapshot.label)
            w.add_uint32("loradoc.merged_modules", len(loras.pairs))
        mm_plan: list[PlannedTensor] = []
        if mm_out is not None:  # planned before anything is written: a refusal leaves no file behind
            mm_lora = _lora_map(ckpt, loras.tower_pairs, snapshot, towers=True, base_towers=bt.towers)
            mm_source = MergedSource(ckpt, mm_lora, load_lora)
            sources.append(mm_source)
            mm_prep = prepare(ckpt, mm_source, _MMPROJ_TYPE.get(outtype, "f16"), model_name=name, mmproj=True)
            missing = sorted(k for k in mm_lora if k not in mm_prep.used)
            if missing:
                raise BadInputError(
                    f"the adapter changes {missing[0]}, which llama.cpp's mmproj ({mm_prep.arch}) does not read",
                    hint="a LoRA on a tensor llama.cpp drops cannot be converted; `loradoc convert merged` can",
                )
            mm_plan = planned(mm_prep, mm_source)
            if snapshot is not None:
                mm_prep.writer.add_string("loradoc.adapter", snapshot.label)
                mm_prep.writer.add_uint32("loradoc.merged_modules", len(loras.tower_pairs))
        total = len(plan) + len(mm_plan)

        def step(done: int, _total: int, what: str, offset: int = 0) -> None:
            if progress is not None:
                progress(offset + done, total, what)

        with atomic_output(out, overwrite=overwrite) as tmp:
            size = write_gguf(w, tmp, plan, step)
        if mm_out is not None:
            with atomic_output(mm_out, overwrite=overwrite) as tmp:
                write_gguf(mm_prep.writer, tmp, mm_plan, lambda d, t, what: step(d, t, what, len(plan)))
    finally:
        for src in sources:
            src.close()
        if adapter_fh is not None:
            adapter_fh.close()
    notes: list[str] = list(prep.notes)
    if bt.note:
        notes.append(bt.note)
    if untie:
        notes.append(
            "the adapter changes the tied embedding / output head: written untied (token_embd.weight and "
            "output.weight), as the PeftModel computes it (peft's merge_and_unload would change both)"
        )
    not_included = list(loras.tower_keys)
    if mm_out is not None:
        merged_keys = {k for p in loras.tower_pairs for k in (p.a_key, p.b_key)}
        not_included = [k for k in not_included if k not in merged_keys]
        notes.append(
            f"mmproj {mm_out}: {len(mm_plan)} tensors, {len(loras.tower_pairs)} tower LoRAs merged "
            f"({_MMPROJ_TYPE.get(outtype, 'f16')})"
        )
    if not_included:
        notes.append(
            f"{len(not_included)} tower LoRA tensors are not included: a text GGUF has no vision/audio tower"
            + ("" if mm_out is not None else " (--mmproj writes them into the projector GGUF)")
        )
    tok_model = _kv(w, "tokenizer.ggml.model")
    tokens = _kv(w, "tokenizer.ggml.tokens")
    return GgufResult(
        out=out,
        arch=prep.arch,
        outtype=outtype,
        tensors=len(plan),
        bytes=size,
        seconds=time.perf_counter() - t0,
        adapter=snapshot.label if snapshot is not None else None,
        merged_modules=len(loras.pairs),
        not_included=not_included,
        mmproj=str(mm_out) if mm_out is not None else None,
        skipped_base_tensors=sum(1 for n in ckpt.tensors if is_tower_tensor(n, bt.towers)),
        vocab_size=len(tokens) if isinstance(tokens, list) else 0,
        tokenizer=str(tok_model or ""),
        notes=notes,
    )


#: --outtype -> the mmproj's type (llama.cpp's --mmproj default is f16; K-quants are for the text model)
_MMPROJ_TYPE = {"f32": "f32", "f16": "f16", "q8_0": "q8_0"}


def _lora_map(
    ckpt: Any, pairs: list[LoraPair], snapshot: Any, *, towers: bool, base_towers: dict[str, str] | None = None
) -> dict[str, LoraPair]:
    """Checkpoint key of the weight each LoRA adapts (any layout: by module address)."""
    from loradoc.model.layout import address_of

    weights: dict[Any, str] = {}
    for key in ckpt.tensors:
        if key.endswith(".weight") and (towers or not is_tower_tensor(key, base_towers)):
            weights.setdefault(address_of(key[: -len(".weight")], base_towers), key)
    out: dict[str, LoraPair] = {}
    for pair in pairs:
        key = weights.get(address_of(pair.module, base_towers))
        if key is None:
            raise BadInputError(
                f"adapter module {pair.module} has no weight in the base checkpoint",
                hint="the adapter was trained on a different base: run `loradoc doctor`",
            )
        _check_lora(snapshot, pair, key, ckpt.tensors[key][1])
        check_float(key, ckpt.tensors[key][1], ckpt.tensors[key][0].path)
        out[key] = pair
    return out


def _kv(writer: Any, key: str) -> Any:
    for kv in writer.kv_data:
        if key in kv:
            return kv[key].value
    return None


def _check_lora(snapshot: Any, lora: LoraPair, hf_name: str, info: TensorInfo) -> None:
    assert snapshot is not None
    a_shape = snapshot.tensors[lora.a_key].shape
    b_shape = snapshot.tensors[lora.b_key].shape
    have = (a_shape[1], b_shape[0]) if lora.embedding else (b_shape[0], a_shape[1])
    if len(info.shape) != 2 or tuple(info.shape) != have:
        raise BadInputError(
            f"LoRA on {lora.module} has shape {list(have)} but the base tensor {hf_name} is {list(info.shape)}",
            hint="the adapter was trained on a different base: run `loradoc doctor`",
        )


def _untied_head(
    plan: list[PlannedTensor], prep: Any, source: Any, embed_key: str, head_lora: LoraPair | None
) -> list[PlannedTensor]:
    """A tied base whose embedding or head the adapter changes, written untied as the PeftModel computes it:
    token_embd keeps the embedding's LoRA, a new output.weight = the base embedding (+ the lm_head LoRA)."""
    if any(t.name == "output.weight" for t in plan):
        raise BadInputError(
            "the base is tied but llama.cpp's converter writes an output head already", hint="convert it untied"
        )
    emb = next((t for t in plan if t.name == "token_embd.weight"), None)
    if emb is None:
        raise BadInputError("llama.cpp's model has no token_embd.weight to untie", hint="`loradoc convert merged`")
    qtype = emb.qtype
    rows = rows_and_cols(emb.shape)[0]

    def chunks() -> Iterator[Any]:  # the base's embedding (not the adapter's full weight) + the head's LoRA
        yield from source.chunks(embed_key, rows, qtype, lora=head_lora, base_only=True)

    out = list(plan)
    out.insert(plan.index(emb) + 1, PlannedTensor("output.weight", emb.shape, qtype, chunks, embed_key))
    return out


def _quantized(
    adapter: str | None,
    base: str,
    out: Path,
    outtype: str,
    check_health: bool,
    progress: Progress | None,
    t0: float,
    mmproj: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> GgufResult:
    """The fused bf16 GGUF in a hidden temporary file beside ``out``, quantized by llama.cpp into ``out``
    (atomically: the output appears complete or not at all; the intermediate is always removed)."""
    import tempfile

    adapter_dir = None
    if adapter is not None:
        from loradoc.io.snapshot import open_snapshot

        adapter_dir = open_snapshot(adapter).directory
    guard_outputs([("--out", out)], adapter=adapter_dir, base=Path(base).expanduser(), overwrite=overwrite)

    from loradoc.errors import EnvironmentProblem

    try:
        import llama_cpp
    except ImportError:
        raise EnvironmentProblem(
            f"--outtype {outtype} uses llama.cpp's quantizer, which needs llama-cpp-python",
            hint="pip install 'loradoc[quantize]' (llama-cpp-python), or write --outtype bf16 and run llama-quantize",
        ) from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}")
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out} is a directory", hint="pass the path of the .gguf file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".bf16.tmp", dir=out.parent)
    os.close(fd)
    mid = Path(name)
    try:

        def step(done: int, total: int, what: str) -> None:
            if progress is not None:
                progress(done, total + 1, what)

        res = convert_gguf(
            adapter, base, mid, outtype="bf16", mmproj=mmproj, check_health=check_health, progress=step, overwrite=True
        )
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = max(1, min(os.cpu_count() or 1, 8))
        with atomic_output(out, overwrite=overwrite) as tmp:
            rc = llama_cpp.llama_model_quantize(str(mid).encode(), str(tmp).encode(), params)
            if rc != 0:
                raise BadInputError(
                    f"llama.cpp's quantizer failed on the fused GGUF (code {rc})",
                    hint="write --outtype bf16 and run llama-quantize to see llama.cpp's message",
                )
        if progress is not None:
            progress(res.tensors + 1, res.tensors + 1, f"quantize {outtype}")
    finally:
        mid.unlink(missing_ok=True)
    res.out = out
    res.outtype = outtype
    res.bytes = out.stat().st_size
    res.seconds = time.perf_counter() - t0
    res.notes.append(f"quantized to {outtype} by llama.cpp (llama_model_quantize) from the fused bf16 GGUF")
    return res
