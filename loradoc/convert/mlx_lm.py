"""``loradoc convert mlx-lm``: a PEFT LoRA adapter <-> mlx-lm's adapter layout, tensor bytes unchanged.

mlx-lm's layout, from its source (mlx_lm 0.32.2: ``tuner/utils.py`` ``load_adapters`` / ``linear_to_lora_layers``,
``tuner/lora.py`` ``LoRALinear``):

- ``adapter_config.json``: ``fine_tune_type = "lora"``, ``num_layers`` (LoRA on the last N of ``model.layers``;
  -1 = all), ``lora_parameters = {rank, scale, dropout, keys}``; ``keys`` are module paths relative to a layer
  (``self_attn.q_proj``) or, for modules outside the layers, full paths;
- ``adapters.safetensors``: ``<mlx module path>.lora_a`` of shape (in, r) and ``.lora_b`` of shape (r, out);
  ``LoRALinear`` computes ``y + scale * (x @ lora_a) @ lora_b``.

peft stores ``lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r) and computes ``y + s * x @ A.T @ B.T`` with
``s = alpha / r`` (``alpha / sqrt(r)`` with rslora). So ``lora_a = A.T``, ``lora_b = B.T`` and ``scale = s``: exact,
a transpose of the same elements (done on the raw bytes, any dtype). mlx-lm has one rank and one scale per adapter:
rank_pattern / alpha_pattern adapters whose modules differ are refused, as are DoRA (mlx-lm's DoRALinear is a
different parametrisation), LoRA biases, embedding LoRAs and full (modules_to_save) weights. Tower LoRAs (mlx-lm
models are text-only) are left out and listed.

Module paths: mlx-lm keeps transformers' names for most models; where a model's ``sanitize`` renames them the
mapping is in ``PREFIXES`` (read from mlx_lm/models/<type>.py). Model types not listed are refused.

The converted config keeps the peft config and the key order under ``"loradoc"`` (mlx-lm ignores unknown keys), so
``mlx_to_peft`` gives back the peft adapter bit for bit; an mlx-lm adapter without it is converted with the
model type's mapping and a config built from ``lora_parameters``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError

MLX_WEIGHTS = "adapters.safetensors"
MLX_CONFIG = "adapter_config.json"

# model_type -> (transformers prefix, mlx-lm prefix), first match wins. From mlx_lm 0.32.2 models/*.py sanitize.
_SAME = (("", ""),)
PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "llama": _SAME,
    "mistral": _SAME,
    "qwen2": _SAME,
    "qwen3": _SAME,
    "gemma": _SAME,
    "gemma2": _SAME,
    "gemma3_text": _SAME,
    "gpt2": (("transformer.", "model."),),  # models/gpt2.py sanitize: "h.N..." -> "model.h.N..."
    # models/gemma3.py / gemma4.py: language_model.model.* (transformers 5: model.language_model.*)
    "gemma3": (("model.language_model.", "language_model.model."), ("language_model.model.", "language_model.model.")),
    "gemma4": (("model.language_model.", "language_model.model."), ("language_model.model.", "language_model.model.")),
}
_LAYER = re.compile(r"^(.*?\.(?:layers|h))\.(\d+)\.(.+)$")


@dataclass
class MlxResult:
    out: Path
    direction: str  # peft->mlx | mlx->peft
    tensors: int
    rank: int | None = None
    scale: float | None = None
    not_included: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "direction": self.direction, "tensors": self.tensors, "rank": self.rank,
                "scale": self.scale, "not_included": self.not_included, "notes": self.notes}  # fmt: skip


def _transpose_bytes(data: bytes, shape: tuple[int, ...], dtype: str) -> bytes:
    import numpy as np

    from loradoc.io.safetensors import DTYPE_BITS

    bits = DTYPE_BITS[dtype]
    if bits % 8 or len(shape) != 2:
        raise BadInputError(f"cannot transpose a {dtype} tensor of shape {shape}", hint="convert a 2-D LoRA factor")
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[bits // 8]
    arr = np.frombuffer(data, dtype=view).reshape(shape)
    return np.ascontiguousarray(arr.T).tobytes()


def _map(path: str, model_type: str, reverse: bool = False) -> str | None:
    for hf, mlx in PREFIXES[model_type]:
        src, dst = (mlx, hf) if reverse else (hf, mlx)
        if path.startswith(src):
            return dst + path[len(src) :]
    return None


def mlx_plan_problems(cfg: dict[str, Any], keys: dict[str, tuple[int, ...]], model_type: str | None) -> list[str]:
    """Why this peft adapter cannot be written in mlx-lm's layout exactly (empty: it can)."""
    from loradoc.model.layout import parse_key, tower_of

    out: list[str] = []
    if model_type is not None and model_type not in PREFIXES:
        out.append(f"no verified mlx-lm module mapping for model type {model_type!r} (known: {', '.join(PREFIXES)})")
    if cfg.get("peft_type", "LORA") != "LORA":
        out.append(f"peft_type {cfg.get('peft_type')} is not LoRA")
    if cfg.get("use_dora"):
        out.append("DoRA: mlx-lm's DoRALinear is a different parametrisation")
    ranks: set[int] = set()
    scales: set[float] = set()
    for k, shape in keys.items():
        p = parse_key(k)
        if tower_of(p.module) != "language":
            continue
        if p.kind not in ("lora_A", "lora_B"):
            out.append(f"{k}: not an adapter parameter in the model (mlx-lm takes lora_A / lora_B of linears only)")
            continue
        if p.adapter_name:
            out.append(f"{k}: key carries an adapter name")
        if p.kind == "lora_A":
            ranks.add(int(shape[0]))
            scales.add(peft_scale(cfg, p.module, int(shape[0])))
    if len(ranks) > 1:
        out.append(f"modules have different ranks {sorted(ranks)}: mlx-lm has one rank per adapter")
    if len(scales) > 1:
        out.append("modules have different scales (alpha_pattern / rank_pattern): mlx-lm has one scale per adapter")
    return out


