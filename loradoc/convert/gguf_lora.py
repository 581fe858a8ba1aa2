"""``loradoc convert gguf-lora``: a PEFT LoRA adapter -> a llama.cpp LoRA adapter GGUF.

What llama.cpp reads (``llama_adapter_lora_init``): ``general.type = adapter``, ``general.architecture`` equal to
the model's, ``adapter.type = lora``, ``adapter.lora.alpha`` (float32), and for every adapted base tensor
``<name>.lora_a`` (numpy shape (r, in), i.e. ggml ne [in, r]) and ``<name>.lora_b`` ((out, r)), not transposed,
except ``token_embd.weight`` whose lora_a is A transposed ((vocab, r)). It applies
``scale = adapter_scale * alpha / r`` with one global alpha and r from lora_b.

peft's scale can differ per module (``alpha_pattern`` / ``rank_pattern``) and is ``alpha / sqrt(r)`` with rslora;
llama.cpp has no such rules, so for every module whose peft scale differs from ``alpha / r`` the factor is folded
into lora_b (B * s_peft * r / alpha), which makes llama.cpp's rule give exactly peft's scale. Plain adapters
are written unchanged (float32), tensor for tensor what llama.cpp's ``convert_lora_to_gguf.py`` writes.

Tower LoRAs (vision / audio / projector) cannot go into a text model's adapter: they are listed in the result
(``not_included``), never dropped silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..outputs import guard_outputs
from ..progress import Progress
from .gguf_io import (
    PlannedTensor,
    atomic_output,
    collect_loras,
    make_writer,
    open_base,
    raw_text_config,
    read_adapter_f32,
    require_healthy,
    write_gguf,
)
from .gguf_names import TensorNamer, gguf_arch_for


@dataclass
class GgufLoraResult:
    out: Path
    arch: str
    alpha: float
    pairs: int
    tensors: int
    bytes: int
    seconds: float
    adapter: str = ""
    rescaled: dict[str, float] = field(default_factory=dict)  # gguf tensor -> factor folded into lora_b
    not_included: list[str] = field(default_factory=list)  # tower LoRA tensors (not in a text adapter)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "arch": self.arch,
            "alpha": self.alpha,
            "pairs": self.pairs,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "adapter": self.adapter,
            "rescaled": self.rescaled,
            "not_included": self.not_included,
            "notes": self.notes,
        }


def _same_as_base(snapshot: Any, key: str, ckpt: Any, namer: TensorNamer, gguf_name: str | None) -> bool:
    """Whether a full weight saved with the adapter equals the base's tensor (value for value, any float dtype)."""
    import numpy as np

    from .gguf_io import check_float, iter_row_chunks

    if gguf_name is None or snapshot.header is None:
        return False
    base_name = next((n for n in ckpt.tensors if namer.gguf_name(n) == gguf_name), None)
    if base_name is None:
        return False
    bh, bi = ckpt.tensors[base_name]
    ah, ai = snapshot.header, snapshot.header.tensors[key]
    if ai.shape != bi.shape:
        return False
    check_float(key, ai, ah.path)
    check_float(base_name, bi, bh.path)
    fa, fb = os.open(ah.path, os.O_RDONLY), os.open(bh.path, os.O_RDONLY)
    try:
        for (_, x), (_, y) in zip(iter_row_chunks(fa, ah, ai), iter_row_chunks(fb, bh, bi), strict=True):
            if not np.array_equal(x, y):
                return False
    finally:
        os.close(fa)
        os.close(fb)
    return True


