"""peft's injection rules, re-stated in pure Python for the static (``--fast``) path.

These mirror ``peft.tuners.tuners_utils.check_target_module_exists`` and ``_maybe_include_all_linear_layers``
(peft 0.14 - 0.21). The full doctor runs real peft on the meta device and a test checks that both agree on
every fixture, so a drift in peft shows up as a failing test, not as a wrong verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .adapter_config import AdapterConfig
from .profiles import BaseProfile


@dataclass
class InjectionPlan:
    targeted: list[str] = field(default_factory=list)  # modules peft would wrap (in named_modules order)
    excluded: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # targeted modules peft cannot wrap -> ValueError
    error: str | None = None  # the exception peft would raise while injecting, if any

    @property
    def raises(self) -> bool:
        return self.error is not None


def _excluded(cfg: AdapterConfig, name: str) -> bool:
    ex = cfg.exclude_modules
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, name):
                return True
        elif name in ex or any(name.endswith(f".{e}") for e in ex):
            return True
    mts = list(cfg.modules_to_save or []) + task_heads(cfg)
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in mts)


def task_heads(cfg: AdapterConfig) -> list[str]:
    """The heads peft's task-type model adds to ``modules_to_save`` (PeftModelForSequenceClassification etc.)."""
    task = (cfg.task_type or "").upper()
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        return ["classifier", "score"]
    if task == "QUESTION_ANS":
        return ["qa_outputs"]
    return []


def _layer_ok(cfg: AdapterConfig, name: str) -> bool:
    idx = cfg.layers_to_transform
    if idx is None or (isinstance(idx, list) and not idx):
        return True
    pattern = cfg.layers_pattern
    match = None
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for p in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name)
            if match:
                break
    if not match:
        return False
    layer = int(match.group("idx"))
    return layer == idx if isinstance(idx, int) else layer in idx


def effective_targets(cfg: AdapterConfig, profile: BaseProfile) -> str | list[str] | set[str] | None:
    targets = cfg.target_modules
    if targets is None:
        return profile.peft_default_targets
    if isinstance(targets, str) and targets.lower() == "all-linear":
        return {n for n, m in profile.modules.items() if m.kind == "linear" and n != profile.output_embedding}
    return targets


def target_matches(cfg: AdapterConfig, targets: str | list[str] | set[str], name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    found = any(name.endswith(f".{t}") for t in targets)
    return found and _layer_ok(cfg, name)


def plan_injection(cfg: AdapterConfig, profile: BaseProfile) -> InjectionPlan:
    """Which modules real peft would wrap for ``cfg`` on ``profile``, and whether it would raise.

    Memoised per profile on the config fields that decide targeting (callers must not mutate the result).
    """
    key = (
        "injection",
        cfg.peft_type,
        repr(cfg.target_modules),
        repr(cfg.exclude_modules),
        repr(cfg.modules_to_save),
        repr(cfg.layers_to_transform),
        repr(cfg.layers_pattern),
    )
    memo = profile.memo()
    if key not in memo:
        memo[key] = _plan_injection(cfg, profile)
    return memo[key]


def _plan_injection(cfg: AdapterConfig, profile: BaseProfile) -> InjectionPlan:
    plan = InjectionPlan()
    if cfg.peft_type != "LORA":
        plan.error = f"static analysis covers LoRA only ({cfg.peft_type}); run doctor without --fast"
        return plan
    targets = effective_targets(cfg, profile)
    if targets is None:
        plan.error = "ValueError: Please specify `target_modules` or `target_parameters`in `peft_config`"
        return plan
    for name, info in profile.modules.items():
        if _excluded(cfg, name):
            plan.excluded.append(name)
            continue
        if not target_matches(cfg, targets, name):
            continue
        plan.targeted.append(name)
        if not info.lora_supported:
            plan.unsupported.append(name)
    if plan.unsupported:
        first = plan.unsupported[0]
        plan.error = (
            f"ValueError: Target module {profile.modules[first].cls}(...) is not supported "
            f"(first at {first}; {len(plan.unsupported)} such modules)"
        )
    elif not plan.targeted:
        plan.error = (
            "NoMatchingPeftModuleError: All modules were excluded"
            if plan.excluded
            else f"NoMatchingPeftModuleError: Target modules {cfg.target_modules} not found in the base model"
        )
    return plan


def rank_for(cfg: AdapterConfig, module: str) -> int:
    return int(_pattern_value(cfg.rank_pattern, module, cfg.r or 8))


def alpha_for(cfg: AdapterConfig, module: str) -> float:
    return float(_pattern_value(cfg.alpha_pattern, module, cfg.lora_alpha if cfg.lora_alpha is not None else 8))


def _pattern_value(pattern: dict[str, float] | dict[str, int], module: str, default: float) -> float:
    # peft.utils.other.get_pattern_key: the first pattern key that matches as a suffix regex
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return pattern[key]
    return default


def expected_params(cfg: AdapterConfig, profile: BaseProfile, module: str) -> dict[str, tuple[int, ...]]:
    """The file-format params peft creates for an injected ``module`` with their shapes."""
    info = profile.modules[module]
    r = rank_for(cfg, module)
    fin, fout = info.in_features or 0, info.out_features or 0
    if info.kind == "embedding":
        return {"lora_embedding_A": (r, fin), "lora_embedding_B": (fout, r)}
    out: dict[str, tuple[int, ...]] = {"lora_A.weight": (r, fin), "lora_B.weight": (fout, r)}
    if getattr(cfg, "lora_bias", False) or cfg.raw.get("lora_bias"):
        out["lora_B.bias"] = (fout,)
    if cfg.use_dora:
        out["lora_magnitude_vector"] = (fout,)  # peft saves the DoRA magnitude without ".weight"
    return out
