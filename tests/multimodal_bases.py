"""Tiny random multimodal bases (transformers' own config classes) and adapters made on them by real peft.

Used by tests/test_multimodal_matrix.py and benchmarks/multimodal.py. Every base is a few ten thousand parameters:
hidden 32, 2 text layers, a 1-layer vision tower. Adapter variants:

- ``healthy``:  LoRA on the language model's 7 linears (a regex on the LM's path, as people write for VLMs);
- ``tower``:    target_modules as a list of names, which also matches the vision tower and projector (and loads);
- ``textpath``: the healthy file with keys saved as a text-only model's ``model.layers.N``;
- ``legacy``:   the healthy file with keys under transformers 4.x's ``language_model.model.layers.N``;
- ``noprefix``: the healthy file without peft's ``base_model.model.`` prefix;
- ``tower4x``:  the tower file with every key where transformers 4.x had the module (Idefics3: unchanged).

What peft does with each is measured by a real ``PeftModel.from_pretrained`` (tests/realload.py), never assumed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TEXT = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@dataclass(frozen=True)
class Arch:
    name: str
    cls: str
    lm: str  # the language model's module path in the wrapper
    tower_targets: tuple[str, ...]  # names that, with LM_TARGETS, also hit the vision tower and projector
    v4: tuple[tuple[str, str], ...]  # (module prefix, the same module's prefix under transformers 4.x)


LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LLAVA_4X = (
    ("model.language_model", "language_model.model"),
    ("model.vision_tower", "vision_tower.vision_model"),
    ("model.multi_modal_projector", "multi_modal_projector"),
)
ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            "qwen2_5_vl",
            "Qwen2_5_VLForConditionalGeneration",
            "model.language_model",
            ("qkv", "proj"),
            (("model.language_model", "model"), ("model.visual", "visual")),
        ),
        Arch(
            "llava", "LlavaForConditionalGeneration", "model.language_model", ("out_proj", "fc1", "linear_1"), _LLAVA_4X
        ),
        Arch(
            "paligemma",
            "PaliGemmaForConditionalGeneration",
            "model.language_model",
            ("out_proj", "fc2", "linear"),
            _LLAVA_4X,
        ),
        Arch("idefics3", "Idefics3ForConditionalGeneration", "model.text_model", ("out_proj", "fc1", "proj"), ()),
        Arch(
            "mistral3",
            "Mistral3ForConditionalGeneration",
            "model.language_model",
            ("linear_1", "linear_2"),
            (
                ("model.language_model", "language_model.model"),
                ("model.vision_tower", "vision_tower"),
                ("model.multi_modal_projector", "multi_modal_projector"),
            ),
        ),
    )
}
VARIANTS = ("healthy", "tower", "textpath", "legacy", "noprefix", "tower4x")
#: the adapter each variant is a renamed copy of (what a repair must give back)
SOURCE = {"textpath": "healthy", "legacy": "healthy", "noprefix": "healthy", "tower4x": "tower"}


def _config(name: str) -> Any:
    import transformers as T

    if name == "qwen2_5_vl":
        rope = {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}
        return T.Qwen2_5_VLConfig(
            text_config=dict(_TEXT, head_dim=8, rope_parameters=rope),
            vision_config={
                "depth": 1,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 32,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 16,
                "fullatt_block_indexes": [0],
            },
            image_token_id=250,
            video_token_id=251,
            vision_start_token_id=252,
        )
    if name == "llava":
        return T.LlavaConfig(
            text_config=dict(_TEXT, model_type="llama"),
            vision_config=dict(_VISION, model_type="clip_vision_model", image_size=16, patch_size=4, projection_dim=32),
            image_token_index=250,
            vision_feature_layer=-1,
        )
    if name == "paligemma":
        return T.PaliGemmaConfig(
            text_config=dict(_TEXT, model_type="gemma", head_dim=8),
            vision_config=dict(_VISION, model_type="siglip_vision_model", image_size=16, patch_size=4),
            image_token_index=250,
            projection_dim=32,
        )
    if name == "idefics3":
        return T.Idefics3Config(
            text_config=dict(_TEXT, model_type="llama"),
            vision_config=dict(_VISION, image_size=16, patch_size=4),
            image_token_id=250,
            scale_factor=2,
        )
    if name == "mistral3":
        return T.Mistral3Config(
            text_config=dict(_TEXT, model_type="mistral", head_dim=8),
            vision_config=dict(_VISION, model_type="pixtral", image_size=16, patch_size=4, head_dim=16),
            image_token_index=250,
            spatial_merge_size=2,
        )
    raise KeyError(name)


def build_base(name: str, out: Path) -> Path:
    import torch
    import transformers

    arch = ARCHS[name]
    torch.manual_seed(1234)
    model = getattr(transformers, arch.cls)(_config(name)).to(torch.float32).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [arch.cls], cfg["architectures"]
    return out


def _make_adapter(base: Path, out: Path, target_modules: str | list[str], seed: int) -> Path:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from loradoc.demo.builder import randomize_lora as _randomize_lora

    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(str(base), dtype=torch.float32).eval()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    _randomize_lora(pm, seed)
    pm.save_pretrained(str(out))
    cfg_path = out / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base)
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return out


def build_adapters(name: str, base: Path, root: Path) -> dict[str, Path]:
    """Every variant of :data:`VARIANTS` for base ``name``, under ``root``."""
    from builders import rewrite_adapter

    arch = ARCHS[name]
    lm_regex = re.escape(arch.lm) + r"\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    out: dict[str, Path] = {}
    out["healthy"] = _make_adapter(base, root / "healthy", lm_regex, seed=11)
    out["tower"] = _make_adapter(base, root / "tower", [*LM_TARGETS, *arch.tower_targets], seed=12)
    lm_key = f"base_model.model.{arch.lm}."

    def reroot(new: str):
        return lambda k: new + k[len(lm_key) :] if k.startswith(lm_key) else k

    out["textpath"] = rewrite_adapter(out["healthy"], root / "textpath", rename=reroot("base_model.model.model."))
    out["legacy"] = rewrite_adapter(
        out["healthy"], root / "legacy", rename=reroot("base_model.model.language_model.model.")
    )
    out["noprefix"] = rewrite_adapter(
        out["healthy"], root / "noprefix", rename=lambda k: k.removeprefix("base_model.model.")
    )

    def to_4x(key: str) -> str:
        for new, old in arch.v4:
            if key.startswith(f"base_model.model.{new}."):
                return f"base_model.model.{old}." + key[len(f"base_model.model.{new}.") :]
        return key

    out["tower4x"] = rewrite_adapter(out["tower"], root / "tower4x", rename=to_4x)
    return out


def expected_verdict(real: Any) -> str:
    """The verdict a real load implies: healthy iff peft loads every tensor, misses none and the adapter acts."""
    clean = real.error is None and real.missing == 0 and real.unexpected == 0 and real.effective
    return "healthy" if clean else "repairable"
