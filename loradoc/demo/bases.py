"""The tiny bases: random-weight instances of transformers' own Gemma 4 / Gemma 3 classes, saved as real
snapshots (safetensors, config.json as the Hub writes it, tokenizer, preprocessor config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from loradoc.demo.files import fresh_dir, quiet_and_seeded, seed_for, write_json, write_marker
from loradoc.demo.specs import BASE_NAMES
from loradoc.demo.tokenizer import VOCAB_SIZE, save_tokenizer
from loradoc.errors import BadInputError


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
    write_json(path, cfg)


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
    out_dir = fresh_dir(Path(out_dir))
    with quiet_and_seeded(seed_for(name)):
        import torch

        if name == "tiny-gemma3":
            from transformers import Gemma3Config, Gemma3ForConditionalGeneration

            ids = save_tokenizer(out_dir, "gemma3")
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

            ids = save_tokenizer(out_dir, "gemma4")
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
        write_json(out_dir / "preprocessor_config.json", _preprocessor_config(family))
    write_marker(out_dir, "base", name)
    return out_dir
