"""Tiny, real, deterministic example models and LoRA adapters.

Everything here is built with the real libraries: the bases are random-weight instances of transformers' own
Gemma 4 / Gemma 3 classes (``save_pretrained`` snapshots), the adapters are made with real ``peft``
(``get_peft_model`` + ``save_pretrained``), and the "seed" replicas reproduce the key layouts and config
fields of five real adapters from the Hub, scaled down to the tiny bases. Used by the test-suite and by
``loradoc example``.

Nothing heavy is imported at module level: torch, transformers, peft and safetensors are imported inside the
functions that need them.

Expectations (``AdapterSpec.expect``), i.e. what a real ``PeftModel.from_pretrained(base, adapter)`` does on
peft 0.21.2 / transformers 5.23:

* ``healthy``: loads, every tensor lands, no warning, the adapter changes the output.
* ``broken``: loads without an exception but (part of) the adapter silently does not apply.
* ``repairable``: loads and works, but the files carry defects loradoc rewrites (dead tensors, stale layout).
* ``raises``: ``PeftModel.from_pretrained`` raises.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loradoc.errors import BadInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADAPTER_SPECS",
    "BASE_NAMES",
    "LM_TARGETS",
    "MARKER_NAME",
    "AdapterSpec",
    "ExampleSet",
    "build_adapter",
    "build_base",
    "build_example",
    "rewrite_adapter",
]

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

_SEED_BASE_IDS: dict[str, str] = {
    "seed-clinical-endpoint-extractor": "google/gemma-4-E4B-it",
    "seed-cliniq-gemma4-e2b": "unsloth/gemma-4-E2B-it",
    "seed-medical-qlora-e2b": "google/gemma-4-E2B-it",
    "seed-pediatric-support-g4": "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit",
    "seed-medgemma-full-lora": "google/medgemma-4b-it",
}


@dataclass(frozen=True)
class ExampleSet:
    """Paths of a built example tree: ``root/bases/<base>/`` and ``root/adapters/<adapter>/``."""

    root: Path
    bases: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)

    def base_for(self, adapter: str) -> Path:
        """The directory of the tiny base an adapter belongs to."""
        return self.bases[ADAPTER_SPECS[adapter].base]

    def spec(self, adapter: str) -> AdapterSpec:
        return ADAPTER_SPECS[adapter]


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@contextmanager
def _quiet_and_seeded(seed: int) -> Iterator[None]:
    """Fork torch's RNG (callers' RNG state stays untouched), seed it, hide transformers' progress bars."""
    import torch
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft 0.21.2 calls transformers' deprecated is_gradient_checkpointing: noise, not our business
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _write_json(path: Path, data: dict[str, Any], *, peft_style: bool = False) -> None:
    if peft_style:  # exactly how peft's PeftConfig.save_pretrained writes adapter_config.json
        text = json.dumps(data, indent=2, sort_keys=True)
    else:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")


def _write_marker(path: Path, kind: str, name: str) -> None:
    _write_json(path / MARKER_NAME, {"kind": kind, "name": name, "fixtures_version": FIXTURES_VERSION})


def _is_complete(path: Path) -> bool:
    marker = path / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("fixtures_version") == FIXTURES_VERSION


_REPLACEABLE = (MARKER_NAME, "adapter_config.json", "adapter_model.safetensors", "config.json")


def _fresh_dir(path: Path) -> Path:
    """An empty directory at ``path``. An existing one is only wiped if it is empty or looks like a model /
    adapter / fixture directory: a typo must never delete someone's unrelated files."""
    if path.exists():
        if not path.is_dir():
            raise BadInputError(f"{path} exists and is not a directory", "choose another output path")
        if any(path.iterdir()) and not any((path / n).exists() for n in _REPLACEABLE):
            raise BadInputError(
                f"{path} is not empty and holds no model or adapter",
                "choose an empty or new output directory",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# tokenizer

_GEMMA4_CONTROL = (
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>",
    "<|channel>", "<channel|>",
)  # fmt: skip
_GEMMA3_CONTROL = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "patient",
    "dose",
    "mg",
    "daily",
    "history",
    "blood",
    "pressure",
    "heart",
    "rate",
    "pain",
    "fever",
    "cough",
    "image",
    "audio",
    "model",
    "user",
    "hello",
    "world",
    "adapter",
    "lora",
    "gemma",
    "clinical",
    "trial",
    "endpoint",
    "child",
    "support",
    "medical",
    "report",
    "normal",
    "chest",
    "scan",
    "left",
    "right",
    "no",
    "yes",
]

VOCAB_SIZE = 512


