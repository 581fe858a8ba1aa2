"""Understand any ``adapter_config.json``: PEFT configs of every era, and the look-alikes that are not PEFT.

This module is on the fast, header-only path: it imports only the standard library and ``packaging``
(never peft, torch or transformers). The facts about peft that it needs are hard-coded below, with where they
came from.

What an older peft does when it meets a field it does not know (read in each release's ``config.py``):

* peft <= 0.5.x: ``PeftConfig.from_pretrained`` builds a default config and ``setattr``s only the keys the
  class already has (``if hasattr(config, key)``), so unknown fields are **silently ignored**.
* peft 0.6.0 - 0.13.x: the loaded JSON is passed as ``config_cls(**kwargs)``, so *any* unknown key, even one
  whose value is ``null`` or ``false``, makes loading fail with
  ``TypeError: __init__() got an unexpected keyword argument '<field>'``.
* peft >= 0.14.0: ``PeftConfigMixin.from_peft_type`` catches exactly that ``TypeError``, removes the unknown
  keys (``_check_and_remove_unused_kwargs``) and warns "Unexpected keyword arguments [...] for class
  LoraConfig, these are ignored ... upgrade the PEFT version". The adapter loads, but a dropped field with a
  non-default value (``use_dora: true``, ``target_parameters: [...]``) silently changes what is loaded. In
  0.21.2 ``PeftConfig.from_pretrained`` calls ``check_kwargs`` (a no-op for LoRA; OFT uses it to refuse
  configs without ``oft_block_size``) and then ``from_peft_type``; ``from_json_file`` drops
  ``runtime_config``.

A ``peft_type`` that the installed peft does not know fails earlier, with ``KeyError`` in
``PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]`` (the lookup is case-sensitive: ``"lora"`` fails too), and a file
without ``peft_type`` fails with ``KeyError: 'peft_type'`` in ``PeftConfig._get_peft_type``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from loradoc.errors import MalformedConfigError, MissingFileError, NotPeftConfigError

__all__ = [
    "AdapterConfig",
    "FIELD_INTRODUCED",
    "KNOWN_PEFT_TYPES",
    "PEFT_TYPE_INTRODUCED",
    "PEFT_VERSION_KNOWN",
    "fields_unsupported_by",
    "is_local_path",
    "load_adapter_config",
    "parse_adapter_config",
    "required_peft_specifier",
    "unknown_field_behaviour",
]

CONFIG_NAME = "adapter_config.json"

# The newest peft release whose field lists are encoded below (the one in the project's venv).
PEFT_VERSION_KNOWN = "0.21.2"

# ---------------------------------------------------------------------------------------------------------
# peft facts
# ---------------------------------------------------------------------------------------------------------

# Every member of ``peft.utils.peft_types.PeftType`` in peft 0.21.2 (read once from the installed package and
# copied here; this module must not import peft).
KNOWN_PEFT_TYPES: frozenset[str] = frozenset(
    {
        "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA", "ADALORA", "ADAMSS",
        "BOFT", "ADAPTION_PROMPT", "IA3", "BEFT", "LILY", "LOHA", "LOKR", "OFT", "POLY", "LN_TUNING", "VERA",
        "FROD", "PVERA", "FOURIERFT", "GLORA", "XLORA", "HRA", "VBLORA", "UNILORA", "CPT", "MISS", "RANDLORA",
        "ROAD", "TRAINABLE_TOKENS", "HIRA", "SHIRA", "C3A", "WAVEFT", "OSF", "DELORA", "GRALORA", "CARTRIDGE",
        "TINYLORA", "PSOFT", "PEANUT", "SHADOW", "SUPERTUNING", "DEFT",
    }
)  # fmt: skip

# The release whose PeftType enum first has each member. Verified by diffing the enum in the x.y.0 wheel of
# every minor release 0.2.0 ... 0.21.0 (patch releases were not checked one by one).
_PEFT_TYPES_BY_RELEASE: dict[str, tuple[str, ...]] = {
    "0.2.0": ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA"),
    "0.3.0": ("ADALORA", "ADAPTION_PROMPT"),
    "0.4.0": ("IA3",),
    "0.6.0": ("MULTITASK_PROMPT_TUNING", "LOHA", "LOKR"),
    "0.7.0": ("OFT",),
    "0.8.0": ("POLY",),
    "0.11.0": ("BOFT", "LN_TUNING", "VERA"),
    "0.12.0": ("FOURIERFT", "XLORA", "HRA"),
    "0.13.0": ("VBLORA",),
    "0.14.0": ("CPT", "BONE"),
    "0.15.0": ("TRAINABLE_TOKENS",),
    "0.16.0": ("RANDLORA", "C3A"),
    "0.17.0": ("MISS", "SHIRA"),
    "0.18.0": ("ROAD", "WAVEFT", "OSF", "DELORA"),
    "0.19.0": ("ADAMSS", "LILY", "PVERA", "GRALORA", "CARTRIDGE", "TINYLORA", "PSOFT", "PEANUT"),
    "0.20.0": ("BEFT", "FROD", "GLORA", "UNILORA", "HIRA", "DEFT"),
    "0.21.0": ("SHADOW", "SUPERTUNING"),
}
PEFT_TYPE_INTRODUCED: dict[str, str] = {t: v for v, ts in _PEFT_TYPES_BY_RELEASE.items() for t in ts}
# Types that a later release dropped: BONE was removed from PeftType in 0.19.0 (its successor is MISS).
PEFT_TYPE_REMOVED: dict[str, str] = {"BONE": "0.19.0"}

# The config fields of each config class, by the release that introduced them. Verified by parsing the
# dataclass fields (including inherited ones) of each class in the x.y.0 wheel of every minor release
# 0.2.0 ... 0.21.0 and in the installed 0.21.2, and diffing consecutive releases. Exact to the minor release;
# a field that arrived in a patch release (none known) would be dated to the next minor.
# Where a brief or folklore says otherwise, the wheels win: use_rslora is 0.8.0 (not 0.7.0),
# use_qalora/qalora_group_size are 0.16.0 (not 0.17.0), alora_invocation_tokens is 0.18.0.
_LORA_FIELDS_BY_RELEASE: dict[str, tuple[str, ...]] = {
    "0.2.0": (
        "peft_type", "base_model_name_or_path", "task_type", "inference_mode", "r", "target_modules",
        "lora_alpha", "lora_dropout", "merge_weights", "fan_in_fan_out", "enable_lora", "bias",
        "modules_to_save",
    ),
    "0.3.0": ("init_lora_weights",),
    "0.4.0": ("auto_mapping", "revision", "layers_to_transform", "layers_pattern"),
    "0.6.0": ("rank_pattern", "alpha_pattern"),
    "0.7.0": ("megatron_config", "megatron_core", "loftq_config"),
    "0.8.0": ("use_rslora",),
    "0.9.0": ("use_dora",),
    "0.10.0": ("layer_replication",),
    "0.12.0": ("runtime_config",),  # never written by save_pretrained; from_json_file drops it (>= 0.12)
    "0.14.0": ("exclude_modules", "eva_config", "lora_bias"),
    "0.15.0": ("trainable_token_indices", "corda_config"),
    "0.16.0": ("use_qalora", "qalora_group_size"),
    "0.17.0": ("target_parameters",),
    "0.18.0": ("peft_version", "alora_invocation_tokens", "arrow_config", "ensure_weight_tying"),
    "0.19.0": ("lora_ga_config", "use_bdlora"),
    "0.20.0": ("velora_config", "monteclora_config"),
    "0.21.0": ("kasa_config",),
}  # fmt: skip

_FIELDS_BY_RELEASE: dict[str, dict[str, tuple[str, ...]]] = {
    "LORA": _LORA_FIELDS_BY_RELEASE,
    # AdaLoraConfig subclasses LoraConfig (so it inherits every LoRA field, at the same releases).
    "ADALORA": {
        **{v: tuple(f for f in fs if f not in ("merge_weights", "enable_lora", "init_lora_weights"))
           for v, fs in _LORA_FIELDS_BY_RELEASE.items() if v != "0.3.0"},
        "0.3.0": ("init_lora_weights", "target_r", "init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
                  "orth_reg_weight", "total_step"),
    },
    "IA3": {
        "0.4.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                  "inference_mode", "target_modules", "feedforward_modules", "fan_in_fan_out",
                  "modules_to_save", "init_ia3_weights"),
        "0.14.0": ("exclude_modules",),
        "0.18.0": ("peft_version",),
    },
    "LOHA": {
        "0.6.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                  "inference_mode", "rank_pattern", "alpha_pattern", "r", "alpha", "rank_dropout",
                  "module_dropout", "use_effective_conv2d", "target_modules", "init_weights",
                  "layers_to_transform", "layers_pattern", "modules_to_save"),
        "0.14.0": ("exclude_modules",),
        "0.18.0": ("peft_version",),
    },
    "LOKR": {
        "0.6.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                  "inference_mode", "rank_pattern", "alpha_pattern", "r", "alpha", "rank_dropout",
                  "module_dropout", "use_effective_conv2d", "decompose_both", "decompose_factor",
                  "target_modules", "init_weights", "layers_to_transform", "layers_pattern",
                  "modules_to_save"),
        "0.14.0": ("rank_dropout_scale", "exclude_modules"),
        "0.18.0": ("peft_version",),
    },
    "OFT": {  # rank_pattern/alpha_pattern were removed in 0.15.0 (see _FIELDS_REMOVED)
        "0.7.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                  "inference_mode", "rank_pattern", "alpha_pattern", "r", "module_dropout", "target_modules",
                  "init_weights", "layers_to_transform", "layers_pattern", "modules_to_save", "coft", "eps",
                  "block_share"),
        "0.14.0": ("oft_block_size", "fan_in_fan_out", "bias", "exclude_modules"),
        "0.16.0": ("use_cayley_neumann", "num_cayley_neumann_terms"),
        "0.18.0": ("peft_version",),
    },
    "BOFT": {
        "0.11.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                   "inference_mode", "boft_block_size", "boft_block_num", "boft_n_butterfly_factor",
                   "target_modules", "boft_dropout", "fan_in_fan_out", "bias", "modules_to_save",
                   "init_weights", "layers_to_transform", "layers_pattern"),
        "0.14.0": ("exclude_modules",),
        "0.18.0": ("peft_version",),
    },
    "VERA": {
        "0.11.0": ("peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                   "inference_mode", "r", "target_modules", "projection_prng_key", "save_projection",
                   "vera_dropout", "d_initial", "fan_in_fan_out", "bias", "modules_to_save", "init_weights",
                   "layers_to_transform", "layers_pattern"),
        "0.18.0": ("peft_version",),
    },
    "PROMPT_TUNING": {
        "0.2.0": ("peft_type", "base_model_name_or_path", "task_type", "inference_mode", "num_virtual_tokens",
                  "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
                  "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path"),
        "0.4.0": ("auto_mapping", "revision"),
        "0.7.0": ("tokenizer_kwargs",),
        "0.17.0": ("modules_to_save",),
        "0.18.0": ("peft_version",),
    },
    "PREFIX_TUNING": {
        "0.2.0": ("peft_type", "base_model_name_or_path", "task_type", "inference_mode", "num_virtual_tokens",
                  "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
                  "encoder_hidden_size", "prefix_projection"),
        "0.4.0": ("auto_mapping", "revision"),
        "0.17.0": ("modules_to_save",),
        "0.18.0": ("peft_version",),
        "0.19.0": ("init_weights",),
    },
    "P_TUNING": {  # PromptEncoderConfig
        "0.2.0": ("peft_type", "base_model_name_or_path", "task_type", "inference_mode", "num_virtual_tokens",
                  "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
                  "encoder_reparameterization_type", "encoder_hidden_size", "encoder_num_layers",
                  "encoder_dropout"),
        "0.4.0": ("auto_mapping", "revision"),
        "0.17.0": ("modules_to_save",),
        "0.18.0": ("peft_version",),
    },
    "TRAINABLE_TOKENS": {
        "0.15.0": ("task_type", "peft_type", "auto_mapping", "base_model_name_or_path", "revision",
                   "inference_mode", "token_indices", "target_modules", "init_weights"),
        "0.18.0": ("peft_version",),
    },
    "OSF": {
        "0.18.0": ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                   "revision", "inference_mode", "effective_rank", "target_modules", "rank_pattern",
                   "init_weights", "modules_to_save", "target_svd_config"),
    },
}  # fmt: skip

# The fields every PeftConfig has (PeftConfigMixin + PeftConfig); the only table used for other types.
_COMMON_FIELDS_BY_RELEASE: dict[str, tuple[str, ...]] = {
    "0.2.0": ("peft_type", "base_model_name_or_path", "task_type", "inference_mode"),
    "0.4.0": ("auto_mapping", "revision"),
    "0.18.0": ("peft_version",),
}

# Fields that a later release removed from a config class: type -> field -> first release without it.
_FIELDS_REMOVED: dict[str, dict[str, str]] = {
    "LORA": {"merge_weights": "0.3.0", "enable_lora": "0.3.0"},
    "OFT": {"rank_pattern": "0.15.0", "alpha_pattern": "0.15.0"},
}


def _invert(table: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for version, names in table.items():
        for name in names:
            out.setdefault(name, version)
    return out


_COMMON_INTRODUCED = _invert(_COMMON_FIELDS_BY_RELEASE)
_TYPE_INTRODUCED: dict[str, dict[str, str]] = {t: _invert(tab) for t, tab in _FIELDS_BY_RELEASE.items()}

#: LoRA config field -> the peft release that introduced it (the table asked for in the docs).
FIELD_INTRODUCED: dict[str, str] = dict(_TYPE_INTRODUCED["LORA"])

_V0_3 = Version("0.3.0")
_V0_6 = Version("0.6.0")
_V0_14 = Version("0.14.0")
_V_KNOWN = Version(PEFT_VERSION_KNOWN)


def _field_table(peft_type: str) -> tuple[dict[str, str], bool]:
    """(field -> introduced, complete?) for a type. ``complete`` means unknown keys can be judged."""
    table = _TYPE_INTRODUCED.get(peft_type)
    if table is not None:
        return table, True
    return _COMMON_INTRODUCED, False


# ---------------------------------------------------------------------------------------------------------
# "harmless when dropped": the value an older peft effectively uses when it does not know the field
# ---------------------------------------------------------------------------------------------------------

_ALWAYS_HARMLESS = frozenset({"peft_version", "runtime_config", "auto_mapping"})
# value -> harmless when only meaningful together with another switch
_HARMLESS_UNLESS: dict[str, str] = {
    "qalora_group_size": "use_qalora",
    "megatron_core": "megatron_config",
    "num_cayley_neumann_terms": "use_cayley_neumann",
}


def _is_neutral(name: str, value: Any, raw: Mapping[str, Any]) -> bool:
    """Whether dropping ``name`` (as an older/newer peft would) leaves the loaded adapter unchanged."""
    if name in _ALWAYS_HARMLESS:
        return True
    switch = _HARMLESS_UNLESS.get(name)
    if switch is not None:
        return not raw.get(switch)
    if isinstance(value, float) and math.isnan(value):
        return False
    return value is None or value is False or value == {} or value == [] or value == ""


# ---------------------------------------------------------------------------------------------------------
# the dataclass
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterConfig:
    """A parsed ``adapter_config.json``: ``raw`` is the JSON as read; the rest are normalised views."""

    raw: dict[str, Any]
    source: str
    peft_type: str
    known_peft_type: bool
    base_model: str | None
    base_model_is_local_path: bool
    revision: str | None
    task_type: str | None
    r: int | None
    lora_alpha: float | None
    lora_dropout: float | None
    use_rslora: bool
    use_dora: bool
    target_modules: list[str] | str | None
    exclude_modules: list[str] | str | None
    modules_to_save: list[str] | None
    layers_to_transform: list[int] | int | None
    layers_pattern: list[str] | str | None
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    fan_in_fan_out: bool
    bias: str
    init_lora_weights: bool | str | None
    peft_version_recorded: str | None
    min_peft_version: str
    era: str
    field_versions: dict[str, str]
    lora_bias: bool = False
    target_parameters: list[str] | None = None
    removed_fields: dict[str, str] = field(default_factory=dict)  # present field -> release that removed it
    unknown_fields: tuple[str, ...] = ()  # present keys peft 0.21.2's config class for this type lacks
    notes: tuple[str, ...] = ()

    @property
    def is_lora(self) -> bool:
        return self.peft_type == "LORA"

    @property
    def targets_all_linear(self) -> bool:
        return isinstance(self.target_modules, str) and self.target_modules.lower() == "all-linear"

    @property
    def targets_regex(self) -> bool:
        return isinstance(self.target_modules, str) and not self.targets_all_linear


# ---------------------------------------------------------------------------------------------------------
# base model reference: Hub id or local path?
# ---------------------------------------------------------------------------------------------------------

# huggingface_hub's REPO_ID_REGEX (utils/_validators.py), plus its "--", ".." and ".git" rules below.
_HUB_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", flags=re.ASCII)
# First path components that name a folder on someone's disk rather than a Hub user or organisation.
_LOCAL_DIR_NAMES = frozenset(
    {
        "model", "models", "base_model", "base-model", "basemodel", "base_models", "pretrained",
        "pretrained_model", "pretrained_models", "pretrain_model", "checkpoint", "checkpoints", "ckpt",
        "ckpts",
        "output", "outputs", "out", "weights", "content", "drive", "mnt", "workspace", "tmp", "temp", "home",
        "root", "kaggle", "local", "cache", "saved_model", "saved_models", "merged", "merged_model",
        "hf_models", "hf_cache", "downloads", "results", "runs", "saves", "your", "path", "my_model",
    }
)  # fmt: skip


# Bare (org-less) ids that the Hub resolves: the legacy "canonical" models, now redirects to their orgs.
_CANONICAL_BARE_IDS = frozenset(
    {
        "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "bert-base-uncased", "bert-base-cased",
        "bert-large-uncased", "bert-large-cased", "bert-base-multilingual-cased",
        "bert-base-multilingual-uncased", "bert-base-chinese", "distilbert-base-uncased",
        "distilbert-base-cased",
        "distilbert-base-multilingual-cased", "roberta-base", "roberta-large", "distilroberta-base",
        "xlm-roberta-base", "xlm-roberta-large", "t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b",
        "albert-base-v2", "albert-large-v2", "xlnet-base-cased", "openai-gpt", "ctrl",
    }
)  # fmt: skip


def is_local_path(ref: str) -> bool:
    """Whether a ``base_model_name_or_path`` names a local folder (``/content/x``, ``./m``, ``models/x``,
    ``C:\\m``, ``~/m``) rather than a Hub repo id (``org/name``, or a legacy bare ``name`` like ``gpt2``)."""
    s = ref.strip()
    if not s:
        return False
    if s.startswith(("/", "\\", "~", ".", "file:")) or "\\" in s or re.match(r"^[A-Za-z]:", s):
        return True
    if s.endswith("/"):
        return True
    parts = s.split("/")
    if len(parts) > 2:
        return True
    if not _HUB_REPO_ID.fullmatch(s) or "--" in s or ".." in s or s.endswith(".git"):
        return True  # not a valid repo id, so it can only be a path (or garbage)
    if parts[0].lower() in _LOCAL_DIR_NAMES:
        return True
    return parts[-1].lower().startswith("checkpoint-")


# ---------------------------------------------------------------------------------------------------------
# recognising what a file is
# ---------------------------------------------------------------------------------------------------------

_MLX_KEYS = frozenset({"lora_parameters", "fine_tune_type", "adapter_path", "num_layers", "lora_layers"})
_ADAPTERHUB_INNER_KEYS = frozenset(
    {"architecture", "reduction_factor", "non_linearity", "mh_adapter", "output_adapter", "ln_before",
     "original_ln_before", "residual_before_ln", "adapter_residual_before_ln", "phm_dim", "leave_out"}
)  # fmt: skip
_MODEL_CONFIG_KEYS = frozenset(
    {"model_type", "architectures", "_name_or_path", "transformers_version", "hidden_size", "vocab_size",
     "num_hidden_layers", "torch_dtype", "dtype", "text_config", "vision_config"}
)  # fmt: skip
_PEFT_SIGNS = frozenset({"peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path"})


def _lookalike(d: Mapping[str, Any]) -> tuple[str, str] | None:
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


def _describe_non_peft(d: Mapping[str, Any]) -> tuple[str, str]:
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


def _is_legacy_lora(d: Mapping[str, Any]) -> bool:
    return "r" in d and "lora_alpha" in d and "target_modules" in d


# ---------------------------------------------------------------------------------------------------------
# typed field readers
# ---------------------------------------------------------------------------------------------------------


#: Generous bounds no real config reaches; past them a hostile file would make peft (and loradoc) run for minutes.
MAX_LIST_ENTRIES = 10_000
MAX_STRING_CHARS = 64 << 10


class _Reader:
    def __init__(self, d: Mapping[str, Any], source: str) -> None:
        self.d = d
        self.source = source

    def bad(self, name: str, want: str) -> MalformedConfigError:
        got = self.d.get(name)
        shown = json.dumps(got)[:60] if _json_safe(got) else repr(got)[:60]
        return MalformedConfigError(
            f"{self.source}: field {name!r} must be {want}, got {shown}",
            hint=f"fix {name!r} in {self.source} (or re-save the config with peft's save_pretrained)",
        )

    def opt_str(self, name: str) -> str | None:
        v = self.d.get(name)
        if v is None or isinstance(v, str):
            return v
        raise self.bad(name, "a string or null")

    def opt_int(self, name: str, *, positive: bool = False) -> int | None:
        v = self.d.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.bad(name, "an integer")
        if positive and v <= 0:
            raise self.bad(name, "a positive integer")
        return v

    def opt_float(self, name: str) -> float | None:
        v = self.d.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.bad(name, "a number")
        try:
            return float(v)
        except OverflowError:
            raise self.bad(name, "a number of sensible size") from None

    def flag(self, name: str, default: bool = False) -> bool:
        v = self.d.get(name)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        raise self.bad(name, "true or false")

    def too_big(self, name: str, what: str) -> MalformedConfigError:
        return MalformedConfigError(
            f"{self.source}: field {name!r} {what}",
            hint=f"fix {name!r} in {self.source}: no real adapter needs that much (a regex or a shorter list does)",
        )

    def bounded(self, name: str, v: Any) -> None:
        """Caps on list lengths and string sizes (MAX_LIST_ENTRIES, MAX_STRING_CHARS)."""
        if isinstance(v, list | dict) and len(v) > MAX_LIST_ENTRIES:
            raise self.too_big(name, f"has {len(v)} entries (limit {MAX_LIST_ENTRIES})")
        items = [v] if isinstance(v, str) else list(v) if isinstance(v, list | dict) else []
        for x in items:
            if isinstance(x, str) and len(x) > MAX_STRING_CHARS:
                raise self.too_big(name, f"has a string of {len(x)} characters (limit {MAX_STRING_CHARS})")

    def str_list(self, name: str, *, allow_str: bool) -> list[str] | str | None:
        v = self.d.get(name)
        if v is None:
            return None
        self.bounded(name, v)
        if allow_str and isinstance(v, str):
            return v
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise self.bad(name, "a list of strings, a string or null" if allow_str else "a list of strings or null")

    def int_or_list(self, name: str) -> list[int] | int | None:
        v = self.d.get(name)
        if v is None:
            return None
        self.bounded(name, v)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return list(v)
        raise self.bad(name, "an integer, a list of integers or null")

    def pattern(self, name: str, *, adalora: bool = False, nonfinite_ok: bool = False) -> dict[str, Any]:
        v = self.d.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise self.bad(name, "an object mapping module names to numbers")
        self.bounded(name, v)
        out: dict[str, Any] = {}
        for k, x in v.items():
            if adalora and isinstance(x, list) and all(isinstance(b, bool) for b in x):
                # AdaLoRA saves rank_pattern as name -> boolean mask over init_r; the kept rank is sum(mask).
                out[k] = sum(x)
            elif isinstance(x, int | float) and not isinstance(x, bool) and abs(x) < 1e300:
                out[k] = x
            elif nonfinite_ok and isinstance(x, float) and not math.isfinite(x):
                out[k] = x  # NaN / Infinity: parsed, so that doctor reports it (bad-scaling)
            else:
                raise self.bad(name, "an object mapping module names to numbers")
        return out


def _json_safe(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# versions and eras
# ---------------------------------------------------------------------------------------------------------


def _parse_version_arg(peft_version: str) -> Version:
    text = peft_version.strip().partition("@")[0]
    try:
        return Version(Version(text).base_version)
    except InvalidVersion:
        raise MalformedConfigError(
            f"{peft_version!r} is not a peft version",
            hint="pass a PEP 440 version such as 0.13.2",
        ) from None


def era_from_keys(keys: set[str], peft_type: str) -> str:
    if peft_type in ("LORA", "ADALORA") and keys & {"enable_lora", "merge_weights"}:
        return "<=0.2"
    table, _ = _field_table(peft_type)
    newest = Version(PEFT_TYPE_INTRODUCED.get(peft_type, "0.2.0"))
    for k in keys:
        if k in table:
            newest = max(newest, Version(table[k]))
    if newest < _V0_6:
        return "0.3-0.5"
    if newest < Version("0.10.0"):
        return "0.6-0.9"
    if newest < _V0_14:
        return "0.10-0.13"
    if newest < Version("0.18.0"):
        return "0.14-0.17"
    return ">=0.18"


# ---------------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------------

_LFS_PREFIX = "version https://git-lfs.github.com/spec/v1"


def _lfs_error(source: str) -> MalformedConfigError:
    return MalformedConfigError(
        f"{source}: is a Git LFS pointer file, not the JSON config",
        hint="run `git lfs pull` in the repo (or download the real file from the Hub) and try again",
    )


def parse_adapter_config(data: object, source: str = CONFIG_NAME) -> AdapterConfig:
    """Parse an already-decoded ``adapter_config.json`` (normally a dict).

    Raises :class:`NotPeftConfigError` for look-alikes (MLX-LM, AdapterHub, JAX/Tunix, a model config, a stub,
    a JSON value that is not an object) and :class:`MalformedConfigError` for a PEFT config with a wrongly
    typed field.
    """
    notes: list[str] = []
    if isinstance(data, str) and data.lstrip("\ufeff").startswith(_LFS_PREFIX):
        raise _lfs_error(source)
    if not isinstance(data, dict):
        kind = {
            list: "a JSON array",
            str: "a JSON string",
            bool: "a JSON boolean",
            type(None): "JSON null",
        }.get(type(data), "a JSON number" if isinstance(data, int | float) else type(data).__name__)
        raise NotPeftConfigError(
            f"{source}: not a PEFT adapter config ({kind}, not an object)",
            hint="restore the real adapter_config.json written by peft's save_pretrained",
        )
    d: dict[str, Any] = data

    # --- what is it? -------------------------------------------------------------------------------------
    if "peft_type" in d:
        pt_raw = d["peft_type"]
        if not isinstance(pt_raw, str) or not pt_raw.strip():
            raise _Reader(d, source).bad("peft_type", 'a non-empty string such as "LORA"')
        peft_type = pt_raw.strip()
        if peft_type.startswith("PeftType."):
            peft_type = peft_type[len("PeftType.") :]
            notes.append(f"peft_type {pt_raw!r} is an enum repr; peft expects {peft_type.upper()!r}")
        if peft_type != peft_type.upper():
            notes.append(
                f"peft_type {pt_raw!r} is not upper-case; peft looks it up case-sensitively (KeyError): "
                f"write {peft_type.upper()!r}"
            )
        peft_type = peft_type.upper()
    else:
        look = _lookalike(d)
        if look is not None:
            what, hint = look
            raise NotPeftConfigError(f"{source}: not a PEFT adapter config (looks like {what})", hint=hint)
        if _is_legacy_lora(d):
            peft_type = "LORA"
            notes.append(
                "no peft_type field; read as LORA because it has r, lora_alpha and target_modules "
                '(peft itself fails with KeyError: \'peft_type\'; add "peft_type": "LORA")'
            )
        else:
            what, hint = _describe_non_peft(d)
            if what == "no peft_type field" and not (set(d) & _PEFT_SIGNS):
                what = "no peft_type and no LoRA fields"
            shown = what if what.startswith("no ") else f"looks like {what}"
            raise NotPeftConfigError(f"{source}: not a PEFT adapter config ({shown})", hint=hint)

    known = peft_type in KNOWN_PEFT_TYPES
    if not known:
        if peft_type in PEFT_TYPE_REMOVED:
            notes.append(
                f"peft_type {peft_type} was removed in peft {PEFT_TYPE_REMOVED[peft_type]}; newer peft cannot load it"
            )
        else:
            notes.append(
                f"peft_type {peft_type} is unknown to peft <= {PEFT_VERSION_KNOWN} "
                "(a fork, an unmerged branch or a typo); released peft cannot load it"
            )

    # --- typed fields --------------------------------------------------------------------------------------
    rd = _Reader(d, source)
    base = rd.opt_str("base_model_name_or_path")
    if base is not None and not base.strip():
        notes.append("base_model_name_or_path is an empty string (treated as absent)")
        base = None
    base_is_local = is_local_path(base) if base is not None else False
    if base is not None and not base_is_local and "/" not in base and base not in _CANONICAL_BARE_IDS:
        notes.append(
            f"base_model_name_or_path {base!r} has no organisation: unless the Hub knows it as a legacy "
            "bare id, it is a local folder name"
        )
    revision = rd.opt_str("revision")
    task_type = rd.opt_str("task_type")
    r = rd.opt_int("r")  # r <= 0 parses: doctor reports it (bad-scaling), peft raises ValueError
    lora_alpha = rd.opt_float("lora_alpha")
    lora_dropout = rd.opt_float("lora_dropout")
    use_rslora = rd.flag("use_rslora")
    use_dora = rd.flag("use_dora")
    target_modules = rd.str_list("target_modules", allow_str=True)
    exclude_modules = rd.str_list("exclude_modules", allow_str=True)
    modules_to_save_v = rd.str_list("modules_to_save", allow_str=False)
    modules_to_save = modules_to_save_v if isinstance(modules_to_save_v, list) else None
    layers_to_transform = rd.int_or_list("layers_to_transform")
    layers_pattern = rd.str_list("layers_pattern", allow_str=True)
    rank_pattern = {k: int(v) for k, v in rd.pattern("rank_pattern", adalora=peft_type == "ADALORA").items()}
    alpha_pattern = {k: float(v) for k, v in rd.pattern("alpha_pattern", nonfinite_ok=True).items()}
    fan_in_fan_out = rd.flag("fan_in_fan_out")
    bias = rd.opt_str("bias")
    if bias is None:
        bias = "none"
    elif peft_type in ("LORA", "ADALORA") and bias not in ("none", "all", "lora_only"):
        raise rd.bad("bias", '"none", "all" or "lora_only"')
    init = d.get("init_lora_weights")
    if not (init is None or isinstance(init, bool | str)):
        raise rd.bad("init_lora_weights", "true, false or a method name")
    lora_bias = rd.flag("lora_bias")
    tp = rd.str_list("target_parameters", allow_str=False)
    target_parameters = tp if isinstance(tp, list) else None
    peft_version_recorded = rd.opt_str("peft_version")

    # --- versions ------------------------------------------------------------------------------------------
    table, complete = _field_table(peft_type)
    keys = set(d)
    field_versions: dict[str, str] = {}
    lower = Version(PEFT_TYPE_INTRODUCED.get(peft_type, "0.2.0"))
    for k in d:
        if k in table:
            v = table[k]
            if Version(v) > _V0_3:
                field_versions[k] = v
            lower = max(lower, Version(v))
    removed = {k: v for k, v in _FIELDS_REMOVED.get(peft_type, {}).items() if k in keys}
    unknown: tuple[str, ...] = ()
    if complete:
        unknown = tuple(k for k in d if k not in table)
        if unknown:
            notes.append(
                f"fields unknown to peft {PEFT_VERSION_KNOWN}'s {peft_type} config: {', '.join(unknown)} "
                "(peft >= 0.14 drops them with a warning; 0.6-0.13 raise TypeError)"
            )
    if removed:
        notes.append("fields removed from peft: " + ", ".join(f"{k} (gone in {v})" for k, v in removed.items()))
    if peft_type == "OFT" and "oft_block_size" not in d:
        notes.append("OFT config without oft_block_size: written by peft < 0.14; peft >= 0.14 refuses it")

    if peft_version_recorded is not None:
        rec = peft_version_recorded.strip().partition("@")[0]
        try:
            Version(rec)
            era = rec
        except InvalidVersion:
            notes.append(f"peft_version {peft_version_recorded!r} is not a valid version")
            era = era_from_keys(keys, peft_type)
    else:
        era = era_from_keys(keys, peft_type)

    return AdapterConfig(
        raw=d,
        source=source,
        peft_type=peft_type,
        known_peft_type=known,
        base_model=base,
        base_model_is_local_path=base_is_local,
        revision=revision,
        task_type=task_type,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        use_rslora=use_rslora,
        use_dora=use_dora,
        target_modules=target_modules,
        exclude_modules=exclude_modules,
        modules_to_save=modules_to_save,
        layers_to_transform=layers_to_transform,
        layers_pattern=layers_pattern,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=fan_in_fan_out,
        bias=bias,
        init_lora_weights=init,
        peft_version_recorded=peft_version_recorded,
        min_peft_version=str(lower),
        era=era,
        field_versions=field_versions,
        lora_bias=lora_bias,
        target_parameters=target_parameters,
        removed_fields=removed,
        unknown_fields=unknown,
        notes=tuple(notes),
    )


def _decode(blob: bytes, source: str, notes: list[str]) -> object:
    if not blob.strip():
        raise MalformedConfigError(
            f"{source}: is empty", hint="restore the adapter_config.json written by peft's save_pretrained"
        )
    if blob.lstrip(b"\xef\xbb\xbf").startswith(_LFS_PREFIX.encode()):
        raise _lfs_error(source)
    if blob.startswith(b"\xef\xbb\xbf"):
        notes.append(
            "file starts with a UTF-8 BOM: peft's json.load fails on it "
            "(JSONDecodeError: Unexpected UTF-8 BOM); re-save it without the BOM"
        )
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedConfigError(
            f"{source}: is not UTF-8 text (byte {exc.start})",
            hint="restore the adapter_config.json written by peft's save_pretrained",
        ) from None
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        raise MalformedConfigError(
            f"{source}: is an HTML page, not JSON",
            hint="download the raw file (the Hub's /resolve/ URL, not /blob/) and try again",
        )
    dupes: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                dupes.append(k)
            out[k] = v
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise MalformedConfigError(
            f"{source}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            hint="fix the JSON syntax, or restore the file written by peft's save_pretrained",
        ) from None
    except RecursionError:
        raise MalformedConfigError(
            f"{source}: JSON is nested too deeply", hint="restore the file written by peft's save_pretrained"
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise MalformedConfigError(
            f"{source}: is not a usable JSON document ({' '.join(str(exc).split())[:120]})",
            hint="restore the file written by peft's save_pretrained",
        ) from None
    if dupes:
        notes.append(f"duplicate keys (the last one wins): {', '.join(sorted(set(dupes)))}")
    return value


def load_adapter_config(path: str | os.PathLike[str]) -> AdapterConfig:
    """Read ``adapter_config.json`` from a file path or from the adapter directory that contains it."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_NAME
        if not p.is_file():
            raise MissingFileError(
                f"{p}: not found",
                hint="pass the folder that holds adapter_config.json (peft's save_pretrained writes it)",
            )
    elif not p.is_file():
        raise MissingFileError(
            f"{p}: not found",
            hint="check the path, or pass the adapter directory that contains adapter_config.json",
        )
    source = str(p)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise MissingFileError(
            f"{source}: cannot be read ({exc.strerror or exc})", hint="check the file's permissions"
        ) from None
    notes: list[str] = []
    cfg = parse_adapter_config(_decode(blob, source, notes), source=source)
    if notes:
        cfg = _with_notes(cfg, notes)
    return cfg


