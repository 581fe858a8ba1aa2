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

Names and per-tensor transforms are llama.cpp's: the converter class llama.cpp registered for the base's
architecture (``gguf_llama``) runs ``modify_tensors`` on each adapted weight. A tensor it passes through unchanged
keeps A and B as they are; one it transforms by rows (the Q/K permutes of Llama-style RoPE, vocabulary slices,
splits of fused projections) gets llama.cpp's transform applied to B (to A transposed for an embedding), and
loradoc checks, tensor by tensor, that the factored result equals llama.cpp's transform of the full ``B @ A``;
a transform that does not factor that way is refused with the module named.

Tower LoRAs (vision / audio / projector) cannot go into a text model's adapter: they are listed in the result
(``not_included``), never dropped silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.convert.gguf_io import (
    BaseCheckpoint,
    PlannedTensor,
    atomic_output,
    collect_loras,
    make_writer,
    open_base,
    read_adapter_f32,
    require_healthy,
    write_gguf,
)
from loradoc.errors import BadInputError
from loradoc.io.outputs import guard_outputs
from loradoc.progress import Progress


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


def _same_as_base(snapshot: Any, key: str, ckpt: BaseCheckpoint, base_name: str | None) -> bool:
    """Whether a full weight saved with the adapter equals the base's tensor (value for value, any float dtype)."""
    import numpy as np

    from loradoc.convert.gguf_io import check_float, iter_row_chunks

    if base_name is None or snapshot.header is None or base_name not in ckpt.tensors:
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


class _LoraMapper:
    """llama.cpp's converter class for the base, run on one adapted weight at a time."""

    def __init__(self, ckpt: BaseCheckpoint) -> None:
        import torch

        from loradoc.convert.gguf_llama import converter_class, converter_hparams, load_converter

        _, self.gguf = load_converter()
        cls = converter_class(ckpt.config, str(ckpt.directory / "config.json"))

        class Mapper(cls):  # type: ignore[misc, valid-type]
            model_arch = cls.model_arch

            def index_tensors(self, remote_hf_model_id: str | None = None) -> dict[str, Any]:
                return {}  # the base's weights are not needed (as convert_lora_to_gguf.py --base)

        Mapper.__name__ = cls.__name__
        try:
            with torch.inference_mode():
                self.model = Mapper(ckpt.directory, self.gguf.LlamaFileType.ALL_F32, ckpt.directory / "x.gguf",
                                    hparams=converter_hparams(cls, ckpt))  # fmt: skip
        except (NotImplementedError, KeyError, ValueError, AssertionError) as e:
            raise BadInputError(
                f"llama.cpp's converter ({cls.__name__}) refused {ckpt.directory}: {type(e).__name__}: {e}",
                hint="check the base's config.json",
            ) from None
        self.arch = self.gguf.MODEL_ARCH_NAMES[self.model.model_arch]

    def outputs(self, hf_name: str, w: Any) -> list[tuple[str, Any]]:
        """llama.cpp's (GGUF name, tensor) outputs for the weight ``hf_name`` with value ``w`` (eager)."""
        import torch

        item = self.model.filter_tensors((hf_name, lambda: w))
        if item is None:
            return []
        name, gen = item
        bid = next((int(p) for p in name.split(".") if p.isdecimal()), None)
        with torch.inference_mode():
            return list(self.model.modify_tensors(gen(), name, bid))