def convert_gguf_lora(
    adapter: str,
    base: str,
    out: str | os.PathLike[str],
    *,
    check_health: bool = True,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> GgufLoraResult:
    """Write ``adapter`` as a llama.cpp LoRA GGUF for the text model of ``base`` (a local directory whose
    config.json names the architecture; weights are not read) at ``out``."""
    import gguf
    import numpy as np

    from ..layout import address_of
    from ..snapshot import open_snapshot

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out} is a directory", hint="pass the path of the .gguf file to write")
    ckpt = open_base(base)
    arch = gguf_arch_for(ckpt.config, str(ckpt.directory / "config.json"))
    snapshot = open_snapshot(adapter)
    guard_outputs([("--out", out)], adapter=snapshot.directory, base=ckpt.directory, overwrite=overwrite)
    if check_health:
        snapshot = require_healthy(adapter, base).snapshot
    loras = collect_loras(snapshot)
    if not loras.pairs:
        raise BadInputError(
            f"{snapshot.label} has no LoRA on the text model ({len(loras.tower_keys)} tower tensors only)",
            hint="a llama.cpp LoRA adapts the text model; tower LoRAs need a merged checkpoint",
        )
    hp = raw_text_config(ckpt)
    namer = TensorNamer(arch, int(hp["num_hidden_layers"]))
    cfg = snapshot.config
    alpha = float(cfg.lora_alpha) if cfg.lora_alpha is not None else 8.0
    n_vocab = None
    if any(p.embedding for p in loras.pairs):
        from .gguf_tokenizer import read_tokenizer

        n_vocab = len(read_tokenizer(ckpt.directory, arch, int(hp["vocab_size"]) if hp.get("vocab_size") else None))

    notes: list[str] = []
    for module, key in loras.full_weights.items():
        if not _same_as_base(snapshot, key, ckpt, namer, namer.name_for_address(address_of(module))):
            raise BadInputError(
                f"the adapter replaces {module}'s weight ({key} differs from the base): a llama.cpp LoRA adapter "
                "cannot carry full weights",
                hint="write a merged GGUF instead: `loradoc convert gguf`",
            )
        notes.append(f"{key} is identical to the base's tensor (peft's save_embedding_layers): not needed")

    plan: list[PlannedTensor] = []
    rescaled: dict[str, float] = {}
    fh = open(snapshot.weights_path, "rb")  # noqa: SIM115 - closed below
    try:
        for pair in loras.pairs:
            g = namer.name_for_address(address_of(pair.module))
            if g is None:
                raise BadInputError(
                    f"adapter module {pair.module} has no tensor in llama.cpp's {arch} text model",
                    hint="run `loradoc doctor` on the adapter",
                )
            tied = not any(n.endswith("lm_head.weight") for n in ckpt.tensors)
            if tied and g in ("output.weight", "token_embd.weight"):
                what = "the output head" if g == "output.weight" else "the token embedding"
                raise BadInputError(
                    f"adapter module {pair.module} adapts {what} of a tied-embedding base; llama.cpp shares "
                    "token_embd with the output head and cannot load such a LoRA adapter",
                    hint="write a merged GGUF instead: `loradoc convert gguf`",
                )
            # llama.cpp: scale = alpha / r; peft: pair.scale. Fold the ratio into B.
            llama_scale = alpha / pair.rank if alpha else 1.0
            factor = pair.scale / llama_scale
            if abs(factor - 1.0) > 1e-12:
                rescaled[g] = factor

            def a_chunks(p=pair, emb=pair.embedding) -> Any:
                a = read_adapter_f32(snapshot, p.a_key, fh)
                if emb:
                    a = np.ascontiguousarray(a.T[:n_vocab] if n_vocab else a.T)
                yield a

            def b_chunks(p=pair, f=factor) -> Any:
                b = read_adapter_f32(snapshot, p.b_key, fh)
                if abs(f - 1.0) > 1e-12:
                    b = b * np.float32(f)
                yield b

            a_shape = snapshot.tensors[pair.a_key].shape
            b_shape = snapshot.tensors[pair.b_key].shape
            if pair.embedding:
                rows = min(a_shape[1], n_vocab) if n_vocab else a_shape[1]
                a_out = (rows, a_shape[0])
            else:
                a_out = tuple(a_shape)
            plan.append(PlannedTensor(g + ".lora_a", a_out, "F32", a_chunks, pair.a_key))
            plan.append(PlannedTensor(g + ".lora_b", tuple(b_shape), "F32", b_chunks, pair.b_key))
        names = [t.name for t in plan]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise BadInputError(
                f"two adapter modules map to {dup}", hint="the adapter mixes layouts: run `loradoc repair`"
            )
        with atomic_output(out, overwrite=overwrite) as tmp:
            w = make_writer(arch)
            w.add_type(gguf.GGUFType.ADAPTER)
            w.add_string(gguf.Keys.Adapter.TYPE, "lora")
            w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            w.add_name(f"{snapshot.directory.name}")
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            tokens = cfg.raw.get("alora_invocation_tokens")
            if tokens:
                w.add_key_value(
                    gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS,
                    [int(t) for t in tokens],
                    gguf.GGUFValueType.ARRAY,
                    gguf.GGUFValueType.UINT32,
                )
            w.add_string("loradoc.adapter", snapshot.label)
            size = write_gguf(w, tmp, plan, progress)
    finally:
        fh.close()
    if rescaled:
        why = "rslora" if cfg.use_rslora else "alpha_pattern / rank_pattern"
        notes.append(f"{len(rescaled)} modules have a peft scale other than alpha/r ({why}): folded into lora_b")
    if loras.tower_keys:
        notes.append(
            f"{len(loras.tower_keys)} tower LoRA tensors are not included: a llama.cpp LoRA adapts the text model only"
        )
    return GgufLoraResult(
        out=out,
        arch=arch,
        alpha=alpha,
        pairs=len(loras.pairs),
        tensors=len(plan),
        bytes=size,
        seconds=time.perf_counter() - t0,
        adapter=snapshot.label,
        rescaled=rescaled,
        not_included=list(loras.tower_keys),
        notes=notes,
    )
