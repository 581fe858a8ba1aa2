"""Finding codes, their severity policy and the repair pass that answers each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class CodeInfo:
    code: str
    title: str
    repair: str | None  # the repair pass that answers it (None: nothing can fix it)


# A finding is an *error* when the adapter, once loaded, would not behave as it was trained; a *warning* when it
# loads and works but deserves attention. Severity is set per finding (tower-lora is a warning when the tower
# LoRAs load, an error when they would be dropped).
CODES: dict[str, CodeInfo] = {
    c.code: c
    for c in (
        CodeInfo("mispathed-keys", "keys saved under a module path the base does not have", "reroot-keys"),
        CodeInfo("tower-lora", "LoRA tensors on the vision/audio towers", "drop-tower-loras"),
        CodeInfo("tower-injection", "the config injects LoRA into the towers", "exclude-towers"),
        CodeInfo("orphan-keys", "tensors for modules the base does not have", "drop-orphans"),
        CodeInfo("shape-mismatch", "tensor shapes do not fit the base's modules", None),
        CodeInfo("rank-mismatch", "tensor ranks differ from the config's r", "rank-pattern"),
        CodeInfo("quantized-base", "the base is recorded as a quantized repack", "full-precision-base"),
        CodeInfo("untrained-lora", "every lora_B is zero: the adapter does nothing", None),
        CodeInfo("nonfinite-weights", "NaN or Inf in the weights", None),
        CodeInfo("pickle-weights", "weights are a pickle .bin", "pickle-to-safetensors"),
        CodeInfo(
            "unsupported-fields",
            "config fields the installed peft does not accept",
            "drop-unsupported-fields",
        ),
        CodeInfo("peft-load-error", "peft raises while loading", None),
        CodeInfo("regex-too-expensive", "a config regex is too expensive to evaluate (peft would hang)", None),
        CodeInfo("bad-scaling", "lora_alpha / r give a zero, negative or non-finite scaling", None),
        CodeInfo("not-lora", "not a LoRA adapter: analysed only partly", None),
        CodeInfo("static-disagrees", "the static prediction differs from the real dry load", None),
        CodeInfo("unsaved-bias", "bias='lora_only'/'all' without the trained bias tensors (peft is silent)", None),
        CodeInfo("unsaved-modules", "modules_to_save / task heads with no saved tensors", None),
        CodeInfo("load-mismatch", "peft's dry load leaves keys missing/unexpected that nothing explains", None),
        CodeInfo("repair-unverified", "the repair plan does not give a clean peft dry load", None),
        CodeInfo(
            "params-unchecked",
            "target_parameters LoRAs the static analysis cannot check (no parameter inventory)",
            None,
        ),
        CodeInfo("plan-collision", "a repair plan mapped several keys onto one module (a bug in the plan)", None),
        CodeInfo(
            "profile-version-gap",
            "the base profile was verified under another transformers version (a prediction)",
            None,
        ),
    )
}


@dataclass
class Finding:
    code: str
    severity: str
    count: int
    message: str
    repair: str | None = None
    tower: str | None = None
    keys: list[str] = field(default_factory=list)

    def to_json(self, *, max_keys: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "count": self.count,
            "message": self.message,
            "repair": self.repair,
        }
        if self.tower:
            d["tower"] = self.tower
        if self.keys:
            d["keys"] = self.keys[:max_keys]
            d["keys_total"] = len(self.keys)
        return d


def make(
    code: str,
    severity: str,
    count: int,
    message: str,
    *,
    tower: str | None = None,
    keys: list[str] | None = None,
    repair: str | None | bool = True,
) -> Finding:
    """A finding with the code's default repair pass (``repair=None`` forces none)."""
    rep = CODES[code].repair if repair is True else (repair or None)
    return Finding(code, severity, count, message, rep, tower, list(keys or []))
