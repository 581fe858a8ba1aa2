"""What the bundled example holds: the tiny bases, the adapters (with what a real load does with each) and the
target strings they are made with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Bumped whenever the bytes a build produces change; written into every marker file.
FIXTURES_VERSION = 1
MARKER_NAME = ".loradoc-fixture.json"

Expect = Literal["healthy", "repairable", "broken", "raises"]

LM_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TARGET_ALT = "|".join(LM_TARGETS)
#: The language-model-only target regex (works on every Gemma 4 / Gemma 3 wrapper).
LM_REGEX = rf".*language_model.*\.({_TARGET_ALT})"
#: ``exclude_modules`` regex that really excludes the towers (a *list* ["vision_tower", ...] does not).
TOWER_EXCLUDE_REGEX = r".*\.(audio_tower|vision_tower)\..*"
#: What peft "all-linear" (and the real seed adapter) produces on Gemma 4 towers: the inner ``.linear`` child
#: of each Gemma4ClippableLinear.
TOWER_LINEAR_REGEX = rf".*\.(vision_tower|audio_tower)\..*\.({_TARGET_ALT})\.linear"
#: The target_modules string Unsloth writes for vision models (``FastModel.get_peft_model``).
UNSLOTH_REGEX = (
    r"(?:.*?(?:language|text).*?(?:self_attn|attention|attn|mlp|feed_forward|ffn|dense).*?"
    r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).*?)|"
    r"(?:\bmodel\.layers\.[\d]{1,}\.(?:self_attn|attention|attn|mlp|feed_forward|ffn|dense)\."
    r"(?:(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)))"
)

#: The exact field set of an adapter_config.json written by peft 0.18.1's ``save_pretrained`` (taken from real
#: 0.18.1 configs: a Nemotron QLoRA log and mark941108/SilverGuard_CDS). peft 0.21.2 adds lora_ga_config,
#: velora_config, monteclora_config, use_bdlora and kasa_config.
PEFT_0_18_1_FIELDS: frozenset[str] = frozenset(
    {
        "alora_invocation_tokens", "alpha_pattern", "arrow_config", "auto_mapping", "base_model_name_or_path",
        "bias", "corda_config", "ensure_weight_tying", "eva_config", "exclude_modules", "fan_in_fan_out",
        "inference_mode", "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform",
        "loftq_config", "lora_alpha", "lora_bias", "lora_dropout", "megatron_config", "megatron_core",
        "modules_to_save", "peft_type", "peft_version", "qalora_group_size", "r", "rank_pattern", "revision",
        "target_modules", "target_parameters", "task_type", "trainable_token_indices", "use_dora",
        "use_qalora",
        "use_rslora",
    }
)  # fmt: skip

BASE_NAMES: tuple[str, ...] = ("tiny-gemma4-e2b", "tiny-gemma4-e4b", "tiny-gemma4-text", "tiny-gemma3")

#: Real Hub ids the tiny bases stand in for.
BASE_REAL_IDS: dict[str, str] = {
    "tiny-gemma4-e2b": "google/gemma-4-E2B-it",
    "tiny-gemma4-e4b": "google/gemma-4-E4B-it",
    "tiny-gemma4-text": "google/gemma-4-E4B-it",
    "tiny-gemma3": "google/medgemma-4b-it",
}


@dataclass(frozen=True)
class AdapterSpec:
    """One example adapter: which tiny base it belongs to, what it is, and what a real load does with it."""

    name: str
    base: str
    description: str
    seed_of: str | None
    expect: Expect


ADAPTER_SPECS: dict[str, AdapterSpec] = {
    s.name: s
    for s in (
        AdapterSpec(
            "healthy-gemma4-e4b",
            "tiny-gemma4-e4b",
            "LoRA on the language model's q,k,v,o,gate,up,down (regex target limited to language_model, "
            "towers excluded by regex). KV-shared layers have no k/v LoRA.",
            None,
            "healthy",
        ),
        AdapterSpec(
            "healthy-gemma4-text",
            "tiny-gemma4-text",
            "LoRA on Gemma4ForCausalLM with the 7 projection names as a list (keys base_model.model.model.layers.N).",
            None,
            "healthy",
        ),
        AdapterSpec(
            "healthy-gemma3",
            "tiny-gemma3",
            "LoRA on Gemma3ForConditionalGeneration, regex target limited to language_model, 7 projections.",
            None,
            "healthy",
        ),
        AdapterSpec(
            "gemma3-old-layout",
            "tiny-gemma3",
            "healthy-gemma3 with keys in the transformers-4.x layout "
            "(base_model.model.language_model.model.layers.N); peft 0.21.2 converts it on load with the "
            "transformers weight-conversion rules.",
            None,
            "healthy",
        ),
        AdapterSpec(
            "textonly-on-wrapper",
            "tiny-gemma4-e4b",
            "Trained on the text-only Gemma4ForCausalLM (same text dims as tiny-gemma4-e4b) with "
            "Unsloth's regex target, keys base_model.model.model.layers.N, used against the "
            "Gemma4ForConditionalGeneration wrapper: 'Found missing adapter keys', every LoRA stays at "
            "init (B = 0), output == base.",
            None,
            "broken",
        ),
        AdapterSpec(
            "seed-clinical-endpoint-extractor",
            "tiny-gemma4-e4b",
            "QLoRA r16/alpha16 made on transformers 5.5.0: LM LoRAs on all 7 projections of every text "
            "layer incl. k/v on the KV-shared layers (modules that no longer exist: silently dropped), "
            "plus vision- and audio-tower LoRAs at the Gemma4ClippableLinear inner '.linear' path; "
            "config says the 7 names as a list with no exclude_modules, which makes peft 0.21.2 raise "
            "'Target module Gemma4ClippableLinear(...) is not supported'.",
            "Shubh-0789/gemma4-clinical-endpoint-extractor",
            "raises",
        ),
        AdapterSpec(
            "seed-cliniq-gemma4-e2b",
            "tiny-gemma4-e2b",
            "Unsloth-trained r16/alpha16/dropout 0: target_modules is Unsloth's language|text regex "
            "string, LM keys only; Unsloth-style config (task_type CAUSAL_LM, "
            "auto_mapping.unsloth_fixed).",
            "kcirtapfromspace/cliniq-gemma4-e2b-unsloth-v62",
            "healthy",
        ),
        AdapterSpec(
            "seed-medical-qlora-e2b",
            "tiny-gemma4-e2b",
            "QLoRA r16/alpha16, LM-only keys, config written by peft 0.18.1: the 7 names as a list and "
            "no exclude_modules, so peft 0.21.2 matches the towers' Gemma4ClippableLinear and raises.",
            "fulvian/gemma-4-e2b-medical-qlora-adapter",
            "raises",
        ),
        AdapterSpec(
            "seed-pediatric-support-g4",
            "tiny-gemma4-e4b",
            "r16/alpha32/dropout 0.05 on the Unsloth bnb-4bit E4B base id, LM keys, the 7 names as a "
            "list (no exclude_modules): peft 0.21.2 raises on the towers' Gemma4ClippableLinear.",
            "albertoanalytics/pediatric-support-g4",
            "raises",
        ),
        AdapterSpec(
            "seed-medgemma-full-lora",
            "tiny-gemma3",
            "r16/alpha32, the 7 names as a list on MedGemma (Gemma 3): adapts every LM layer and, "
            "silently, the SigLIP vision tower's q/k/v too (which llama.cpp's LoRA converter drops).",
            "saillab/medgemma-4b-full-lora-mimic-mt-12k",
            "healthy",
        ),
    )
}

SEED_BASE_IDS: dict[str, str] = {
    "seed-clinical-endpoint-extractor": "google/gemma-4-E4B-it",
    "seed-cliniq-gemma4-e2b": "unsloth/gemma-4-E2B-it",
    "seed-medical-qlora-e2b": "google/gemma-4-E2B-it",
    "seed-pediatric-support-g4": "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit",
    "seed-medgemma-full-lora": "google/medgemma-4b-it",
}
