"""Recognise what an ``adapter_config.json`` that has no ``peft_type`` is: an old LoRA, or a look-alike.

MLX-LM, AdapterHub, JAX/Tunix configs, a transformers model config or a stub each get a name and a next step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PEFT_SIGNS", "describe_non_peft", "is_legacy_lora", "lookalike"]

_MLX_KEYS = frozenset({"lora_parameters", "fine_tune_type", "adapter_path", "num_layers", "lora_layers"})
_ADAPTERHUB_INNER_KEYS = frozenset(
    {"architecture", "reduction_factor", "non_linearity", "mh_adapter", "output_adapter", "ln_before",
     "original_ln_before", "residual_before_ln", "adapter_residual_before_ln", "phm_dim", "leave_out"}
)  # fmt: skip
_MODEL_CONFIG_KEYS = frozenset(
    {"model_type", "architectures", "_name_or_path", "transformers_version", "hidden_size", "vocab_size",
     "num_hidden_layers", "torch_dtype", "dtype", "text_config", "vision_config"}
)  # fmt: skip
PEFT_SIGNS = frozenset({"peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path"})


def lookalike(d: Mapping[str, Any]) -> tuple[str, str] | None:
    """(what it looks like, next step) for known non-PEFT files, else None."""
    keys = set(d)
    if "lora_parameters" in keys or "fine_tune_type" in keys or len(keys & _MLX_KEYS) >= 2:
        return (
            "an MLX-LM adapter config",
            "load it with mlx_lm (--adapter-path), or convert its adapters.safetensors to PEFT format "
            "(peft_type, base_model_name_or_path, r, lora_alpha, target_modules) first",
        )
    inner = d.get("config")
    if (
        isinstance(inner, Mapping)
        and keys & {"model_class", "model_name", "name", "hidden_size"}
        and (set(inner) & _ADAPTERHUB_INNER_KEYS)
    ) or ("model_class" in keys and "hidden_size" in keys):
        return (
            "an AdapterHub (adapters library) config",
            "load it with the `adapters` library (model.load_adapter); peft cannot read it",
        )
    framework = d.get("framework")
    fw = framework.lower() if isinstance(framework, str) else ""
    tms = d.get("target_modules")
    einsum = isinstance(tms, list) and any(isinstance(t, str) and "einsum" in t for t in tms)
    if (
        any(w in fw for w in ("jax", "flax", "tunix", "qwix", "keras"))
        or einsum
        or ("lora_rank" in keys and "r" not in keys and "peft_type" not in keys)
    ):
        return (
            "a JAX/Tunix LoRA config",
            "export the LoRA weights to PEFT format (adapter_config.json with peft_type + "
            "adapter_model.safetensors) before using peft or loradoc",
        )
    return None


def describe_non_peft(d: Mapping[str, Any]) -> tuple[str, str]:
    keys = set(d)
    if keys & {"model_type", "architectures"} or len(keys & _MODEL_CONFIG_KEYS) >= 3:
        return (
            "a transformers model config.json",
            "this is a full model's config, not an adapter: find the real adapter_config.json "
            "(written by peft's save_pretrained) or load the model with transformers",
        )
    if len(keys) <= 1:
        what = f"a one-key stub ({next(iter(keys))!r})" if keys else "an empty object"
        return (what, "restore the real adapter_config.json written by peft's save_pretrained")
    return (
        "no peft_type field",
        'add "peft_type": "LORA" (or the right type) if it is a PEFT adapter, or re-save it with '
        "peft's save_pretrained",
    )


def is_legacy_lora(d: Mapping[str, Any]) -> bool:
    return "r" in d and "lora_alpha" in d and "target_modules" in d