def _factor(mapper: _LoraMapper, hf_name: str, left: Any, right: Any) -> list[tuple[str, Any, Any]] | str:
    """llama.cpp's outputs for W = left @ right as (name, left', right) with the transform applied to ``left``
    (rows), checked against llama.cpp's transform of the full W. A string says why it does not factor."""
    import torch

    out_rows, r = left.shape
    cols = right.shape[1]
    probe = torch.zeros(1, dtype=torch.float32).expand(out_rows, cols)  # no memory for the shape probe
    full = mapper.outputs(hf_name, probe)  # names and shapes only: transforms of zeros are cheap and exact
    if all(t is probe for _, t in full):
        return [(n, left, right) for n, _ in full]
    w = left @ right
    want = mapper.outputs(hf_name, w)
    padded = torch.zeros((out_rows, max(cols, r)), dtype=torch.float32)
    padded[:, :r] = left
    got = mapper.outputs(hf_name, padded if cols >= r else left)
    if len(got) != len(want) or [n for n, _ in got] != [n for n, _ in want]:
        return "llama.cpp's transform changes the tensor's columns"
    res = []
    for (name, t_w), (_, t_l) in zip(want, got, strict=True):
        t_l = t_l[..., :r] if cols >= r else t_l
        if t_l.dim() != 2 or tuple(t_w.shape) != (t_l.shape[0], cols):
            return f"llama.cpp reshapes {name} to {list(t_w.shape)}"
        approx = t_l @ right
        tol = 1e-5 * max(float(t_w.abs().max()), 1e-12)
        if not torch.allclose(approx, t_w, rtol=0, atol=tol):
            return f"llama.cpp's transform of {name} mixes rows and columns"
        res.append((name, t_l.contiguous(), right))
    return res


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
    config.json names the architecture; weights are not needed) at ``out``."""
    import gguf
    import numpy as np
    import torch

    from loradoc.convert.gguf_model import text_weights
    from loradoc.convert.gguf_names import base_towers
    from loradoc.io.snapshot import open_snapshot
    from loradoc.model.layout import address_of

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out} is a directory", hint="pass the path of the .gguf file to write")
    ckpt = open_base(base)
    mapper = _LoraMapper(ckpt)
    arch = mapper.arch
    snapshot = open_snapshot(adapter)
    guard_outputs([("--out", out)], adapter=snapshot.directory, base=ckpt.directory, overwrite=overwrite)
    if check_health:
        snapshot = require_healthy(adapter, base).snapshot
    bt = base_towers(ckpt.directory)  # the towers from the base's profile (its structure), not from names
    loras = collect_loras(snapshot, base_towers=bt.towers)
    if not loras.pairs:
        raise BadInputError(
            f"{snapshot.label} has no LoRA on the text model ({len(loras.tower_keys)} tower tensors only)",
            hint="a llama.cpp LoRA adapts the text model; tower LoRAs need a merged checkpoint",
        )
    cfg = snapshot.config
    alpha = float(cfg.lora_alpha) if cfg.lora_alpha is not None else 8.0
    weights = text_weights(ckpt, bt.towers)
    tied = bool(ckpt.tensors) and not any(n.endswith("lm_head.weight") for n in ckpt.tensors)
    if not ckpt.tensors:
        tied = bool((ckpt.config.get("text_config") or ckpt.config).get("tie_word_embeddings", False))

    def hf_weight(module: str) -> str:
        return weights.get(address_of(module, bt.towers)) or f"{module}.weight"

    notes: list[str] = [bt.note] if bt.note else []
    for module, key in loras.full_weights.items():
        if not _same_as_base(snapshot, key, ckpt, weights.get(address_of(module, bt.towers))):
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
            hf = hf_weight(pair.module)
            a = torch.from_numpy(read_adapter_f32(snapshot, pair.a_key, fh))
            b = torch.from_numpy(read_adapter_f32(snapshot, pair.b_key, fh))
            # llama.cpp: scale = alpha / r; peft: pair.scale. Fold the ratio into B.
            llama_scale = alpha / pair.rank if alpha else 1.0
            factor = pair.scale / llama_scale
            if abs(factor - 1.0) > 1e-12:
                b = b * np.float32(factor)
            # W = left @ right: rows of W come from B (linear) or from A transposed (embedding)
            left, right = (a.T.contiguous(), b.T.contiguous()) if pair.embedding else (b, a)
            parts = _factor(mapper, hf, left, right)
            if isinstance(parts, str):
                raise BadInputError(
                    f"adapter module {pair.module}: {parts}; it cannot be written as a llama.cpp LoRA",
                    hint="write a merged GGUF instead: `loradoc convert gguf`",
                )
            if not parts:
                raise BadInputError(
                    f"adapter module {pair.module} has no tensor in llama.cpp's {arch} model",
                    hint="run `loradoc doctor` on the adapter",
                )
            for g, lft, rgt in parts:
                if tied and g in ("output.weight", "token_embd.weight"):
                    what = "the output head" if g == "output.weight" else "the token embedding"
                    raise BadInputError(
                        f"adapter module {pair.module} adapts {what} of a tied-embedding base; llama.cpp shares "
                        "token_embd with the output head and cannot load such a LoRA adapter",
                        hint="write a merged GGUF instead: `loradoc convert gguf`",
                    )
                if abs(factor - 1.0) > 1e-12:
                    rescaled[g] = factor
                base_name = g.removesuffix(".weight") + ".weight"
                if pair.embedding:  # lora_a = (A^T)' (vocab, r), lora_b = B (dim, r)
                    lora_a, lora_b = lft, rgt.T
                else:  # lora_a = A (r, in), lora_b = B' (out, r)
                    lora_a, lora_b = rgt, lft
                for suffix, arr in ((".lora_a", lora_a), (".lora_b", lora_b)):
                    data = np.ascontiguousarray(arr.numpy(), dtype=np.float32)
                    plan.append(
                        PlannedTensor(base_name + suffix, tuple(data.shape), "F32", lambda d=data: iter([d]), hf)
                    )
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
