"""What each peft release knows: its PeftType members and the fields of its config classes.

Hard-coded facts (this module must not import peft), with where they came from; a test compares them with the
installed peft.

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

from collections.abc import Mapping

__all__ = [
    "COMMON_INTRODUCED",
    "FIELDS_REMOVED",
    "FIELD_INTRODUCED",
    "KNOWN_PEFT_TYPES",
    "PEFT_TYPE_INTRODUCED",
    "PEFT_TYPE_REMOVED",
    "PEFT_VERSION_KNOWN",
    "TYPE_INTRODUCED",
    "field_table",
]

# The newest peft release whose field lists are encoded below (the one in the project's venv).
PEFT_VERSION_KNOWN = "0.21.2"


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
    "OFT": {  # rank_pattern/alpha_pattern were removed in 0.15.0 (see FIELDS_REMOVED)
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
FIELDS_REMOVED: dict[str, dict[str, str]] = {
    "LORA": {"merge_weights": "0.3.0", "enable_lora": "0.3.0"},
    "OFT": {"rank_pattern": "0.15.0", "alpha_pattern": "0.15.0"},
}


def _invert(table: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for version, names in table.items():
        for name in names:
            out.setdefault(name, version)
    return out


COMMON_INTRODUCED = _invert(_COMMON_FIELDS_BY_RELEASE)
TYPE_INTRODUCED: dict[str, dict[str, str]] = {t: _invert(tab) for t, tab in _FIELDS_BY_RELEASE.items()}

#: LoRA config field -> the peft release that introduced it (the table asked for in the docs).
FIELD_INTRODUCED: dict[str, str] = dict(TYPE_INTRODUCED["LORA"])


def field_table(peft_type: str) -> tuple[dict[str, str], bool]:
    """(field -> introduced, complete?) for a type. ``complete`` means unknown keys can be judged."""
    table = TYPE_INTRODUCED.get(peft_type)
    if table is not None:
        return table, True
    return COMMON_INTRODUCED, False
