"""rank_pattern / alpha_pattern: the rank and alpha peft gives a module (``peft.utils.other.get_pattern_key``), and
the compiled-regex cache loradoc's own matching shares."""

from __future__ import annotations

import functools
import re

from loradoc.io import regex_guard
from loradoc.io.adapter_config import AdapterConfig

#: loradoc's own matching compiles each config pattern once (peft's re.match calls go through re's small cache)
rx = functools.lru_cache(maxsize=1 << 16)(re.compile)


def pattern_regex(key: str) -> str:
    return rf"(.*\.)?({key})$"


def rank_for(cfg: AdapterConfig, module: str) -> int:
    return int(pattern_value(cfg.rank_pattern, module, cfg.r or 8))


def alpha_for(cfg: AdapterConfig, module: str) -> float:
    return float(pattern_value(cfg.alpha_pattern, module, cfg.lora_alpha if cfg.lora_alpha is not None else 8))


def pattern_value(pattern: dict[str, float] | dict[str, int], module: str, default: float) -> float:
    # peft.utils.other.get_pattern_key: the first pattern key that matches as a suffix regex
    for key in pattern:
        full = pattern_regex(key)
        if not regex_guard.is_literal(key) and not regex_guard.vetted(full, "match"):
            regex_guard.vet([(full, "match", "rank_pattern/alpha_pattern")], [module])
        if rx(full).match(module):
            return pattern[key]
    return default
