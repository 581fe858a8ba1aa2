"""peft's injection rules, re-stated in pure Python for the static (``--fast``) path.

These mirror ``peft.tuners.tuners_utils.check_target_module_exists`` and ``_maybe_include_all_linear_layers``
(peft 0.14 - 0.21). The full doctor runs real peft on the meta device and a test checks that both agree on
every fixture, so a drift in peft shows up as a failing test, not as a wrong verdict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from loradoc.io import regex_guard
from loradoc.io.adapter_config import KNOWN_PEFT_TYPES, AdapterConfig
from loradoc.io.regex_guard import RegexProblem
from loradoc.model.param_targets import ParamPlan, plan_parameters
from loradoc.model.peft_patterns import pattern_regex, rank_for, rx

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from loradoc.model.base_profile import BaseProfile


@dataclass
class InjectionPlan:
    targeted: list[str] = field(default_factory=list)  # modules peft would wrap (in named_modules order)
    excluded: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # targeted modules peft cannot wrap -> ValueError
    error: str | None = None  # the exception peft would raise while injecting, if any
    #: a config regex too expensive to evaluate (peft would hang on it): nothing may run it, not even peft
    regex_problem: RegexProblem | None = None
    #: parameters wrapped through ``target_parameters`` (fused MoE experts): see loradoc.model.param_targets
    params: ParamPlan = field(default_factory=ParamPlan)

    @property
    def raises(self) -> bool:
        return self.error is not None


def _mts_regex(m: str) -> str:
    return rf"(^|.*\.){m}($|\..*)"


def _layers_regex(p: str) -> str:
    return rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\."


def regex_jobs(cfg: AdapterConfig) -> list[tuple[str, str, str]]:
    """Every regex peft builds from ``cfg`` that could be slow: (pattern, re function, config field)."""
    jobs: list[tuple[str, str, str]] = []
    for fld, value in (("target_modules", cfg.target_modules), ("exclude_modules", cfg.exclude_modules)):
        if isinstance(value, str) and value.lower() != "all-linear" and not regex_guard.is_literal(value):
            jobs.append((value, "fullmatch", fld))
    for m in cfg.modules_to_save or []:
        if not regex_guard.is_literal(m):
            jobs.append((_mts_regex(m), "match", "modules_to_save"))
    lp = cfg.layers_pattern
    for p in [lp] if isinstance(lp, str) else lp or []:
        if not regex_guard.is_literal(p):
            jobs.append((_layers_regex(p), "match", "layers_pattern"))
    for fld, pat in (("rank_pattern", cfg.rank_pattern), ("alpha_pattern", cfg.alpha_pattern)):
        for key in pat:
            if not regex_guard.is_literal(key):
                jobs.append((pattern_regex(key), "match", fld))
    return jobs


def _vet_pattern_keys(cfg: AdapterConfig, plan: InjectionPlan) -> None:
    """More rank/alpha_pattern keys than re's compile cache holds: peft's get_pattern_key recompiles every key
    for every targeted module, which can take minutes. Time it the way peft runs it, on the targeted modules."""
    for fld, pat in (("rank_pattern", cfg.rank_pattern), ("alpha_pattern", cfg.alpha_pattern)):
        if len(pat) > _RE_CACHE_SIZE and plan.targeted:
            try:
                regex_guard.vet([(json.dumps(list(pat)), "pattern_keys", fld)], plan.targeted)
            except RegexProblem as e:
                plan.regex_problem = e
                plan.error = f"regex-too-expensive: {e.message}"
                return


_RE_CACHE_SIZE = 512  # re._MAXCACHE in CPython 3.11 - 3.13


def _dotted_suffix_in(name: str, names: set[str] | frozenset[str]) -> bool:
    """``any(name.endswith("." + t) for t in names)`` with one set lookup per dot of ``name``."""
    i = name.find(".")
    while i != -1 and name[i + 1 :] not in names:
        i = name.find(".", i + 1)
    return i != -1


def _excluded(cfg: AdapterConfig, name: str, ex_set: frozenset[str] | None = None) -> bool:
    ex = cfg.exclude_modules
    if ex:
        if isinstance(ex, str):
            if rx(ex).fullmatch(name):
                return True
        else:
            names = ex_set if ex_set is not None else frozenset(ex)
            if name in names or _dotted_suffix_in(name, names):
                return True
    mts = list(cfg.modules_to_save or []) + task_heads(cfg)
    return any(rx(_mts_regex(m)).match(name) for m in mts)


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
            match = rx(_layers_regex(p)).match(name)
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
        return rx(targets).fullmatch(name) is not None
    if name in targets:
        return True
    if isinstance(targets, set | frozenset):
        found = _dotted_suffix_in(name, targets)
    else:
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
        repr(cfg.target_parameters),
        repr([cfg.raw.get(k) for k in ("lora_dropout", "fan_in_fan_out", "lora_bias", "use_dora")]),
    )
    memo = profile.memo()
    if key not in memo:
        memo[key] = _plan_injection(cfg, profile)
    return memo[key]


def _plan_injection(cfg: AdapterConfig, profile: BaseProfile) -> InjectionPlan:
    plan = InjectionPlan()
    try:
        # before anything evaluates them (here, or peft in the dry load): a regex peft would hang on
        regex_guard.vet(regex_jobs(cfg), list(profile.modules))
    except RegexProblem as e:
        if e.kind == "invalid":
            plan.error = e.message  # peft raises re.error from re.fullmatch / re.match while injecting
        else:
            plan.regex_problem = e
            plan.error = f"regex-too-expensive: {e.message}"
        return plan
    raw_type = cfg.raw.get("peft_type")
    if not isinstance(raw_type, str) or raw_type not in KNOWN_PEFT_TYPES:
        # peft: PeftConfig._get_peft_type reads loaded["peft_type"], then PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
        # (exact, case-sensitive)
        plan.error = "KeyError: 'peft_type'" if raw_type is None else f"KeyError: {raw_type!r}"
        return plan
    if cfg.peft_type != "LORA":
        plan.error = f"static analysis covers LoRA only ({cfg.peft_type}); run doctor without --fast"
        return plan
    targets = effective_targets(cfg, profile)
    if targets is None and not cfg.target_parameters:
        plan.error = "ValueError: Please specify `target_modules` or `target_parameters`in `peft_config`"
        return plan
    if targets is None:
        targets = []  # peft: no target_modules, target_parameters only
    if isinstance(targets, list):
        targets = frozenset(targets)  # same answers, one set lookup per dot of a name
    ex_set = frozenset(cfg.exclude_modules) if isinstance(cfg.exclude_modules, list) else None
    for name, info in profile.modules.items():
        if _excluded(cfg, name, ex_set):
            plan.excluded.append(name)
            continue
        if not target_matches(cfg, targets, name):
            continue
        plan.targeted.append(name)
        if not info.lora_supported:
            plan.unsupported.append(name)
    _vet_pattern_keys(cfg, plan)
    if plan.regex_problem is not None:
        return plan
    plan.params = plan_parameters(cfg, profile)
    if plan.unsupported:
        first = plan.unsupported[0]
        plan.error = (
            f"ValueError: Target module {profile.modules[first].cls}(...) is not supported "
            f"(first at {first}; {len(plan.unsupported)} such modules)"
        )
    elif plan.params.error is not None:
        plan.error = plan.params.error
    elif not plan.targeted and not plan.params.targets and not plan.params.unknown:
        plan.error = (
            "NoMatchingPeftModuleError: All modules were excluded"
            if plan.excluded
            else f"NoMatchingPeftModuleError: Target modules {cfg.target_modules} not found in the base model"
        )
    return plan


def expected_params(cfg: AdapterConfig, profile: BaseProfile, module: str) -> dict[str, tuple[int, ...]]:
    """The file-format params peft creates for an injected ``module`` with their shapes."""
    info = profile.modules[module]
    r = rank_for(cfg, module)
    fin, fout = info.in_features or 0, info.out_features or 0
    if info.kind == "embedding":
        return {"lora_embedding_A": (r, fin), "lora_embedding_B": (fout, r)}
    if info.kind == "conv":
        # peft's conv LoRA: A has the base's kernel (not in the profile: -1 = any size), B a 1x..x1 kernel
        nd = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}.get(info.cls, 2)
        conv: dict[str, tuple[int, ...]] = {
            "lora_A.weight": (r, fin, *(-1,) * nd),
            "lora_B.weight": (fout, r, *(1,) * nd),
        }
        if getattr(cfg, "lora_bias", False) or cfg.raw.get("lora_bias"):
            conv["lora_B.bias"] = (fout,)
        return conv
    out: dict[str, tuple[int, ...]] = {"lora_A.weight": (r, fin), "lora_B.weight": (fout, r)}
    if getattr(cfg, "lora_bias", False) or cfg.raw.get("lora_bias"):
        out["lora_B.bias"] = (fout,)
    if cfg.use_dora:
        out["lora_magnitude_vector"] = (fout,)  # peft saves the DoRA magnitude without ".weight"
    return out
