"""What a merge does to every output tensor: the plan of ``loradoc convert merged``.

Every adapter tensor is placed on a base checkpoint tensor (both through layout-independent addresses,
:mod:`loradoc.model.layout`): LoRA factors become a :class:`Lora` (rank, alpha and scale resolved as peft does),
full tensors (modules_to_save, ``bias="all"``, peft's saved ``base_layer.weight``) a replacement, ``lora_B.bias``
a scaled bias addition. The result is one :class:`Op` per output tensor, in the base checkpoint's file order
(tied embeddings: :mod:`loradoc.convert.merge_tied`). Nothing here reads tensor data except to compare two
adapter tensors of tied embeddings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.convert.checkpoint import FLOAT_DTYPES, Checkpoint
from loradoc.convert.merge_tied import describe_effect, input_embedding_tensor, same_effect, same_tensor, tie_flag
from loradoc.errors import BadInputError
from loradoc.io.safetensors import DTYPE_BITS, TensorInfo
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.layout import address_of, parse_key
from loradoc.model.profiles import BaseProfile

if TYPE_CHECKING:
    from loradoc.convert.merge_tensors import AdapterTensors

__all__ = ["Effect", "Lora", "Op", "Plan", "build_plan"]


@dataclass
class Lora:
    module: str  # the model's module name (peft's target name)
    key_module: str  # the module path as saved in the adapter
    embedding: bool
    a: str
    b: str
    bias: str | None
    magnitude: str | None
    r: int
    alpha: float
    scale: float
    transpose: bool  # Conv1D (fan_in_fan_out)


@dataclass
class Effect:
    replace: str | None = None  # adapter key whose tensor replaces the base tensor
    lora: Lora | None = None
    bias_add: list[tuple[str, float]] = field(default_factory=list)
    replace_via: str = ""  # "modules_to_save" | "base_layer" | "bias"

    @property
    def empty(self) -> bool:
        return self.replace is None and self.lora is None and not self.bias_add


@dataclass
class Op:
    name: str  # output tensor name
    src_file: Path
    src: TensorInfo
    dtype: str  # output dtype
    effect: Effect
    primary: bool = True  # the first (hashed) read of src
    shard: int = 0

    @property
    def nbytes(self) -> int:
        return self.src.numel * DTYPE_BITS[self.dtype] // 8

    @property
    def kind(self) -> str:
        e = self.effect
        if e.lora is not None:
            return "dora" if e.lora.magnitude else "merge"
        if e.replace is not None:
            return "replace"
        if e.bias_add:
            return "bias"
        return "copy" if self.src.dtype == self.dtype else "cast"


@dataclass
class Plan:
    ops: list[Op]
    merged: list[dict[str, Any]]
    replaced: list[dict[str, Any]]
    untied: bool
    notes: list[str]


_WRAPPER_INFIX = re.compile(r"\.(?:modules_to_save|original_module)\.[^.]+$")


def build_plan(
    snap: AdapterSnapshot,
    reader: AdapterTensors,
    profile: BaseProfile,
    ckpt: Checkpoint,
    base_cfg: dict[str, Any],
    out_dtype: str,
    notes: list[str],
) -> Plan:
    from loradoc.model.peft_patterns import alpha_for, rank_for

    cfg = snap.config
    index = profile.address_index()
    lora_parts: dict[str, dict[str, str]] = {}
    full: list[tuple[str, str, str, str]] = []  # (key, module, param, via)
    for key in snap.tensors:
        p = parse_key(key)
        module = p.module
        if p.kind == "other":
            via = "modules_to_save"
            if _WRAPPER_INFIX.search(module):
                if ".original_module." in module:
                    raise BadInputError(f"adapter tensor {key} is an original_module copy", hint="re-save the adapter")
                module = _WRAPPER_INFIX.sub("", module)
            if module.endswith(".base_layer"):
                module, via = module[: -len(".base_layer")], "base_layer"
            elif p.param == "bias":
                via = "bias"
            if p.param not in ("weight", "bias"):
                raise BadInputError(
                    f"adapter tensor {key} is neither a LoRA factor nor a module weight/bias",
                    hint="check it with `loradoc doctor`; merge knows LoRA, DoRA and full module tensors",
                )
            full.append((key, module, p.param, via))
        else:
            lora_parts.setdefault(module, {})[p.kind] = key

    effects: dict[str, Effect] = {}
    extra: dict[str, Effect] = {}  # effects on the (absent) output embedding of a tied base
    merged: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []

    out_emb = profile.output_embedding
    out_emb_addr = address_of(out_emb) if out_emb else None
    tie_set = tie_flag(base_cfg)
    in_emb_tensor = input_embedding_tensor(profile, ckpt)
    tied = bool(tie_set and out_emb and in_emb_tensor and ckpt.find(out_emb, "weight") is None)

    def target_tensor(key: str, module: str, param: str) -> tuple[str, dict[str, Effect]]:
        name = ckpt.find(module, param)
        if name is not None:
            return name, effects
        if tied and param == "weight" and out_emb_addr is not None and address_of(module) == out_emb_addr:
            assert in_emb_tensor is not None
            return in_emb_tensor, extra
        raise BadInputError(
            f"adapter tensor {key} maps to no tensor of the base checkpoint (no {param} at {module})",
            hint="run `loradoc doctor ADAPTER --base BASE`; `loradoc repair` drops or reroots such keys",
        )

    for module, parts in sorted(lora_parts.items()):
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_kind, b_kind = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        anchor = next(iter(parts.values()))
        if a_kind not in parts or b_kind not in parts:
            missing = a_kind if a_kind not in parts else b_kind
            raise BadInputError(
                f"adapter module {module} has no {missing} (found {', '.join(sorted(parts))})",
                hint="the adapter is incomplete: re-export it",
            )
        name, table = target_tensor(anchor, module, "weight")
        model_name, info = _model_module(module, index, profile)
        if info is not None and info.kind == "conv":
            raise BadInputError(
                f"adapter module {module} is a LoRA on a convolution ({info.cls}); merge handles linear and "
                "embedding layers",
                hint="merge it with peft's merge_and_unload",
            )
        transpose = bool(info is not None and info.cls == "Conv1D" and not emb)
        if cfg.fan_in_fan_out and not transpose and not emb and "fan_in_fan_out" not in " ".join(notes):
            notes.append("fan_in_fan_out is set but the targets are nn.Linear: ignored, as peft does")
        r = rank_for(cfg, model_name)
        alpha = alpha_for(cfg, model_name)
        a_info, b_info = reader.info(parts[a_kind]), reader.info(parts[b_kind])
        w = ckpt.info(name)
        _check_lora_shapes(module, emb, transpose, a_info, b_info, w, r)
        scale = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        lora = Lora(
            module=model_name,
            key_module=module,
            embedding=emb,
            a=parts[a_kind],
            b=parts[b_kind],
            bias=parts.get("lora_B_bias"),
            magnitude=parts.get("magnitude"),
            r=r,
            alpha=alpha,
            scale=scale,
            transpose=transpose,
        )
        if lora.magnitude is not None and lora.bias is not None:
            raise BadInputError(
                f"adapter module {module}: DoRA with lora_bias is not supported by merge (the PeftModel scales the "
                "LoRA bias by the DoRA factor; peft's own merge_and_unload does not)",
                hint="merge it with peft's merge_and_unload if its result is what you want",
            )
        if lora.magnitude is not None:
            m_info = reader.info(lora.magnitude)
            want = w.shape[1] if emb else w.shape[0]
            if transpose:
                raise BadInputError(
                    f"adapter module {module}: DoRA on a Conv1D layer is not supported by merge",
                    hint="merge it with peft's merge_and_unload",
                )
            if m_info.numel != want:
                raise BadInputError(
                    f"adapter tensor {lora.magnitude} has {m_info.numel} values, {name} needs {want}",
                    hint="the adapter does not fit this base: check it with `loradoc doctor`",
                )
        eff = table.setdefault(name, Effect())
        if eff.lora is not None:
            raise BadInputError(
                f"adapter modules {eff.lora.key_module} and {module} both map to {name}",
                hint="run `loradoc doctor`; the adapter mixes two layouts of the same module",
            )
        eff.lora = lora
        if lora.bias is not None:
            bias_name = ckpt.find(module, "bias")
            if bias_name is None or table is extra:
                raise BadInputError(
                    f"adapter module {module} has a lora_B bias but the base layer has no bias",
                    hint="peft cannot merge it either (lora_bias=True needs a base bias)",
                )
            effects.setdefault(bias_name, Effect()).bias_add.append((lora.bias, scale))
        merged.append(
            {
                "module": model_name,
                "tensor": name if table is effects else (out_emb or "lm_head") + ".weight",
                "kind": "embedding" if emb else ("conv1d" if transpose else "linear"),
                "r": r,
                "alpha": alpha,
                "scale": scale,
                "rslora": bool(cfg.use_rslora),
                "dora": lora.magnitude is not None,
                "lora_bias": lora.bias is not None,
                "keys": sorted(parts.values()),
            }
        )

    # a task head saved whole with the adapter (modules_to_save of a SEQ_CLS / TOKEN_CLS / QA adapter) that the
    # pretrained base checkpoint does not have (e.g. an MLM checkpoint): the merged model gets the adapter's head
    from loradoc.diagnose.analysis import wrapped_modules

    heads = wrapped_modules(cfg, profile)
    added: list[tuple[str, str]] = []  # (output tensor name, adapter key)
    for key, module, param, via in sorted(full):
        in_head = any(module == h or module.startswith(h + ".") for h in heads)
        if in_head and via != "base_layer" and f"{module}.{param}" not in ckpt.where:
            # exact names only: a head's ``dense`` is not the pretraining head's ``lm_head.dense``
            added.append((f"{module}.{param}", key))
            replaced.append({"tensor": f"{module}.{param}", "key": key, "via": "modules_to_save (added)"})
            continue
        name, table = target_tensor(key, module, param)
        a_info, w = reader.info(key), ckpt.info(name)
        if tuple(a_info.shape) != tuple(w.shape):
            raise BadInputError(
                f"adapter tensor {key} has shape {list(a_info.shape)}, base tensor {name} {list(w.shape)} "
                "(a resized vocabulary?)",
                hint="merge it with peft (resize the base's embeddings first)",
            )
        if a_info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"adapter tensor {key} is {a_info.dtype}, not a float", hint="re-export the adapter")
        if via == "base_layer" and tied and name == in_emb_tensor:
            # the base layer of a tied embedding is the shared weight: it replaces both ends
            for tab in (effects, extra):
                e = tab.setdefault(name, Effect())
                if e.replace is not None and e.replace != key and not same_tensor(reader, e.replace, key):
                    raise BadInputError(
                        f"adapter tensors {e.replace} and {key} both set the tied embedding differently",
                        hint="re-save the adapter (peft's save_pretrained writes one copy)",
                    )
                e.replace, e.replace_via = key, via
            replaced.append({"tensor": name, "key": key, "via": via, "tied": True})
            continue
        eff = table.setdefault(name, Effect())
        if eff.replace is not None and eff.replace_via != "base_layer":
            raise BadInputError(f"adapter tensors {eff.replace} and {key} both replace {name}", hint="re-save it")
        if eff.replace is None or via != "base_layer":
            eff.replace, eff.replace_via = key, via
        replaced.append(
            {
                "tensor": name if table is effects else (out_emb or "lm_head") + ".weight",
                "key": key,
                "via": via,
            }
        )

    untied = False
    lm_name = (out_emb or "lm_head") + ".weight"
    if tied and in_emb_tensor is not None:
        e_in = effects.get(in_emb_tensor, Effect())
        e_out = extra.get(in_emb_tensor, Effect())
        if not same_effect(reader, e_in, e_out):
            untied = True
            extra_op = e_out
            shared = e_in.replace if e_in.replace is not None and e_in.replace == e_out.replace else None
            note = (
                f"the adapter changes the tied embeddings differently ({in_emb_tensor}: "
                f"{describe_effect(e_in, shared)}; {lm_name}: {describe_effect(e_out, shared)}): the output is "
                f"untied (tie_word_embeddings false, a separate {lm_name}), as the PeftModel computes them"
            )
            if e_in.lora is not None or e_out.lora is not None:
                note += "; peft's merge_and_unload adds the LoRA to the shared tensor and changes the other end too"
            notes.append(note)
        elif not e_out.empty:
            notes.append("the adapter changes both tied embeddings identically: merged once, the output stays tied")
    ops: list[Op] = []
    for f, info in ckpt.ordered():
        eff = effects.get(info.name, Effect())
        dt = out_dtype if info.dtype in FLOAT_DTYPES else info.dtype
        if not eff.empty and info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"base tensor {info.name} is {info.dtype}: cannot merge into it", hint="check the base")
        ops.append(Op(info.name, f, info, dt, eff))
    if untied:
        assert in_emb_tensor is not None
        f = ckpt.where[in_emb_tensor]
        ops.append(Op(lm_name, f, ckpt.info(in_emb_tensor), out_dtype, extra_op, primary=False))
    for name, key in added:
        a_info = reader.info(key)
        if a_info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"adapter tensor {key} is {a_info.dtype}, not a float", hint="re-export the adapter")
        ops.append(Op(name, ckpt.files[0], a_info, out_dtype, Effect(replace=key, replace_via="modules_to_save")))
    if added:
        notes.append(f"{len(added)} head tensors the base checkpoint lacks come from the adapter (modules_to_save)")
    if cfg.init_lora_weights not in (True, False, None, "gaussian"):
        notes.append(
            f"init_lora_weights={cfg.init_lora_weights!r}: merged as saved; if the adapter was saved without "
            "peft's conversion it expects the modified base it was initialised from"
        )
    return Plan(ops, merged, replaced, untied, notes)


def _model_module(module: str, index: dict[Any, str], profile: BaseProfile) -> tuple[str, Any]:
    """The model's own name for an adapter module (peft's target name: rank/alpha patterns match on it)."""
    name = index.get(address_of(module, profile.towers))
    if name is None:
        return module, None
    info = profile.modules[name]
    if info.kind == "clippable":
        inner = f"{name}.linear"
        return inner, profile.modules.get(inner, info)
    return name, info


def _check_lora_shapes(
    module: str, emb: bool, transpose: bool, a: TensorInfo, b: TensorInfo, w: TensorInfo, r: int
) -> None:
    def bad(msg: str) -> BadInputError:
        return BadInputError(f"adapter module {module}: {msg}", hint="check it with `loradoc doctor`")

    if len(a.shape) != 2 or len(b.shape) != 2 or len(w.shape) != 2:
        raise bad(f"LoRA factors {list(a.shape)} / {list(b.shape)} on base {list(w.shape)} are not matrices")
    if a.shape[0] != b.shape[1]:
        raise bad(f"lora_A {list(a.shape)} and lora_B {list(b.shape)} have different ranks")
    if a.shape[0] != r:
        raise BadInputError(
            f"adapter module {module}: rank {a.shape[0]} in the file, r={r} in adapter_config.json",
            hint="run `loradoc repair` (rank-pattern pass) to fix the config",
        )
    if emb or transpose:  # embedding: A (r, vocab), B (dim, r), W (vocab, dim); Conv1D: W (in, out)
        ok = a.shape[1] == w.shape[0] and b.shape[0] == w.shape[1]
    else:  # W (out, in)
        ok = a.shape[1] == w.shape[1] and b.shape[0] == w.shape[0]
    if not ok:
        raise bad(f"LoRA factors {list(a.shape)} / {list(b.shape)} do not fit base weight {list(w.shape)}")
