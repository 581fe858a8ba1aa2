"""The tiny example bases and adapters are real, deterministic, and behave the way their specs say.

Every load here is a real ``transformers`` / ``PeftModel.from_pretrained`` load (no mocks), so these
tests also pin down peft 0.21.2's behaviour on the broken layouts loradoc is about.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from builders import rewrite_adapter

from loradoc.demo import builder as fx
from loradoc.demo.builder import ADAPTER_SPECS, BASE_NAMES, ExampleSet, build_example

torch = pytest.importorskip("torch")

INPUT_IDS = [[2, 300, 301, 302, 303, 304, 305, 306]]
MISSING_WARNING = "Found missing adapter keys"


# ---------------------------------------------------------------------------------------------------- helpers


def _load_base(base_dir: Path) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cls = (
        AutoModelForCausalLM
        if AutoConfig.from_pretrained(str(base_dir)).model_type == "gemma4_text"
        else AutoModelForImageTextToText
    )
    return cls.from_pretrained(str(base_dir), dtype=torch.float32).eval()


def _logits(model: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.tensor(INPUT_IDS)).logits


@cache
def _base_logits(base_dir: Path) -> Any:
    return _logits(_load_base(base_dir))


@dataclass
class Load:
    """What a real ``PeftModel.from_pretrained`` did."""

    error: BaseException | None = None
    missing_warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    max_logit_change: float = 0.0


def _real_load(base_dir: Path, adapter_dir: Path) -> Load:
    from peft import PeftModel

    result = Load()
    base = _load_base(base_dir)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, str(adapter_dir))
    except Exception as exc:  # noqa: BLE001 - the exception *is* the observation
        result.error = exc
        return result
    result.missing_warnings = [str(w.message) for w in caught if MISSING_WARNING in str(w.message)]
    # load the same files a second time under another name to read peft's own load result
    probe = model.load_adapter(str(adapter_dir), adapter_name="probe")
    result.missing = [k for k in probe.missing_keys if ".probe." in k or k.endswith(".probe")]
    result.unexpected = list(probe.unexpected_keys)
    model.set_adapter("default")
    result.max_logit_change = float((_logits(model) - _base_logits(base_dir)).abs().max())
    return result


def _keys(adapter_dir: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def _config(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))


def _group(key: str) -> str:
    if ".vision_tower." in key:
        return "vision"
    if ".audio_tower." in key:
        return "audio"
    return "lm"


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------- the tree


def test_layout_and_specs(example_root: ExampleSet) -> None:
    assert set(example_root.bases) == set(BASE_NAMES)
    assert set(example_root.adapters) == set(ADAPTER_SPECS)
    for name, spec in ADAPTER_SPECS.items():
        assert spec.name == name and spec.base in BASE_NAMES
        assert spec.expect in ("healthy", "repairable", "broken", "raises")
        assert example_root.base_for(name) == example_root.root / "bases" / spec.base
        assert example_root.adapters[name] == example_root.root / "adapters" / name
        assert (example_root.adapters[name] / fx.MARKER_NAME).is_file()
    for base_dir in example_root.bases.values():
        assert (base_dir / "config.json").is_file() and (base_dir / "model.safetensors").is_file()
        assert (base_dir / "tokenizer.json").is_file()
        assert (base_dir / "model.safetensors").stat().st_size < 4_000_000


def test_build_twice_is_byte_identical(example_root: ExampleSet, tmp_path: Path) -> None:
    again = build_example(tmp_path / "again")
    first, second = _digests(example_root.root), _digests(again.root)
    assert first == second
    assert sum(name.endswith(".safetensors") for name in first) == len(BASE_NAMES) + len(ADAPTER_SPECS)


def test_build_example_skips_complete_and_rebuilds_incomplete(tmp_path: Path) -> None:
    ex = build_example(tmp_path, names=["healthy-gemma4-text"])
    assert set(ex.bases) == {"tiny-gemma4-text"} and set(ex.adapters) == {"healthy-gemma4-text"}
    weights = ex.adapters["healthy-gemma4-text"] / "adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    build_example(tmp_path, names=["healthy-gemma4-text"])
    assert weights.stat().st_mtime_ns == stamp  # complete: kept
    (ex.adapters["healthy-gemma4-text"] / fx.MARKER_NAME).unlink()
    weights.write_bytes(b"truncated")
    build_example(tmp_path, names=["healthy-gemma4-text"])
    assert _keys(ex.adapters["healthy-gemma4-text"])  # incomplete: rebuilt
    with pytest.raises(fx.BadInputError):
        build_example(tmp_path, names=["no-such-adapter"])


# ---------------------------------------------------------------------------------------------------- bases


@pytest.mark.parametrize("name", BASE_NAMES)
def test_base_loads_back_cleanly(example_root: ExampleSet, name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    base_dir = example_root.bases[name]
    cls = AutoModelForCausalLM if name == "tiny-gemma4-text" else AutoModelForImageTextToText
    model, info = cls.from_pretrained(str(base_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert next(model.parameters()).dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    assert len(tok) == model.config.get_text_config().vocab_size == fx.VOCAB_SIZE
    assert tok.decode(tok("the patient dose").input_ids, skip_special_tokens=True) == "the patient dose"
    assert tok.bos_token_id == 2 and tok.eos_token_id == 1 and tok.pad_token_id == 0
    if name != "tiny-gemma4-text":
        pre = json.loads((base_dir / "preprocessor_config.json").read_text())
        assert len(pre["image_mean"]) == len(pre["image_std"]) == 3


def test_gemma4_bases_kv_sharing_and_towers(example_root: ExampleSet) -> None:
    from transformers import AutoModelForImageTextToText

    expected_shared = {"tiny-gemma4-e2b": [3, 4, 5], "tiny-gemma4-e4b": [4, 5]}
    for name, shared in expected_shared.items():
        model = AutoModelForImageTextToText.from_pretrained(str(example_root.bases[name]))
        text = model.config.text_config
        layers = model.model.language_model.layers
        assert [i for i, layer in enumerate(layers) if not hasattr(layer.self_attn, "k_proj")] == shared
        assert all(not hasattr(layers[i].self_attn, "v_proj") for i in shared)
        # llama.cpp's hard-coded borrowing: layer before the first shared one full, the one before sliding
        first = shared[0]
        assert text.layer_types[first - 1] == "full_attention" and text.layer_types[first - 2] == "sliding_attention"
        assert text.layer_types[-1] == "full_attention"
        # towers exist and use Gemma4ClippableLinear (weight one level down, at .linear)
        q = model.model.vision_tower.encoder.layers[0].self_attn.q_proj
        assert type(q).__name__ == "Gemma4ClippableLinear" and isinstance(q.linear, torch.nn.Linear)
        assert type(model.model.audio_tower.layers[0].self_attn.q_proj).__name__ == "Gemma4ClippableLinear"
        cfg = json.loads((example_root.bases[name] / "config.json").read_text())
        assert cfg["text_config"]["global_head_dim"] == 32 and "per_layer_config" not in cfg["text_config"]
        assert text.per_layer_config[shared[-1]].head_dim == 32  # full-attention layers use global_head_dim
    e2b = json.loads((example_root.bases["tiny-gemma4-e2b"] / "config.json").read_text())["text_config"]
    e4b = json.loads((example_root.bases["tiny-gemma4-e4b"] / "config.json").read_text())["text_config"]
    assert e2b["hidden_size"] != e4b["hidden_size"]  # a wrong base gives shape mismatches


def test_gemma3_base(example_root: ExampleSet) -> None:
    cfg = json.loads((example_root.bases["tiny-gemma3"] / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert cfg["text_config"]["query_pre_attn_scalar"] == cfg["text_config"]["head_dim"]
    assert cfg["vision_config"]["model_type"] == "siglip_vision_model"


# ------------------------------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("name", list(ADAPTER_SPECS))
def test_real_load_matches_spec(example_root: ExampleSet, name: str) -> None:
    spec = ADAPTER_SPECS[name]
    load = _real_load(example_root.base_for(name), example_root.adapters[name])
    if spec.expect == "raises":
        assert isinstance(load.error, ValueError)
        assert "Gemma4ClippableLinear" in str(load.error) and "is not supported" in str(load.error)
        return
    assert load.error is None
    if spec.expect == "healthy":
        assert load.missing_warnings == [] and load.missing == [] and load.unexpected == []
        assert load.max_logit_change > 1e-2
    elif spec.expect == "broken":
        assert load.missing_warnings or load.unexpected
        assert load.max_logit_change == 0.0


def test_textonly_on_wrapper_is_silently_dead(example_root: ExampleSet) -> None:
    name = "textonly-on-wrapper"
    keys = _keys(example_root.adapters[name])
    assert keys and all(k.startswith("base_model.model.model.layers.") for k in keys)
    load = _real_load(example_root.base_for(name), example_root.adapters[name])
    assert len(load.missing_warnings) == 1
    assert len(load.missing) == len(keys) == len(load.unexpected) == 76
    assert load.max_logit_change == 0.0


def test_gemma3_old_layout_is_converted_by_peft(example_root: ExampleSet) -> None:
    old, new = (
        _keys(example_root.adapters["gemma3-old-layout"]),
        _keys(example_root.adapters["healthy-gemma3"]),
    )
    assert all(k.startswith("base_model.model.language_model.model.layers.") for k in old)
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in new)
    assert len(old) == len(new) == 56
    load_old = _real_load(example_root.base_for("gemma3-old-layout"), example_root.adapters["gemma3-old-layout"])
    load_new = _real_load(example_root.base_for("healthy-gemma3"), example_root.adapters["healthy-gemma3"])
    assert load_old.missing_warnings == [] and load_old.unexpected == []
    assert load_old.max_logit_change == pytest.approx(load_new.max_logit_change)


def test_seed_clinical_key_groups_and_load(example_root: ExampleSet, tmp_path: Path) -> None:
    name = "seed-clinical-endpoint-extractor"
    adapter = example_root.adapters[name]
    keys = _keys(adapter)
    groups = {g: [k for k in keys if _group(k) == g] for g in ("lm", "vision", "audio")}
    orphans = [
        k
        for k in groups["lm"]
        if any(f"language_model.layers.{i}.self_attn.{p}_proj." in k for i in (4, 5) for p in "kv")
    ]
    assert (len(keys), len(groups["lm"]), len(orphans), len(groups["vision"]), len(groups["audio"])) == (
        124, 84, 8, 28, 12,
    )  # fmt: skip
    assert all(".linear.lora_" in k for k in groups["vision"] + groups["audio"])
    assert "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.lora_A.weight" in keys
    assert "base_model.model.model.audio_tower.layers.1.self_attn.v_proj.linear.lora_B.weight" in keys
    assert {k.split(".self_attn.")[-1].split(".")[0] for k in groups["audio"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
    }
    cfg = _config(adapter)
    assert cfg["target_modules"] == list(fx.LM_TARGETS) and cfg["exclude_modules"] is None
    assert (cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == (16, 16, "google/gemma-4-E4B-it")

    # as shipped: peft 0.21.2 refuses the towers' Gemma4ClippableLinear
    load = _real_load(example_root.base_for(name), adapter)
    assert isinstance(load.error, ValueError) and "is not supported" in str(load.error)

    # with a language-model-only target it loads: no warning at all, yet 48 tensors are silently dropped
    variant = rewrite_adapter(
        adapter,
        tmp_path / "lm-only",
        config_update={"target_modules": fx.LM_REGEX},
        config_drop=["exclude_modules"],
    )
    load = _real_load(example_root.base_for(name), variant)
    assert load.error is None and load.missing_warnings == [] and load.missing == []
    assert sorted(load.unexpected) == sorted(orphans + groups["vision"] + groups["audio"])
    assert load.max_logit_change > 1e-2


def test_seed_configs(example_root: ExampleSet) -> None:
    expected = {
        "seed-clinical-endpoint-extractor": ("google/gemma-4-E4B-it", 16, 16),
        "seed-cliniq-gemma4-e2b": ("unsloth/gemma-4-E2B-it", 16, 16),
        "seed-medical-qlora-e2b": ("google/gemma-4-E2B-it", 16, 16),
        "seed-pediatric-support-g4": ("unsloth/gemma-4-e4b-it-unsloth-bnb-4bit", 16, 32),
        "seed-medgemma-full-lora": ("google/medgemma-4b-it", 16, 32),
    }
    for name, (base_id, r, alpha) in expected.items():
        assert ADAPTER_SPECS[name].seed_of
        cfg = _config(example_root.adapters[name])
        assert (cfg["base_model_name_or_path"], cfg["r"], cfg["lora_alpha"]) == (base_id, r, alpha)
        assert cfg["peft_version"] == "0.18.1" and set(cfg) == fx.PEFT_0_18_1_FIELDS
        assert cfg["task_type"] == "CAUSAL_LM"
    cliniq = _config(example_root.adapters["seed-cliniq-gemma4-e2b"])
    assert cliniq["target_modules"] == fx.UNSLOTH_REGEX and cliniq["lora_dropout"] == 0
    assert cliniq["auto_mapping"]["unsloth_fixed"] is True
    assert _config(example_root.adapters["seed-pediatric-support-g4"])["lora_dropout"] == 0.05
    for name in ("seed-cliniq-gemma4-e2b", "seed-medical-qlora-e2b", "seed-pediatric-support-g4"):
        assert {_group(k) for k in _keys(example_root.adapters[name])} == {"lm"}
    # MedGemma: the 7 names silently adapt SigLIP q/k/v as well
    med = _keys(example_root.adapters["seed-medgemma-full-lora"])
    vision = [k for k in med if _group(k) == "vision"]
    assert len(med) == 68 and len(vision) == 12
    assert {k.split(".self_attn.")[-1].split(".")[0] for k in vision} == {"q_proj", "k_proj", "v_proj"}


def test_healthy_adapter_layouts(example_root: ExampleSet) -> None:
    e4b = _keys(example_root.adapters["healthy-gemma4-e4b"])
    assert len(e4b) == 76 and all(k.startswith("base_model.model.model.language_model.layers.") for k in e4b)
    assert not any(f"layers.{i}.self_attn.{p}_proj" in k for k in e4b for i in (4, 5) for p in "kv")
    cfg = _config(example_root.adapters["healthy-gemma4-e4b"])
    assert cfg["target_modules"] == fx.LM_REGEX and cfg["exclude_modules"] == fx.TOWER_EXCLUDE_REGEX
    text = _keys(example_root.adapters["healthy-gemma4-text"])
    assert len(text) == 76 and all(k.startswith("base_model.model.model.layers.") for k in text)
    assert _config(example_root.adapters["healthy-gemma4-text"])["target_modules"] == list(fx.LM_TARGETS)
    for name in ("healthy-gemma4-e4b", "healthy-gemma4-text", "healthy-gemma3"):
        assert _config(example_root.adapters[name])["base_model_name_or_path"] == ADAPTER_SPECS[name].base


def test_every_lora_tensor_is_nonzero(example_root: ExampleSet) -> None:
    from safetensors.torch import load_file

    for adapter_dir in example_root.adapters.values():
        for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
            assert tensor.dtype == torch.float32 and tensor.abs().sum() > 0, key


# ---------------------------------------------------------------------------------------------------- editing


def test_rewrite_adapter(example_root: ExampleSet, tmp_path: Path) -> None:
    src = example_root.adapters["healthy-gemma4-e4b"]
    keys = _keys(src)
    extra = {"base_model.model.model.language_model.layers.0.self_attn.x_proj.lora_A.weight": torch.ones(16, 64)}
    dst = rewrite_adapter(
        src,
        tmp_path / "edited",
        rename=lambda k: None if ".mlp." in k else k.replace("base_model.model.", "", 1),
        add=extra,
        transform=lambda k, t: t * 0 if "lora_B" in k else t,
        config_update={"r": 8},
        config_drop=["exclude_modules"],
    )
    new_keys = _keys(dst)
    assert not any(".mlp." in k for k in new_keys)
    assert len(new_keys) == len([k for k in keys if ".mlp." not in k]) + 1
    assert "model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in new_keys
    cfg = _config(dst)
    assert cfg["r"] == 8 and "exclude_modules" not in cfg
    assert (dst / "README.md").is_file() and not (dst / fx.MARKER_NAME).exists()
    assert _keys(src) == keys  # the source is untouched

    from safetensors.torch import load_file

    tensors = load_file(str(dst / "adapter_model.safetensors"))
    assert all(t.abs().sum() == 0 for k, t in tensors.items() if "lora_B" in k)
    with pytest.raises(fx.BadInputError):
        rewrite_adapter(tmp_path / "nowhere", tmp_path / "x")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(fx.BadInputError):  # never wipes a directory that is not a model/adapter
        rewrite_adapter(src, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