def peft_scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling for ``module``: alpha (alpha_pattern) / r (or sqrt(r) with rslora)."""
    alpha = cfg.get("lora_alpha", 8)
    for pat, v in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            alpha = v
            break
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def peft_to_mlx(adapter: str | Path, out: str | Path, *, model_type: str, overwrite: bool = False) -> MlxResult:
    from loradoc.io.atomic import atomic_directory
    from loradoc.io.safetensors import read_header, read_tensor_bytes
    from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec
    from loradoc.model.layout import parse_key, tower_of

    src = Path(adapter)
    cfg = json.loads((src / "adapter_config.json").read_text())
    header = read_header(src / "adapter_model.safetensors")
    keys = {n: tuple(t.shape) for n, t in header.tensors.items()}
    problems = mlx_plan_problems(cfg, keys, model_type)
    if problems:
        hint = "; ".join(problems[1:3]) or "serve it with a runtime that takes peft adapters"
        raise BadInputError(f"{src.name} cannot be written in mlx-lm's layout exactly: {problems[0]}", hint=hint)
    plan: list[tuple[str, str]] = []  # (mlx name, peft key)
    not_included: list[str] = []
    rel_keys: set[str] = set()
    rank = scale = None
    for k in header.tensors:
        p = parse_key(k)
        if tower_of(p.module) != "language":
            not_included.append(k)
            continue
        mpath = _map(p.module, model_type)
        if mpath is None:
            raise BadInputError(f"{k}: module path {p.module} does not fit mlx-lm's {model_type} layout",
                                hint="run `loradoc doctor` / `loradoc repair` first")  # fmt: skip
        m = _LAYER.match(mpath)
        rel_keys.add(m.group(3) if m else mpath)
        plan.append((f"{mpath}.{'lora_a' if p.kind == 'lora_A' else 'lora_b'}", k))
        if p.kind == "lora_A":
            rank = int(keys[k][0])
            scale = peft_scale(cfg, p.module, rank)
    if not plan:
        raise BadInputError(f"{src.name} has no LoRA on the text model", hint="mlx-lm models are text-only")
    specs = [TensorSpec(name, header.tensors[k].dtype, tuple(reversed(keys[k]))) for name, k in plan]
    mlx_cfg = {
        "fine_tune_type": "lora",
        "num_layers": -1,
        "lora_parameters": {
            "rank": rank,
            "scale": scale,
            "dropout": float(cfg.get("lora_dropout", 0.0) or 0.0),
            "keys": sorted(rel_keys),
        },  # fmt: skip
        "loradoc": {
            "peft_config": cfg,
            "peft_keys": [t.name for t in header.ordered_by_offset()],
            "peft_metadata": header.metadata,
            "model_type": model_type,
            "not_included": not_included,
        },
    }
    with atomic_directory(out, overwrite=overwrite) as tmp, open(src / "adapter_model.safetensors", "rb") as fh:
        (tmp / MLX_CONFIG).write_text(json.dumps(mlx_cfg, indent=2) + "\n")
        with SafetensorsWriter(tmp / MLX_WEIGHTS, specs, metadata={"format": "mlx"}) as w:
            for name, k in plan:
                info = header.tensors[k]
                w.write(name, _transpose_bytes(read_tensor_bytes(header, k, fh), info.shape, info.dtype))
    notes = [f"{len(not_included)} tower LoRA tensors left out (mlx-lm models are text-only)"] if not_included else []
    return MlxResult(Path(out), "peft->mlx", len(plan), rank, scale, not_included, notes)


def mlx_to_peft(adapter: str | Path, out: str | Path, *, model_type: str | None = None,
                overwrite: bool = False) -> MlxResult:  # fmt: skip
    """Back to peft. With loradoc's record (a ``peft_to_mlx`` output) the original config, key names and order
    come back (tensors bit-identical; left-out tower tensors are not restored); else ``model_type`` maps the
    names and the config is built from ``lora_parameters``."""
    from loradoc.io.atomic import atomic_directory
    from loradoc.io.safetensors import read_header, read_tensor_bytes
    from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec

    src = Path(adapter)
    mcfg = json.loads((src / MLX_CONFIG).read_text())
    header = read_header(src / MLX_WEIGHTS)
    rec = mcfg.get("loradoc") or {}
    model_type = rec.get("model_type") or model_type
    if model_type not in PREFIXES:
        raise BadInputError(f"{src.name}: mlx-lm model type {model_type!r} has no verified module mapping",
                            hint=f"pass one of {', '.join(PREFIXES)}")  # fmt: skip
    lp = mcfg.get("lora_parameters") or {}
    if mcfg.get("fine_tune_type", "lora") != "lora":
        raise BadInputError(f"{src.name}: fine_tune_type {mcfg.get('fine_tune_type')!r} is not lora",
                            hint="only LoRA adapters convert exactly")  # fmt: skip
    pairs: list[tuple[str, str]] = []  # (peft key, mlx name)
    modules: set[str] = set()
    for name in header.tensors:
        mpath, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise BadInputError(f"{name}: not a LoRA factor", hint="only lora_a / lora_b tensors convert")
        hf = _map(mpath, model_type, reverse=True)
        if hf is None:
            raise BadInputError(f"{name} does not fit mlx-lm's {model_type} layout", hint="check --model-type")
        pairs.append((f"base_model.model.{hf}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}.weight", name))
        modules.add(hf.rsplit(".", 1)[-1])
    order = rec.get("peft_keys")
    if order:
        by_key = dict(pairs)
        pairs = [(k, by_key[k]) for k in order if k in by_key]
        cfg = rec["peft_config"]
    else:
        rank, scale = int(lp["rank"]), float(lp["scale"])
        cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": scale * rank,
               "lora_dropout": float(lp.get("dropout", 0.0)), "target_modules": sorted(modules), "bias": "none",
               "base_model_name_or_path": None}  # fmt: skip
    specs = [TensorSpec(k, header.tensors[n].dtype, tuple(reversed(header.tensors[n].shape))) for k, n in pairs]
    meta = rec.get("peft_metadata") if order else {"format": "pt"}
    with atomic_directory(out, overwrite=overwrite) as tmp, open(src / MLX_WEIGHTS, "rb") as fh:
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        with SafetensorsWriter(tmp / "adapter_model.safetensors", specs, metadata=meta or None) as w:
            for k, n in pairs:
                info = header.tensors[n]
                w.write(k, _transpose_bytes(read_tensor_bytes(header, n, fh), info.shape, info.dtype))
    return MlxResult(Path(out), "mlx->peft", len(pairs), lp.get("rank"), lp.get("scale"))