def _with_notes(cfg: AdapterConfig, extra: list[str]) -> AdapterConfig:
    return replace(cfg, notes=tuple(extra) + cfg.notes)


# ---------------------------------------------------------------------------------------------------------
# compatibility queries
# ---------------------------------------------------------------------------------------------------------


def unknown_field_behaviour(peft_version: str) -> str:
    """What that peft release does with a config field it does not know:
    ``"ignored"`` (<= 0.5), ``"type_error"`` (0.6 - 0.13) or ``"dropped_with_warning"`` (>= 0.14)."""
    v = _parse_version_arg(peft_version)
    if v < _V0_6:
        return "ignored"
    if v < _V0_14:
        return "type_error"
    return "dropped_with_warning"


def fields_unsupported_by(config: AdapterConfig, peft_version: str) -> list[str]:
    """Fields of ``config`` that ``peft_version`` would not accept, in file order.

    A field counts when that release's config class for this type lacks it (introduced later, removed
    earlier, or, for releases up to 0.21.2 and types whose full field list is encoded here, unknown to
    peft altogether). When the release cannot map ``peft_type`` to a config class (a type it does not
    know, or a missing or non-canonical spelling such as ``"lora"``), the answer is just ``["peft_type"]``.

    Fields whose value is the neutral default (``null``, ``false``, ``{}``, ``[]``, or metadata such as
    ``peft_version``) are skipped where dropping them is harmless, i.e. for peft <= 0.5 (ignores unknown
    keys) and peft >= 0.14 (drops them with a warning). For peft 0.6 - 0.13 every unknown key is listed,
    because any one of them, whatever its value, makes ``LoraConfig(**kwargs)`` raise ``TypeError``.
    """
    v = _parse_version_arg(peft_version)
    strict = unknown_field_behaviour(peft_version) == "type_error"
    raw = config.raw
    out: list[str] = []
    pt = config.peft_type
    type_intro = PEFT_TYPE_INTRODUCED.get(pt)
    type_gone = PEFT_TYPE_REMOVED.get(pt)
    if (
        raw.get("peft_type") != pt  # missing or misspelt ("lora"): every release fails with KeyError
        or (type_intro is not None and v < Version(type_intro))
        or (type_gone is not None and v >= Version(type_gone))
        or (type_intro is None and v <= _V_KNOWN)
    ):
        return ["peft_type"]  # the whole config is refused (KeyError); its fields do not matter
    table, complete = _field_table(pt)
    removed = _FIELDS_REMOVED.get(pt, {})
    for name, value in raw.items():
        if name == "peft_type":
            continue
        if name in removed and v >= Version(removed[name]):
            lacks = True
        elif name in table:
            lacks = v < Version(table[name])
        else:
            lacks = complete and v <= _V_KNOWN
        if lacks and (strict or not _is_neutral(name, value, raw)):
            out.append(name)
    return out


def required_peft_specifier(config: AdapterConfig) -> str:
    """The peft requirement for this config, e.g. ``">=0.14.0"``.

    The lower bound is :attr:`AdapterConfig.min_peft_version`. An upper bound is added only when the file
    relies on something a later release removed (a removed field with a non-default value, e.g. an
    ``enable_lora`` list from peft <= 0.2, or a removed peft_type such as BONE). An unknown peft_type still
    gets the lower bound: check :attr:`AdapterConfig.known_peft_type` before promising it will load.
    """
    spec = f">={config.min_peft_version}"
    uppers: list[Version] = []
    for name, gone in config.removed_fields.items():
        if not _is_neutral(name, config.raw.get(name), config.raw):
            uppers.append(Version(gone))
    if config.peft_type in PEFT_TYPE_REMOVED:
        uppers.append(Version(PEFT_TYPE_REMOVED[config.peft_type]))
    if uppers:
        spec += f",<{min(uppers)}"
    return spec
