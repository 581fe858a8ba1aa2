"""The fields of ``adapter_config.json`` that loradoc reads: one pydantic model, each field declared once.

A field's declaration says everything about it: its JSON key, its type (strict: ``"8"`` is not 8, ``8.0`` is not
an integer rank, ``true`` is not 1), what an error says it must be (``description``), and the caps that keep a
hostile file from making peft (and loradoc) run for minutes. Every other key is kept as an extra
(``model_extra``): the fields of other peft releases and other peft types, which the version tables judge.
Validation collects every problem at once, each with its key path (:mod:`loradoc.io.config_problems`).

:class:`AdapterConfig` is that model plus what the parser derives (the peft type, the era, the notes, ...).
This module imports pydantic, never peft, torch or transformers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

__all__ = ["MAX_LIST_ENTRIES", "MAX_STRING_CHARS", "AdapterConfig", "PeftFields"]

#: Generous bounds no real config reaches; past them a hostile file would make peft (and loradoc) run for minutes.
MAX_LIST_ENTRIES = 10_000
MAX_STRING_CHARS = 64 << 10
#: Numbers from this size on are refused in rank/alpha patterns (no real scaling is near it).
_HUGE = 1e300


def want(phrase: str) -> PydanticCustomError:
    """An error whose text is ``must be <phrase>`` (the value and the key path are added when it is reported)."""
    return PydanticCustomError("loradoc_want", "{want}", {"want": phrase})


def _too_big(what: str) -> PydanticCustomError:
    return PydanticCustomError("loradoc_too_big", "{what}", {"what": what})


# -- before-validators: they see the JSON value as read -------------------------------------------------------


def _capped(v: Any) -> Any:
    """Refuse lists/objects of more than MAX_LIST_ENTRIES entries and strings of more than MAX_STRING_CHARS."""
    if isinstance(v, list | dict) and len(v) > MAX_LIST_ENTRIES:
        raise _too_big(f"has {len(v)} entries (limit {MAX_LIST_ENTRIES})")
    items = [v] if isinstance(v, str) else list(v) if isinstance(v, list | dict) else []
    for x in items:
        if isinstance(x, str) and len(x) > MAX_STRING_CHARS:
            raise _too_big(f"has a string of {len(x)} characters (limit {MAX_STRING_CHARS})")
    return v


def _null_is_false(v: Any) -> Any:
    return False if v is None else v


def _null_is_none_string(v: Any) -> Any:
    return "none" if v is None else v


def _null_is_empty(v: Any) -> Any:
    return {} if v is None else v


def _sensible_size(v: Any) -> Any:
    """An integer too large for a float (json reads ``1e999`` as inf, but ``10**400`` stays an int)."""
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            float(v)
        except OverflowError:
            raise want("a number of sensible size") from None
    return v


def _bias_value(v: Any, info: ValidationInfo) -> Any:
    peft_type = (info.context or {}).get("peft_type")
    if peft_type in ("LORA", "ADALORA") and isinstance(v, str) and v not in ("none", "all", "lora_only"):
        raise want('"none", "all" or "lora_only"')
    return v


def _rank_value(v: Any, info: ValidationInfo) -> Any:
    """A rank: an integer, a float (truncated, as ``int()`` does) or, for AdaLoRA, a boolean mask over init_r."""
    adalora = (info.context or {}).get("peft_type") == "ADALORA"
    if adalora and isinstance(v, list) and all(isinstance(b, bool) for b in v):
        return sum(v)  # AdaLoRA saves rank_pattern as name -> mask; the kept rank is sum(mask)
    if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < _HUGE:
        return int(v)
    raise want("a number")


def _alpha_value(v: Any) -> Any:
    """An alpha: a number; NaN and Infinity parse, so that doctor reports them (bad-scaling)."""
    if isinstance(v, float) and not math.isfinite(v):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < _HUGE:
        return float(v)
    raise want("a number")


# -- the field types ---------------------------------------------------------------------------------------------
# (several BeforeValidators run last-first: a pattern's null becomes {} before its size is checked)

OptStr = str | None
OptNumber = Annotated[float | None, BeforeValidator(_sensible_size)]
Flag = Annotated[bool, BeforeValidator(_null_is_false)]
StrOrList = Annotated[list[str] | str | None, BeforeValidator(_capped)]
StrList = Annotated[list[str] | None, BeforeValidator(_capped)]
IntOrList = Annotated[list[int] | int | None, BeforeValidator(_capped)]
RankPattern = Annotated[
    dict[str, Annotated[int, BeforeValidator(_rank_value)]], BeforeValidator(_capped), BeforeValidator(_null_is_empty)
]
AlphaPattern = Annotated[
    dict[str, Annotated[float, BeforeValidator(_alpha_value)]],
    BeforeValidator(_capped),
    BeforeValidator(_null_is_empty),
]
Bias = Annotated[str, BeforeValidator(_bias_value), BeforeValidator(_null_is_none_string)]

_STR = "a string or null"
_FLAG = "true or false"
_NUMBER = "a number"
_PATTERN = "an object mapping module names to numbers"


class PeftFields(BaseModel):
    """The typed fields of a PEFT ``adapter_config.json`` (``peft_type`` is read before, by the parser).

    Validate with ``PeftFields.model_validate(data, context={"peft_type": ...})``: the type decides the allowed
    ``bias`` values (LoRA, AdaLoRA) and whether ``rank_pattern`` holds AdaLoRA's boolean masks. The order of the
    fields is the order problems are reported in.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    base_model: OptStr = Field(None, validation_alias="base_model_name_or_path", description=_STR)
    revision: OptStr = Field(None, description=_STR)
    task_type: OptStr = Field(None, description=_STR)
    r: int | None = Field(None, description="an integer")  # r <= 0 parses: doctor reports it, peft raises
    lora_alpha: OptNumber = Field(None, description=_NUMBER)
    lora_dropout: OptNumber = Field(None, description=_NUMBER)
    use_rslora: Flag = Field(False, description=_FLAG)
    use_dora: Flag = Field(False, description=_FLAG)
    target_modules: StrOrList = Field(None, description="a list of strings, a string or null")
    exclude_modules: StrOrList = Field(None, description="a list of strings, a string or null")
    modules_to_save: StrList = Field(None, description="a list of strings or null")
    layers_to_transform: IntOrList = Field(None, description="an integer, a list of integers or null")
    layers_pattern: StrOrList = Field(None, description="a list of strings, a string or null")
    rank_pattern: RankPattern = Field(default_factory=dict, description=_PATTERN)
    alpha_pattern: AlphaPattern = Field(default_factory=dict, description=_PATTERN)
    fan_in_fan_out: Flag = Field(False, description=_FLAG)
    bias: Bias = Field("none", description=_STR)
    init_lora_weights: bool | str | None = Field(None, description="true, false or a method name")
    lora_bias: Flag = Field(False, description=_FLAG)
    target_parameters: StrList = Field(None, description="a list of strings or null")
    peft_version_recorded: OptStr = Field(None, validation_alias="peft_version", description=_STR)

    @classmethod
    def wants(cls) -> dict[str, str]:
        """JSON key -> what its value must be (``base_model_name_or_path`` -> ``a string or null``)."""
        out: dict[str, str] = {}
        for name, f in cls.model_fields.items():
            key = f.validation_alias if isinstance(f.validation_alias, str) else name
            out[key] = f.description or "valid"
        return out

    @property
    def targets_all_linear(self) -> bool:
        return isinstance(self.target_modules, str) and self.target_modules.lower() == "all-linear"

    @property
    def targets_regex(self) -> bool:
        return isinstance(self.target_modules, str) and not self.targets_all_linear


class AdapterConfig(PeftFields):
    """A parsed ``adapter_config.json``: ``raw`` is the JSON as read; the rest are normalised views.

    Built by :func:`loradoc.io.adapter_config.parse_adapter_config` from validated :class:`PeftFields` (it is
    never validated itself); ``extras`` holds the keys that are not typed fields (other releases' fields).
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    raw: dict[str, Any]
    source: str
    peft_type: str
    known_peft_type: bool
    base_model_is_local_path: bool
    min_peft_version: str
    era: str
    field_versions: dict[str, str]
    removed_fields: dict[str, str] = Field(default_factory=dict)  # present field -> release that removed it
    unknown_fields: tuple[str, ...] = ()  # present keys peft 0.21.2's config class for this type lacks
    extras: dict[str, Any] = Field(default_factory=dict)  # keys that are not typed fields, as read
    notes: tuple[str, ...] = ()

    @property
    def is_lora(self) -> bool:
        return self.peft_type == "LORA"
