"""Static analysis: map every adapter tensor to a base module and predict what peft will do.

Pure Python over the safetensors header, the adapter config and a base profile: no torch. The prediction
(loaded / missing / unexpected, or the exception peft raises) is checked against a real peft dry load by the
full doctor and by the tests.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from loradoc.diagnose import findings as F
from loradoc.diagnose.keyfates import (
    HEAD_COPY,
    LOADS,
    LOADS_BASE,
    MISPATHED,
    ORIGINAL_INFIX,
    ORPHAN,
    RANK,
    SAVED_INFIX,
    SHAPE,
    TOWER,
    UNTARGETED,
    KeyFate,
    PeftCounts,
    StaticResult,
    converted_module,
    converted_path,
    model_key,
)
from loradoc.diagnose.static_findings import key_findings, trained_parts_findings
from loradoc.io.adapter_config import AdapterConfig
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.layout import PEFT_PREFIX, LoraKey, format_key, parse_key
from loradoc.model.param_targets import saved_parameter_loras
from loradoc.model.peft_patterns import rank_for
from loradoc.model.peft_rules import InjectionPlan, expected_params, plan_injection
from loradoc.model.profiles import HEAD_NAMES, BaseProfile


def analyze(snapshot: AdapterSnapshot, profile: BaseProfile) -> StaticResult:
    cfg = snapshot.config
    plan = plan_injection(cfg, profile)
    if plan.regex_problem is not None:
        # nothing may evaluate that regex (the per-key analysis would, through rank_pattern etc.)
        rp = plan.regex_problem
        finding = F.make(
            "regex-too-expensive",
            F.ERROR,
            1,
            f"{rp.message}; peft would hang (or fail) on it, so loradoc did not run it",
            repair=None,
        )
        return StaticResult({}, plan, PeftCounts(None, None, None, False, plan.error), [finding])
    expected: dict[str, tuple[int, ...]] = {}
    owner: dict[str, str] = {}
    for m in plan.targeted:
        if profile.modules[m].lora_supported:
            for param, shape in expected_params(cfg, profile, m).items():
                k = format_key(m, param)
                expected[k] = shape
                owner[k] = m
    # LoRAs on bare parameters (target_parameters: fused MoE experts), under peft's ParamWrapper paths
    param_index: dict[Any, str] = {}
    for body, (shape, wrapper) in plan.params.expected().items():
        expected[PEFT_PREFIX + body] = shape
        owner[PEFT_PREFIX + body] = wrapper
        param_index[profile.address_of(wrapper)] = wrapper
    index = profile.address_index()
    saved_modules = wrapped_modules(cfg, profile)
    param_wrappers = set(param_index.values())
    guessed: dict[str, str] = {}
    if profile.parameters:
        lora_shapes = {}
        for key, rec in snapshot.tensors.items():
            p = parse_key(key)
            if p.had_peft_prefix and p.param in ("lora_A.weight", "lora_B.weight"):
                lora_shapes[f"{p.module}.{p.kind}"] = tuple(rec.shape)
        guessed = saved_parameter_loras(profile, lora_shapes)
    untargeted_params: dict[str, str] = {}
    fates: dict[str, KeyFate] = {}
    provided: set[str] = set()
    targeted = set(plan.targeted)
    size_mismatch: list[str] = []
    for key, rec in snapshot.tensors.items():
        p = parse_key(key)
        mk = model_key(p, profile)
        tower = profile.tower_of(p.module)
        if mk in expected:
            provided.add(mk)
            want = expected[mk]
            target = owner[mk]
            if len(rec.shape) == len(want) and all(w in (-1, n) for n, w in zip(rec.shape, want, strict=True)):
                fates[key] = KeyFate(key, LOADS, tower, target, p.param)
            elif target in param_wrappers:
                size_mismatch.append(key)
                why = f"shape {tuple(rec.shape)} does not fit the parameter LoRA of {target} {want}"
                fates[key] = KeyFate(key, SHAPE, tower, target, p.param, why)
            else:
                size_mismatch.append(key)
                status, why = _shape_status(cfg, profile, target, p, rec.shape)
                fates[key] = KeyFate(key, status, tower, target, p.param, why)
            continue
        base_mod = mk[len(PEFT_PREFIX) :].rsplit(".", 1)[0] if mk.startswith(PEFT_PREFIX) else None
        if not p.is_lora and base_mod in profile.modules and p.param in ("weight", "bias"):
            fates[key] = KeyFate(key, LOADS_BASE, tower, base_mod, p.param, "full weight of a base module")
            continue
        full = _full_weight_fate(p, profile, saved_modules)
        if full is not None:
            fates[key] = full
            continue
        wrapped = base_mod[: -len(".base_layer")] if base_mod and base_mod.endswith(".base_layer") else None
        if not p.is_lora and wrapped in targeted and p.param in ("weight", "bias"):
            # peft saves the base weight of targeted embedding / lm_head layers (save_embedding_layers)
            fates[key] = KeyFate(key, LOADS_BASE, tower, wrapped, p.param, "base weight saved with the adapter")
            continue
        layer = _saved_base_layer(p, profile, index, targeted)
        if layer is not None:
            # a targeted layer's base weight / bias saved under another path (bias="lora_only" without the prefix)
            why = f"{p.module} -> {layer}.base_layer"
            fates[key] = KeyFate(key, MISPATHED, tower, f"{layer}.base_layer", p.param, why)
            continue
        alt = param_index.get(profile.address_of(p.module)) if p.is_lora else None
        if alt is not None and expected.get(format_key(alt, p.param)) == tuple(rec.shape):
            # a parameter LoRA saved under another path (no prefix, another wrapper)
            fates[key] = KeyFate(key, MISPATHED, tower, alt, p.param, f"{p.module} -> {alt}")
            continue
        if p.had_peft_prefix and p.module in guessed:
            entry = guessed[p.module]
            untargeted_params[p.module] = entry
            why = f"LoRA of parameter {entry}, which target_parameters does not name"
            fates[key] = KeyFate(key, UNTARGETED, tower, p.module, p.param, why)
            continue
        if plan.params.unknown and p.is_lora and _may_be_param_lora(cfg, p.module):
            fates[key] = KeyFate(key, LOADS, tower, p.module, p.param, "parameter LoRA (not checked: see findings)")
            continue
        fates[key] = _classify_unexpected(cfg, profile, index, plan, p, rec.shape)

    # peft's view
    missing_keys = sorted(k for k in expected if k not in provided)
    unexpected_keys = sorted(k for k, f in fates.items() if f.status not in (LOADS, LOADS_BASE, SHAPE, RANK))
    # peft looks up every parameter of a ModulesToSaveWrapper in the file and raises KeyError without it
    have = {f.target for f in fates.values() if f.status == LOADS_BASE and f.target}
    unsaved_wrapped = [m for m in saved_modules if not any(h == m or h.startswith(m + ".") for h in have)]
    pairs: dict[str, set[str]] = defaultdict(set)
    for f in fates.values():
        if f.status == LOADS and f.target:
            pairs[f.target].add(f.param.split(".")[0].replace("lora_embedding_", "lora_"))
    effective_modules = sum(1 for s in pairs.values() if {"lora_A", "lora_B"} <= s)
    error = plan.error
    if error is None and unsaved_wrapped:
        error = f"KeyError: 'base_model.model.{unsaved_wrapped[0]}.weight'"
    if error is None and size_mismatch:
        error = f"RuntimeError: size mismatch for {len(size_mismatch)} adapter tensors while loading state_dict"
    if error is not None:
        predicted = PeftCounts(None, None, None, False, error, injected_modules=len(plan.targeted))
    else:
        predicted = PeftCounts(
            loaded=sum(1 for f in fates.values() if f.status in (LOADS, LOADS_BASE)),
            missing=len(missing_keys),
            unexpected=len(unexpected_keys),
            effective=effective_modules > 0,
            missing_keys=missing_keys,
            unexpected_keys=unexpected_keys,
            effective_modules=effective_modules,
            injected_modules=len(plan.targeted),
        )
    found = key_findings(snapshot, profile, plan, fates, missing_keys, owner)
    if plan.params.unknown:
        found.append(
            F.make(
                "params-unchecked",
                F.INFO,
                len(cfg.target_parameters or []),
                f"target_parameters {cfg.target_parameters} name parameters the base profile does not record (a "
                "profile built before parameters were recorded, or a layer's own weight): their LoRAs are assumed "
                "to load, unchecked (run `loradoc doctor` without --fast for peft's real load)",
                repair=None,
            )
        )
    # a head saved under another path is mis-pathed (reroot-keys places it), not unsaved
    placed = {f.target for f in fates.values() if f.status == MISPATHED and f.target}
    absent = [m for m in unsaved_wrapped if not any(h == m or h.startswith(m + ".") for h in placed)]
    found += trained_parts_findings(snapshot, profile, plan, fates, absent)
    return StaticResult(fates, plan, predicted, found, untargeted_params)


def wrapped_modules(cfg: AdapterConfig, profile: BaseProfile) -> list[str]:
    """The modules peft wraps in ModulesToSaveWrapper (trained and saved whole): ``modules_to_save`` plus the heads
    the task type adds (peft's PeftModelForSequenceClassification etc.), matched as peft does (name or suffix)."""
    names = list(cfg.modules_to_save or [])
    task = (cfg.task_type or "").upper()
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        names += ["classifier", "score"]
    elif task == "QUESTION_ANS":
        names += ["qa_outputs"]
    if not names:
        return []
    memo = profile.memo()
    key = ("wrapped", tuple(sorted(set(names))))
    if key not in memo:
        # peft's _set_trainable: ``key.endswith(name)``, no dot (``pre_classifier`` matches ``classifier``)
        out = [m for m in profile.modules if any(m.endswith(n) for n in names)]
        # the outermost match only (a wrapped module's children are inside the wrapper)
        memo[key] = [m for m in out if not any(m.startswith(o + ".") for o in out if o != m)]
    return memo[key]


def _full_weight_fate(p: LoraKey, profile: BaseProfile, saved: list[str]) -> KeyFate | None:
    """A full (non-LoRA) weight peft would load if it were saved under the base's path: a head saved in an older
    ``X.modules_to_save.default.*`` layout, or without the ``base_model.model.`` prefix; ``X.original_module.*``
    is the untrained copy of a head."""
    if p.is_lora or p.param not in ("weight", "bias"):
        return None
    module = p.module
    while module.startswith(PEFT_PREFIX):
        module = module[len(PEFT_PREFIX) :]
    tower = profile.tower_of(module)
    if ORIGINAL_INFIX in module:
        canon = module.replace(ORIGINAL_INFIX, "")
        if canon in profile.modules:
            return KeyFate(
                p.key, HEAD_COPY, tower, canon, p.param, "untrained copy of a trained module (original_module)"
            )
        return None
    canon = SAVED_INFIX.sub("", module)
    if canon in profile.modules and (canon != p.module or not p.had_peft_prefix):
        is_head = canon in saved or canon.split(".", 1)[0] in HEAD_NAMES
        what = "trained head (modules_to_save)" if is_head else "full weight"
        return KeyFate(p.key, MISPATHED, tower, canon, p.param, f"{what} saved as {p.module}")
    return None


def _saved_base_layer(p: LoraKey, profile: BaseProfile, index: dict[Any, str], targeted: set[str]) -> str | None:
    """The targeted layer whose ``base_layer`` weight / bias ``p`` is, saved under another path (None if none)."""
    if p.is_lora or p.param not in ("weight", "bias") or not p.module.endswith(".base_layer"):
        return None
    layer = p.module[: -len(".base_layer")]
    while layer.startswith(PEFT_PREFIX):
        layer = layer[len(PEFT_PREFIX) :]
    if layer not in targeted:
        addr = profile.address_of(layer)
        if addr in profile.ambiguous_addresses():
            return None
        layer = index.get(addr, "")
    return layer if layer in targeted else None


def _may_be_param_lora(cfg: AdapterConfig, module: str) -> bool:
    """Whether ``module`` (a saved LoRA's path) could be peft's ParamWrapper for a ``target_parameters`` entry."""
    bare = module
    while bare.endswith(".base_layer"):
        bare = bare[: -len(".base_layer")]
    for entry in cfg.target_parameters or []:
        owner = entry.rpartition(".")[0]
        if owner and (bare == owner or bare.endswith("." + owner)):
            return True
    return False


def _shape_status(
    cfg: AdapterConfig, profile: BaseProfile, target: str, p: LoraKey, shape: tuple[int, ...]
) -> tuple[str, str]:
    """Tell a rank difference (fixable with rank_pattern) from a module-size difference (wrong base)."""
    info = profile.modules.get(target)
    if info is None:  # a parameter LoRA (ParamWrapper): rows are r x experts
        return SHAPE, f"shape {tuple(shape)} does not fit the parameter LoRA of {target}"
    want_r = rank_for(cfg, target)
    if len(shape) == 2:
        a, b = shape
        if p.kind in ("lora_A", "lora_embedding_A") and b == (info.in_features or b) and a != want_r:
            return RANK, f"rank {a} != r {want_r}"
        if p.kind in ("lora_B", "lora_embedding_B") and a == (info.out_features or a) and b != want_r:
            return RANK, f"rank {b} != r {want_r}"
    return SHAPE, f"shape {tuple(shape)} does not fit {target} ({info.in_features}->{info.out_features})"


def _fits(cfg: AdapterConfig, profile: BaseProfile, target: str, p: LoraKey, shape: tuple[int, ...]) -> bool:
    info = profile.modules[target]
    if info.kind in ("other", "conv") or len(shape) != 2:
        return True
    if p.kind in ("lora_A", "lora_embedding_A"):
        return info.in_features is None or shape[1] == info.in_features
    if p.kind in ("lora_B", "lora_embedding_B"):
        return info.out_features is None or shape[0] == info.out_features
    return True


def _classify_unexpected(
    cfg: AdapterConfig,
    profile: BaseProfile,
    index: dict[Any, str],
    plan: InjectionPlan,
    p: LoraKey,
    shape: tuple[int, ...],
) -> KeyFate:
    addr = profile.address_of(p.module)
    target = index.get(addr)
    tower = addr.tower
    if target is not None and addr in profile.ambiguous_addresses() and target != converted_path(p.module, profile):
        return KeyFate(
            p.key, ORPHAN, tower, None, p.param, f"several base modules share this key's address ({addr.local})"
        )
    if tower != "language":
        if target is None:
            return KeyFate(p.key, ORPHAN, tower, None, p.param, "no such tower module in the base")
        injected = target in plan.targeted and profile.modules[target].lora_supported
        if p.is_lora and injected and _fits(cfg, profile, target, p, shape) and target != converted_module(p, profile):
            # the config injects this tower module and the tensor fits it: saved under another path (4.x layouts)
            return KeyFate(p.key, MISPATHED, tower, target, p.param, f"{p.module} -> {target}")
        return KeyFate(p.key, TOWER, tower, target, p.param, "tower module; not loaded as saved")
    if target is None or not p.is_lora:
        why = "no module at this address in the base"
        if (
            addr.layer is not None
            and addr.layer in profile.kv_shared_layers
            and addr.local.endswith(("k_proj", "v_proj"))
        ):
            why = "k/v LoRA of a KV-shared layer (those layers have no k_proj/v_proj)"
        return KeyFate(p.key, ORPHAN, tower, None, p.param, why)
    if not _fits(cfg, profile, target, p, shape):
        info = profile.modules[target]
        return KeyFate(
            p.key,
            SHAPE,
            tower,
            target,
            p.param,
            f"shape {tuple(shape)} does not fit {target} ({info.in_features}->{info.out_features})",
        )
    if target != converted_module(p, profile):
        return KeyFate(p.key, MISPATHED, tower, target, p.param, f"{p.module} -> {target}")
    return KeyFate(p.key, UNTARGETED, tower, target, p.param, "the config does not target this module")
