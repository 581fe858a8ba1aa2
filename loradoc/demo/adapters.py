"""The example adapters: made with real peft (``get_peft_model`` + ``save_pretrained``) on the tiny bases, then
given the key layouts and config fields of the real adapters they replicate."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.demo.files import (
    copy_adapter,
    fresh_dir,
    quiet_and_seeded,
    save_tensors,
    seed_for,
    write_json,
    write_marker,
)
from loradoc.demo.specs import (
    ADAPTER_SPECS,
    LM_REGEX,
    LM_TARGETS,
    PEFT_0_18_1_FIELDS,
    SEED_BASE_IDS,
    TOWER_EXCLUDE_REGEX,
    TOWER_LINEAR_REGEX,
    UNSLOTH_REGEX,
)
from loradoc.errors import BadInputError

if TYPE_CHECKING:
    import torch


def randomize_lora(model: Any, seed: int) -> None:
    """Give every lora_A / lora_B a seeded random non-zero value (a fresh LoRA has B = 0: no effect)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in pname:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            elif ".lora_B." in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _lora_config(
    target_modules: str | list[str], *, r: int = 16, alpha: int = 16, dropout: float = 0.0, **extra: Any
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        **extra,
    )


def _load_base(base_dir: Path, *, text_only: bool = False) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, Gemma4ForCausalLM

    cfg = AutoConfig.from_pretrained(str(base_dir))
    if text_only:  # a text-only model with the base's text dims and its own random weights
        return Gemma4ForCausalLM(cfg.get_text_config()).to(torch.float32).eval()
    if cfg.model_type == "gemma4_text":
        return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    return AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32).eval()


def _peft_save(model: Any, lora_cfg: Any, out_dir: Path, seed: int) -> None:
    """Real peft: inject, randomise the LoRA weights, save_pretrained."""
    from peft import get_peft_model

    pm = get_peft_model(model, lora_cfg)
    randomize_lora(pm, seed)
    pm.save_pretrained(str(out_dir))


def _finish_adapter(
    out_dir: Path,
    name: str,
    *,
    base_id: str,
    target_modules: str | list[str] | None = None,
    updates: dict[str, Any] | None = None,
    peft_0_18_1: bool = False,
) -> None:
    """Normalise adapter_config.json (deterministic, real base id) and write a deterministic model card."""
    path = out_dir / "adapter_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = base_id
    if target_modules is not None:
        cfg["target_modules"] = target_modules
    elif isinstance(cfg.get("target_modules"), list):
        # peft writes a set: its order depends on PYTHONHASHSEED
        cfg["target_modules"] = [t for t in LM_TARGETS if t in cfg["target_modules"]] + sorted(
            t for t in cfg["target_modules"] if t not in LM_TARGETS
        )
    if peft_0_18_1:
        cfg = {k: v for k, v in cfg.items() if k in PEFT_0_18_1_FIELDS}
        cfg["peft_version"] = "0.18.1"
    cfg.update(updates or {})
    write_json(path, cfg, peft_style=True)
    spec = ADAPTER_SPECS[name]
    card = [
        "---",
        f"base_model: {base_id}",
        "library_name: peft",
        "tags:",
        "- lora",
        "- loradoc-fixture",
        "---",
        "",
        f"# {name}",
        "",
        "A tiny random LoRA adapter built by `loradoc.demo.builder` (not a trained model).",
        "",
        spec.description,
        "",
    ]
    if spec.seed_of:
        card += [f"Replicates the key layout and config of `{spec.seed_of}`.", ""]
    (out_dir / "README.md").write_text("\n".join(card), encoding="utf-8")


def _kv_orphans(base_dir: Path, r: int, seed: int) -> dict[str, torch.Tensor]:
    """Correctly shaped k/v LoRAs for the KV-shared layers, as transformers 5.5.0/5.5.1 (which still built the
    modules) made them. transformers >= 5.5.2 has no such modules: peft drops these keys without a word."""
    import torch
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(str(base_dir)).get_text_config()
    first_shared = text.num_hidden_layers - text.num_kv_shared_layers
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i in range(first_shared, text.num_hidden_layers):
        layer = text.per_layer_config[i]
        kv_out = layer.num_key_value_heads * layer.head_dim
        for proj in ("k_proj", "v_proj"):
            stem = f"base_model.model.model.language_model.layers.{i}.self_attn.{proj}"
            out[f"{stem}.lora_A.weight"] = torch.randn(r, text.hidden_size, generator=gen) / text.hidden_size**0.5
            out[f"{stem}.lora_B.weight"] = torch.randn(kv_out, r, generator=gen) * 0.05
    return out