def _tokenizer_vocab(control: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """A Gemma-style (SentencePiece-like BPE, byte fallback) vocabulary of exactly VOCAB_SIZE tokens."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *control]
    tokens: list[str] = list(specials)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁"] + [chr(c) for c in range(33, 127)]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    budget = VOCAB_SIZE - 16  # keep a few <unusedN> like the real Gemma vocabularies
    for word in _WORDS:
        cur = "▁"
        for ch in word:
            nxt = cur + ch
            if nxt not in seen:
                if len(tokens) >= budget:
                    break
                merges.append((cur, ch))
                tokens.append(nxt)
                seen.add(nxt)
            cur = nxt
    unused = [f"<unused{i}>" for i in range(VOCAB_SIZE - len(tokens))]
    tokens += unused
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE
    return vocab, merges, [*control, *unused]


def _save_tokenizer(out_dir: Path, family: Literal["gemma4", "gemma3"]) -> dict[str, int]:
    """Save a tiny GemmaTokenizer (tokenizer.json + tokenizer_config.json); return the control-token ids."""
    from transformers import GemmaTokenizer

    control = _GEMMA4_CONTROL if family == "gemma4" else _GEMMA3_CONTROL
    vocab, merges, extra = _tokenizer_vocab(control)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(control))
    tok.add_tokens([t for t in extra if t not in control], special_tokens=True)
    tok.save_pretrained(str(out_dir))
    return {t: vocab[t] for t in control}


# ----------------------------------------------------------------------------------------------------------
# bases


def _gemma4_text_kwargs(kind: Literal["e2b", "e4b"]) -> dict[str, Any]:
    s, f = "sliding_attention", "full_attention"
    common: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "vocab_size_per_layer_input": VOCAB_SIZE,
        "hidden_size_per_layer_input": 8,
        "num_hidden_layers": 6,
        "head_dim": 16,
        "global_head_dim": 32,
        "sliding_window": 32,
        "max_position_embeddings": 1024,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    if kind == "e2b":
        # real E2B: 35 layers, 8/1 heads, 4:1 sliding:full, 20 KV-shared, double-wide MLP on shared layers.
        # tiny: 3 shared (3,4,5); layer 2 (before the first shared) full, layer 1 sliding (llama.cpp).
        return common | {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "num_kv_shared_layers": 3,
            "use_double_wide_mlp": True,
            "layer_types": [s, s, f, s, s, f],
        }
    # real E4B: 42 layers, 8/2 heads, 5:1 sliding:full, 18 KV-shared. tiny: 2 shared (4,5); 3 full, 2 sliding.
    return common | {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_kv_shared_layers": 2,
        "use_double_wide_mlp": False,
        "layer_types": [s, s, s, f, s, f],
    }


def _gemma4_vision_kwargs() -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "patch_size": 4,
        "pooling_kernel_size": 2,
        "position_embedding_size": 64,
        "max_position_embeddings": 1024,
        "use_clipped_linears": True,
    }


def _gemma4_audio_kwargs() -> dict[str, Any]:
    # subsampling_conv_channels stay at the real (128, 32): the input projection assumes 128 mel bins.
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "output_proj_dims": 48,
    }


def _hubify_gemma4_config(out_dir: Path) -> None:
    """Make config.json look like the real Hub snapshots: ``global_head_dim`` instead of ``per_layer_config``.

    transformers 5.23 serialises the per-layer head_dim override as ``per_layer_config``; every real Gemma 4
    config.json (and llama.cpp's converter) uses ``global_head_dim``. Loading either yields the same model.
    """
    path = out_dir / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    text = cfg.get("text_config", cfg)
    per_layer = text.pop("per_layer_config", None) or {}
    head_dims = {v.get("head_dim") for v in per_layer.values() if isinstance(v, dict)} - {None}
    text["global_head_dim"] = head_dims.pop() if head_dims else text["head_dim"]
    text["num_global_key_value_heads"] = None
    _write_json(path, cfg)


def _preprocessor_config(family: Literal["gemma4", "gemma3"]) -> dict[str, Any]:
    if family == "gemma3":  # real google/gemma-3-4b-it fields, scaled (16px image, 4 soft tokens)
        return {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": 4,
            "image_std": [0.5, 0.5, 0.5],
            "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None,
            "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 1 / 255,
            "size": {"height": 16, "width": 16},
        }
    return {  # Gemma4ImageProcessor defaults (no normalisation: the model rescales), scaled patches
        "do_normalize": False,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.0, 0.0, 0.0],
        "image_processor_type": "Gemma4ImageProcessor",
        "image_std": [1.0, 1.0, 1.0],
        "max_soft_tokens": 16,
        "patch_size": 4,
        "pooling_kernel_size": 2,
        "processor_class": "Gemma4Processor",
        "resample": 3,
        "rescale_factor": 1 / 255,
    }


def build_base(name: str, out_dir: Path) -> Path:
    """Build one tiny random base (float32 safetensors snapshot with config, tokenizer) into ``out_dir``."""
    if name not in BASE_NAMES:
        raise BadInputError(f"unknown tiny base {name!r}", f"use one of {', '.join(BASE_NAMES)}")
    out_dir = _fresh_dir(Path(out_dir))
    with _quiet_and_seeded(_seed_for(name)):
        import torch

        if name == "tiny-gemma3":
            from transformers import Gemma3Config, Gemma3ForConditionalGeneration

            ids = _save_tokenizer(out_dir, "gemma3")
            text = {
                "vocab_size": VOCAB_SIZE,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,  # = head_dim (llama.cpp assumes it for the tiny model)
                "sliding_window": 32,
                "max_position_embeddings": 1024,
            }
            vision = {
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 16,
                "patch_size": 4,
                "vision_use_head": False,
            }
            cfg = Gemma3Config(
                text_config=text,
                vision_config=vision,
                mm_tokens_per_image=4,
                boi_token_index=ids["<start_of_image>"],
                eoi_token_index=ids["<end_of_image>"],
                image_token_index=ids["<image_soft_token>"],
            )
            model: Any = Gemma3ForConditionalGeneration(cfg)
            family: Literal["gemma4", "gemma3"] = "gemma3"
        else:
            from transformers import (
                Gemma4Config,
                Gemma4ForCausalLM,
                Gemma4ForConditionalGeneration,
                Gemma4TextConfig,
            )

            ids = _save_tokenizer(out_dir, "gemma4")
            family = "gemma4"
            if name == "tiny-gemma4-text":
                model = Gemma4ForCausalLM(Gemma4TextConfig(**_gemma4_text_kwargs("e4b")))
            else:
                kind: Literal["e2b", "e4b"] = "e2b" if name == "tiny-gemma4-e2b" else "e4b"
                cfg4 = Gemma4Config(
                    text_config=_gemma4_text_kwargs(kind),
                    vision_config=_gemma4_vision_kwargs(),
                    audio_config=_gemma4_audio_kwargs(),
                    boi_token_id=ids["<|image>"],
                    eoi_token_id=ids["<image|>"],
                    image_token_id=ids["<|image|>"],
                    video_token_id=ids["<|video|>"],
                    boa_token_id=ids["<|audio>"],
                    eoa_token_index=ids["<audio|>"],
                    audio_token_id=ids["<|audio|>"],
                )
                model = Gemma4ForConditionalGeneration(cfg4)
        model = model.to(torch.float32).eval()
        model.save_pretrained(str(out_dir), safe_serialization=True)
    if family == "gemma4":
        _hubify_gemma4_config(out_dir)
    if name != "tiny-gemma4-text":
        _write_json(out_dir / "preprocessor_config.json", _preprocessor_config(family))
    _write_marker(out_dir, "base", name)
    return out_dir


# ----------------------------------------------------------------------------------------------------------
# adapters


def _randomize_lora(model: Any, seed: int) -> None:
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
    _randomize_lora(pm, seed)
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
    _write_json(path, cfg, peft_style=True)
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


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"})


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
    out_dir = _fresh_dir(Path(out_dir))
    spec = ADAPTER_SPECS[name]
    seed = _seed_for(name)
    local_base = spec.base  # the tiny base's "id" for the non-seed adapters
    targets = list(LM_TARGETS)

    with _quiet_and_seeded(seed):
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
                _peft_save(_load_base(base_dir), _lora_config(LM_REGEX), src, _seed_for("healthy-gemma3"))
                rewrite_adapter(src, out_dir, rename=_to_gemma3_v4_layout)
            _finish_adapter(out_dir, name, base_id=local_base)
        elif name == "seed-clinical-endpoint-extractor":
            # LM on every projection + the towers' inner .linear, injected for real; then the k/v orphans.
            both = rf"(?:{LM_REGEX})|(?:{TOWER_LINEAR_REGEX})"
            _peft_save(_load_base(base_dir), _lora_config(both), out_dir, seed)
            from safetensors.torch import load_file

            weights_path = out_dir / "adapter_model.safetensors"
            tensors = load_file(str(weights_path))
            tensors.update(_kv_orphans(base_dir, 16, seed + 1))
            _save_tensors(weights_path, tensors)
            _finish_adapter(
                out_dir,
                name,
                base_id=_SEED_BASE_IDS[name],
                target_modules=targets,
                updates={"exclude_modules": None, "lora_dropout": 0.05},
                peft_0_18_1=True,
            )
        elif name == "seed-cliniq-gemma4-e2b":
            _peft_save(_load_base(base_dir), _lora_config(UNSLOTH_REGEX, dropout=0), out_dir, seed)
            _finish_adapter(
                out_dir,
                name,
                base_id=_SEED_BASE_IDS[name],
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
        elif name == "seed-medical-qlora-e2b":
            cfg = _lora_config(LM_REGEX, dropout=0.05)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(
                out_dir,
                name,
                base_id=_SEED_BASE_IDS[name],
                target_modules=targets,
                updates={"exclude_modules": None},
                peft_0_18_1=True,
            )
        elif name == "seed-pediatric-support-g4":
            cfg = _lora_config(LM_REGEX, alpha=32, dropout=0.05)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(
                out_dir,
                name,
                base_id=_SEED_BASE_IDS[name],
                target_modules=targets,
                updates={"exclude_modules": None},
                peft_0_18_1=True,
            )
        elif name == "seed-medgemma-full-lora":
            cfg = _lora_config(targets, alpha=32, dropout=0.05)
            _peft_save(_load_base(base_dir), cfg, out_dir, seed)
            _finish_adapter(out_dir, name, base_id=_SEED_BASE_IDS[name], peft_0_18_1=True)
        else:  # pragma: no cover - ADAPTER_SPECS and this switch are kept in step
            raise AssertionError(name)
    _write_marker(out_dir, "adapter", name)
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


# ----------------------------------------------------------------------------------------------------------
# editing


def rewrite_adapter(
    src: Path,
    dst: Path,
    *,
    rename: Callable[[str], str | None] | None = None,
    add: dict[str, torch.Tensor] | None = None,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    config_update: dict[str, Any] | None = None,
    config_drop: Iterable[str] = (),
) -> Path:
    """Copy an adapter directory, editing its tensors and config on the way (for making broken variants).

    ``rename(key)`` returns the new key, or None to drop the tensor. ``transform(new_key, tensor)`` returns
    the tensor to write. ``add`` adds (or overwrites) tensors. ``config_update`` / ``config_drop`` edit
    adapter_config.json. Other files are copied unchanged (the fixture marker is not); ``dst`` is replaced
    if it exists. Returns ``dst``.
    """
    from safetensors.torch import load_file

    src, dst = Path(src), Path(dst)
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise BadInputError(f"no adapter_model.safetensors in {src}", "pass an adapter directory")
    if src.resolve() == dst.resolve():
        raise BadInputError("rewrite_adapter needs a destination different from the source")
    tensors = load_file(str(weights))
    out: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        new_key = rename(key) if rename is not None else key
        if new_key is None:
            continue
        tensor = tensors[key]
        if transform is not None:
            tensor = transform(new_key, tensor)
        out[new_key] = tensor
    out.update(add or {})

    _fresh_dir(dst)
    for item in sorted(src.iterdir()):
        if item.name in ("adapter_model.safetensors", MARKER_NAME):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    _save_tensors(dst / "adapter_model.safetensors", out)

    cfg_path = dst / "adapter_config.json"
    drop = set(config_drop)
    if cfg_path.is_file() and (config_update or drop):
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = {k: v for k, v in cfg.items() if k not in drop}
        cfg.update(config_update or {})
        _write_json(cfg_path, cfg, peft_style=True)
    return dst


# ----------------------------------------------------------------------------------------------------------
# the whole example tree


def build_example(root: Path, *, names: Iterable[str] | None = None) -> ExampleSet:
    """Build ``root/bases/<base>/`` and ``root/adapters/<adapter>/``: all of them, or only ``names`` (base
    and/or adapter names) plus the bases those adapters need.

    Items already complete (marker file present, written last) are kept. Each item is built in a temporary
    sibling and renamed into place, so an interrupted build never leaves a half-written item behind."""
    root = Path(root)
    wanted = list(BASE_NAMES) + list(ADAPTER_SPECS) if names is None else list(names)
    unknown = [n for n in wanted if n not in BASE_NAMES and n not in ADAPTER_SPECS]
    if unknown:
        raise BadInputError(
            f"unknown example name(s): {', '.join(unknown)}",
            f"choose from {', '.join([*BASE_NAMES, *ADAPTER_SPECS])}",
        )
    adapters = [n for n in wanted if n in ADAPTER_SPECS]
    bases = [b for b in BASE_NAMES if b in wanted or any(ADAPTER_SPECS[a].base == b for a in adapters)]

    result = ExampleSet(root=root)
    for base in bases:
        result.bases[base] = _build_atomically(root / "bases" / base, lambda d, b=base: build_base(b, d))
    for adapter in adapters:
        base_dir = result.bases[ADAPTER_SPECS[adapter].base]
        result.adapters[adapter] = _build_atomically(
            root / "adapters" / adapter, lambda d, a=adapter, bd=base_dir: build_adapter(a, bd, d)
        )
    return result


def _build_atomically(final: Path, build: Callable[[Path], Path]) -> Path:
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.building-{os.getpid()}"
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
