"""What a given peft release makes of a parsed config: the fields it lacks, the requirement to pin, the era.

Answers from the tables in :mod:`loradoc.io.peft_facts`; no peft import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from loradoc.errors import MalformedConfigError
from loradoc.io.peft_facts import (
    FIELDS_REMOVED,
    PEFT_TYPE_INTRODUCED,
    PEFT_TYPE_REMOVED,
    PEFT_VERSION_KNOWN,
    field_table,
)

if TYPE_CHECKING:
    from loradoc.io.config_model import AdapterConfig

__all__ = [
    "era_from_keys",
    "fields_unsupported_by",
    "is_neutral",
    "parse_version_arg",
    "required_peft_specifier",
    "unknown_field_behaviour",
]

_V0_6 = Version("0.6.0")
_V0_14 = Version("0.14.0")
_V_KNOWN = Version(PEFT_VERSION_KNOWN)

# "harmless when dropped": the value an older peft effectively uses when it does not know the field
_ALWAYS_HARMLESS = frozenset({"peft_version", "runtime_config", "auto_mapping"})
# value -> harmless when only meaningful together with another switch
_HARMLESS_UNLESS: dict[str, str] = {
    "qalora_group_size": "use_qalora",
    "megatron_core": "megatron_config",
    "num_cayley_neumann_terms": "use_cayley_neumann",
}


def is_neutral(name: str, value: Any, raw: Mapping[str, Any]) -> bool:
    """Whether dropping ``name`` (as an older/newer peft would) leaves the loaded adapter unchanged."""
    if name in _ALWAYS_HARMLESS:
        return True
    switch = _HARMLESS_UNLESS.get(name)
    if switch is not None:
        return not raw.get(switch)
    if isinstance(value, float) and math.isnan(value):
        return False
    return value is None or value is False or value == {} or value == [] or value == ""


def parse_version_arg(peft_version: str) -> Version:
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
    table, _ = field_table(peft_type)
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


def unknown_field_behaviour(peft_version: str) -> str:
    """What that peft release does with a config field it does not know:
    ``"ignored"`` (<= 0.5), ``"type_error"`` (0.6 - 0.13) or ``"dropped_with_warning"`` (>= 0.14)."""
    v = parse_version_arg(peft_version)
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
    v = parse_version_arg(peft_version)
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
    table, complete = field_table(pt)
    removed = FIELDS_REMOVED.get(pt, {})
    for name, value in raw.items():
        if name == "peft_type":
            continue
        if name in removed and v >= Version(removed[name]):
            lacks = True
        elif name in table:
            lacks = v < Version(table[name])
        else:
            lacks = complete and v <= _V_KNOWN
        if lacks and (strict or not is_neutral(name, value, raw)):
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
        if not is_neutral(name, config.raw.get(name), config.raw):
            uppers.append(Version(gone))
    if config.peft_type in PEFT_TYPE_REMOVED:
        uppers.append(Version(PEFT_TYPE_REMOVED[config.peft_type]))
    if uppers:
        spec += f",<{min(uppers)}"
    return spec
