"""What the static analysis says of each adapter key (its fate), and where peft's load puts a key: the data the
analysis, its findings, the dry load and the repair passes share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loradoc.diagnose.findings import Finding
from loradoc.model.layout import PEFT_PREFIX, LoraKey, parse_key
from loradoc.model.peft_rules import InjectionPlan
from loradoc.model.profiles import BaseProfile

# statuses of a key
LOADS = "loads"  # peft loads it into an injected LoRA module
LOADS_BASE = "loads-base"  # peft loads it into a base parameter (modules_to_save-like full weights)
MISPATHED = "mispathed"  # a language-model module exists at another path
TOWER = "tower"  # a vision/audio/projector module: unused by the text model
ORPHAN = "orphan"  # no base module at any known path (e.g. k/v of KV-shared layers)
UNTARGETED = "untargeted"  # the base module exists at this path, but the config does not inject it
SHAPE = "shape-mismatch"
RANK = "rank-mismatch"
HEAD_COPY = "head-copy"  # ``X.original_module.*``: the untrained copy peft keeps beside a trained head

# module-path infixes of peft's ModulesToSaveWrapper (older files saved them; peft >= 0.x saves the bare path)
SAVED_INFIX = re.compile(r"\.modules_to_save\.[A-Za-z0-9_\-]+(?=\.|$)")
ORIGINAL_INFIX = ".original_module"


@dataclass
class KeyFate:
    key: str
    status: str
    tower: str
    target: str | None  # canonical base module path (for MISPATHED: where it should go)
    param: str
    reason: str = ""


@dataclass
class PeftCounts:
    loaded: int | None
    missing: int | None
    unexpected: int | None
    effective: bool
    error: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    effective_modules: int = 0
    injected_modules: int = 0

    def to_json(self, max_keys: int | None = None) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "effective": self.effective,
            "error": self.error,
            "effective_modules": self.effective_modules,
            "injected_modules": self.injected_modules,
            "missing_keys": self.missing_keys[:max_keys],
            "unexpected_keys": self.unexpected_keys[:max_keys],
        }


@dataclass
class StaticResult:
    fates: dict[str, KeyFate]
    plan: InjectionPlan
    predicted: PeftCounts
    findings: list[Finding]
    # ParamWrapper LoRAs in the file whose parameter target_parameters does not name: wrapper path -> entry
    untargeted_params: dict[str, str] = field(default_factory=dict)


def converted_module(p: LoraKey, profile: BaseProfile) -> str | None:
    """The module peft's load puts a LoRA key on, after its load-time conversion (learned per base by probing
    peft, see profiles); None when the key stays without peft's ``base_model.model.`` (it lands nowhere)."""
    saved = (PEFT_PREFIX if p.had_peft_prefix else "") + p.module
    if not (p.had_peft_prefix and p.module in profile.modules):
        for src, dst in profile.load_rewrites:
            if saved.startswith(src + "."):
                return dst + saved[len(src) :]
    return p.module if p.had_peft_prefix else None


def converted_path(module: str, profile: BaseProfile) -> str:
    """Where peft's load-time conversion puts a module path saved with peft's prefix."""
    return converted_module(parse_key(f"{PEFT_PREFIX}{module}.lora_A.weight"), profile) or module


def model_key(p: LoraKey, profile: BaseProfile) -> str:
    """The key as peft looks it up in the model (adapter name omitted), after peft's conversion renames."""
    module = converted_module(p, profile) if p.is_lora else None
    if module is not None:
        return f"{PEFT_PREFIX}{module}.{p.param}"
    prefix = PEFT_PREFIX if p.had_peft_prefix else ""
    return f"{prefix}{p.module}.{p.param}"