def build_adapter(name: str, base_dir: Path, out_dir: Path) -> Path:
    """Build one example adapter (see ``ADAPTER_SPECS``) against the built base in ``base_dir``."""
    if name not in ADAPTER_SPECS:
        raise BadInputError(f"unknown example adapter {name!r}", f"use one of {', '.join(ADAPTER_SPECS)}")
    base_dir = Path(base_dir)
    out_dir = fresh_dir(Path(out_dir))
    spec = ADAPTER_SPECS[name]
    seed = seed_for(name)
    local_base = spec.base  # the tiny base's "id" for the non-seed adapters
    targets = list(LM_TARGETS)

    with quiet_and_seeded(seed):
        if name == "healthy-gemma4-e4b":
            cfg = _lora_config(LM_REGEX, exclude_modules=TOWER_EXCLUDE_REGEX)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "healthy-gemma4-text":
            _peft_save(_load_base(base_dir), _lora_config(targets), out_dir, seed)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "textonly-on-wrapper":
            # Unsloth's regex matches both `model.layers.N...` (text-only, where it was trained) and
            # `model.language_model.layers.N...` (the wrapper) but no tower module, so the wrapper load
            # injects
            # fine and then finds none of its keys (the 7 names as a list would raise on the towers).
            model = _load_base(base_dir, text_only=True)
            _peft_save(model, _lora_config(UNSLOTH_REGEX), out_dir, seed)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "healthy-gemma3":
            _peft_save(_load_base(base_dir), _lora_config(LM_REGEX), out_dir, seed)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "gemma3-old-layout":
            with tempfile.TemporaryDirectory(prefix="loradoc-fixture-") as tmp:
                src = Path(tmp) / "healthy-gemma3"
                src.mkdir()
                _peft_save(_load_base(base_dir), _lora_config(LM_REGEX), src, seed_for("healthy-gemma3"))
                relayout_adapter(src, out_dir, _to_gemma3_v4_layout)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "seed-clinical-endpoint-extractor":
            # LM on every projection + the towers' inner .linear, injected for real; then the k/v orphans.
            both = rf"(?:{LM_REGEX})|(?:{TOWER_LINEAR_REGEX})"
            _peft_save(_load_base(base_dir), _lora_config(both), out_dir, seed)
            from safetensors.torch import load_file

            weights_path = out_dir / "adapter_model.safetensors"
            tensors = load_file(str(weights_path))
            tensors.update(_kv_orphans(base_dir, 16, seed + 1))
            save_tensors(weights_path, tensors)
            _finish_adapter(
                out_dir,
                name,
                base_id=SEED_BASE_IDS[name],
                target_modules=targets,
                updates={"exclude_modules": None, "lora_dropout": 0.05},
                peft_0_18_1=True,
            )
        elif name == "seed-cliniq-gemma4-e2b":
            _peft_save(_load_base(base_dir), _lora_config(UNSLOTH_REGEX, dropout=0), out_dir, seed)
            _finish_adapter(
                out_dir,
                name,
                base_id=SEED_BASE_IDS[name],
                updates={
                    "lora_dropout": 0,
                    "auto_mapping": {
                        "base_model_class": "Gemma4ForConditionalGeneration",
                        "parent_library": "transformers.models.gemma4.modeling_gemma4",
                        "unsloth_fixed": True,
                    },
                },
                peft_0_18_1=True,
            )
        elif name in ("seed-medical-qlora-e2b", "seed-pediatric-support-g4"):
            alpha = 32 if name == "seed-pediatric-support-g4" else 16
            cfg = _lora_config(LM_REGEX, alpha=alpha, dropout=0.05)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(
                out_dir,
                name,
                base_id=SEED_BASE_IDS[name],
                target_modules=targets,
                updates={"exclude_modules": None},
                peft_0_18_1=True,
            )
        elif name == "seed-medgemma-full-lora":
            cfg = _lora_config(targets, alpha=32, dropout=0.05)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(out_dir, name, base_id=SEED_BASE_IDS[name], peft_0_18_1=True)
        else:  # pragma: no cover - ADAPTER_SPECS and this switch are kept in step
            raise AssertionError(name)
    write_marker(out_dir, "adapter", name)
    return out_dir


def _to_gemma3_v4_layout(key: str) -> str:
    """transformers >= 4.52 / 5.x Gemma 3 adapter key -> the transformers 4.x (<= 4.51) layout."""
    new_prefix = "base_model.model.model.language_model."
    if key.startswith(new_prefix):
        return "base_model.model.language_model.model." + key[len(new_prefix) :]
    new_vision = "base_model.model.model.vision_tower."
    if key.startswith(new_vision):
        return "base_model.model.vision_tower." + key[len(new_vision) :]
    return key


def relayout_adapter(src: Path, dst: Path, rename: Callable[[str], str]) -> Path:
    """Copy an adapter directory with every tensor key renamed (``rename``); other files unchanged."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(src) / "adapter_model.safetensors"))
    return copy_adapter(src, dst, {rename(k): tensors[k] for k in sorted(tensors)})
