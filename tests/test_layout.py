"""The key-path vocabulary, tested by itself."""

from __future__ import annotations

import pytest

from loradoc.model.layout import Address, address_of, apply_renames, parse_key, tower_of


@pytest.mark.parametrize(
    ("key", "module", "param", "kind", "prefixed"),
    [
        (
            "base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_A.weight",
            "model.language_model.layers.3.self_attn.q_proj",
            "lora_A.weight",
            "lora_A",
            True,
        ),
        (
            "model.layers.0.mlp.down_proj.lora_B.weight",
            "model.layers.0.mlp.down_proj",
            "lora_B.weight",
            "lora_B",
            False,
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "model.embed_tokens",
            "lora_embedding_A",
            "lora_embedding_A",
            True,
        ),
        (
            "base_model.model.model.layers.1.self_attn.v_proj.lora_magnitude_vector.weight",
            "model.layers.1.self_attn.v_proj",
            "lora_magnitude_vector.weight",
            "magnitude",
            True,
        ),
        ("base_model.model.lm_head.weight", "lm_head", "weight", "other", True),
    ],
)
def test_parse_key(key: str, module: str, param: str, kind: str, prefixed: bool) -> None:
    p = parse_key(key)
    assert (p.module, p.param, p.kind, p.had_peft_prefix) == (module, param, kind, prefixed)


def test_parse_key_with_adapter_name() -> None:
    p = parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    assert p.adapter_name == "default"
    assert p.module == "model.layers.0.self_attn.q_proj"
    assert p.param == "lora_A.weight"


def test_text_only_and_wrapper_paths_share_an_address() -> None:
    a = address_of("model.layers.7.self_attn.q_proj")
    b = address_of("model.language_model.layers.7.self_attn.q_proj")
    c = address_of("language_model.model.layers.7.self_attn.q_proj")  # transformers 4.x Gemma 3 layout
    assert a == b == c == Address("language", 7, "self_attn.q_proj")


def test_clippable_inner_linear_shares_the_wrapper_address() -> None:
    wrapper = "model.vision_tower.encoder.layers.2.self_attn.q_proj"
    inner = wrapper + ".linear"
    assert address_of(inner) == address_of(wrapper)
    assert address_of(inner).tower == "vision"
    # a vision layer never collides with the language layer of the same index
    assert address_of(inner) != address_of("model.language_model.layers.2.self_attn.q_proj")


@pytest.mark.parametrize(
    ("module", "tower"),
    [
        ("model.audio_tower.layers.0.self_attn.q_proj", "audio"),
        ("model.vision_tower.vision_model.encoder.layers.0.self_attn.k_proj", "vision"),
        ("model.embed_vision.embedding_projection", "projector"),
        ("model.multi_modal_projector.mm_input_projection", "projector"),
        ("model.language_model.layers.0.mlp.up_proj", "language"),
        ("lm_head", "language"),
    ],
)
def test_tower_of(module: str, tower: str) -> None:
    assert tower_of(module) == tower


def test_apply_renames_first_match_wins() -> None:
    renames = [("^language_model.lm_head", "lm_head"), ("^language_model", "model.language_model")]
    assert apply_renames("language_model.lm_head", renames) == "lm_head"
    assert apply_renames("language_model.layers.0.q_proj", renames) == "model.language_model.layers.0.q_proj"
    assert apply_renames("model.language_model.layers.0", renames) == "model.language_model.layers.0"


QWEN_VL_TOWERS = {"model.visual": "vision"}
LLAVA_TOWERS = {"model.vision_tower": "vision", "model.multi_modal_projector": "projector"}


@pytest.mark.parametrize(
    ("module", "towers", "tower"),
    [
        # a base profile's towers (found from the model) decide, under any saved layout
        ("model.visual.blocks.0.mlp.gate_proj", QWEN_VL_TOWERS, "vision"),
        ("visual.blocks.0.attn.qkv", QWEN_VL_TOWERS, "vision"),  # transformers 4.x Qwen2-VL
        ("model.language_model.layers.0.mlp.gate_proj", QWEN_VL_TOWERS, "language"),
        ("model.layers.0.mlp.gate_proj", QWEN_VL_TOWERS, "language"),
        ("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj", LLAVA_TOWERS, "vision"),
        ("multi_modal_projector.linear_1", LLAVA_TOWERS, "projector"),
        ("model.connector.modality_projection.proj", {"model.connector": "projector"}, "projector"),
        # names of other models' towers still mark a tower key saved for another base
        ("model.audio_tower.layers.0.self_attn.q_proj", QWEN_VL_TOWERS, "audio"),
        # without a profile, only names: Qwen's `visual` is not one of them
        ("model.visual.blocks.0.mlp.gate_proj", None, "language"),
    ],
)
def test_tower_of_uses_the_profiles_towers(module: str, towers: dict[str, str] | None, tower: str) -> None:
    assert tower_of(module, towers) == tower


def test_a_vision_block_does_not_share_an_address_with_a_text_layer() -> None:
    vision = address_of("model.visual.blocks.0.mlp.gate_proj", QWEN_VL_TOWERS)
    text = address_of("model.language_model.layers.0.mlp.gate_proj", QWEN_VL_TOWERS)
    assert vision == Address("vision", 0, "mlp.gate_proj") and text == Address("language", 0, "mlp.gate_proj")
    # 4.x and 5.x paths of one tower module share an address
    assert address_of("visual.blocks.0.attn.qkv", QWEN_VL_TOWERS) == address_of(
        "model.visual.blocks.0.attn.qkv", QWEN_VL_TOWERS
    )
    assert address_of("model.visual.merger.mlp.0", QWEN_VL_TOWERS) == Address("vision", None, "mlp.0")
    # PaliGemma's projector has a child named `linear`: not a Gemma4ClippableLinear's inner linear
    pali = {"model.multi_modal_projector": "projector"}
    assert address_of("model.multi_modal_projector.linear", pali) == Address("projector", None, "linear")
