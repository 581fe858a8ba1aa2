"""Static analysis: map every adapter tensor to a base module and predict what peft will do.

Pure Python over the safetensors header, the adapter config and a base profile: no torch. The prediction
(loaded / missing / unexpected, or the exception peft raises) is checked against a real peft dry load by the
full doctor and by the tests.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from loradoc.diagnose import findings as F
from loradoc.diagnose.findings import Finding
from loradoc.io.adapter_config import AdapterConfig, fields_unsupported_by
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.layout import PEFT_PREFIX, LoraKey, format_key, parse_key
from loradoc.model.param_targets import saved_parameter_loras
from loradoc.model.peft_rules import InjectionPlan, expected_params, plan_injection, rank_for
from loradoc.model.profiles import HEAD_NAMES, BaseProfile, installed_version

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
_SAVED_INFIX = re.compile(r"\.modules_to_save\.[A-Za-z0-9_\-]+(?=\.|$)")
_ORIGINAL_INFIX = ".original_module"


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


def _model_key(p: LoraKey, profile: BaseProfile) -> str:
    """The key as peft looks it up in the model (adapter name omitted), after peft's conversion renames."""
    module = converted_module(p, profile) if p.is_lora else None
    if module is not None:
        return f"{PEFT_PREFIX}{module}.{p.param}"
    prefix = PEFT_PREFIX if p.had_peft_prefix else ""
    return f"{prefix}{p.module}.{p.param}"


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
        mk = _model_key(p, profile)
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
    found = _findings(snapshot, profile, plan, fates, missing_keys, owner)
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


def trained_parts_findings(
    snapshot: AdapterSnapshot,
    profile: BaseProfile,
    plan: InjectionPlan,
    fates: dict[str, KeyFate],
    unsaved_wrapped: list[str],
    *,
    unsaved_bias: list[str] | None = None,
) -> list[Finding]:
    """What loads is what was trained: parts the config declares trained that the file lacks.

    ``unsaved_bias``: from the dry load (peft's own ``get_peft_model_state_dict`` of the injected model); without
    it (``--fast``) ``bias="lora_only"`` is judged from the profile's biased modules (``MODULE.base_layer.bias`` of
    every targeted layer with a bias, as peft saves it); for ``bias="all"``, or a profile that does not record
    biases, the static side says what the config and the header show: trained biases declared, none in the file
    (an error, as the full doctor reports it when the base's layers have biases; when they have none the full
    doctor turns it into an info finding that names the difference)."""
    cfg = snapshot.config
    out: list[Finding] = []
    if unsaved_wrapped:
        out.append(
            F.make(
                "unsaved-modules",
                F.ERROR,
                len(unsaved_wrapped),
                f"{len(unsaved_wrapped)} modules are trained and saved whole (modules_to_save / the task's head: "
                f"{', '.join(unsaved_wrapped[:4])}) but the file has no tensors for them; peft raises KeyError "
                "(older peft loaded the untrained module silently)",
                keys=[f"{PEFT_PREFIX}{m}" for m in unsaved_wrapped],
            )
        )
    bias = (cfg.bias or "none").lower()
    if unsaved_bias is None and bias == "lora_only" and profile.biased is not None:
        # peft saves MODULE.base_layer.bias of every injected layer that has a bias: the profile knows which do
        biased = set(profile.biased)
        present = {f.target for f in fates.values() if f.status == LOADS_BASE and f.param == "bias"}
        present |= {
            f.target.removesuffix(".base_layer")
            for f in fates.values()
            if f.status == MISPATHED and f.param == "bias" and f.target
        }
        unsaved_bias = [f"{PEFT_PREFIX}{m}.base_layer.bias" for m in plan.targeted if m in biased and m not in present]
    if bias in ("lora_only", "all"):
        if unsaved_bias is not None:
            if unsaved_bias:
                out.append(
                    F.make(
                        "unsaved-bias",
                        F.ERROR,
                        len(unsaved_bias),
                        f'bias="{bias}" trains {len(unsaved_bias)} biases that the file does not contain; peft loads '
                        "silently and the base's untrained biases stay (what loads is not what was trained)",
                        keys=unsaved_bias,
                    )
                )
        elif not any(f.param == "bias" and f.status == LOADS_BASE for f in fates.values()):
            # knowable from the config and the header alone: the config declares trained biases, the file has
            # none. Which biases peft would have saved (the count) is for the dry load to say.
            scope = "the targeted layers'" if bias == "lora_only" else "the model's"
            out.append(
                F.make(
                    "unsaved-bias",
                    F.ERROR,
                    len(plan.targeted) if bias == "lora_only" else 0,
                    f'bias="{bias}" declares trained biases and the file has none: if {scope} biases exist (up to '
                    f"{len(plan.targeted)} targeted layers), peft loads silently and the base's untrained biases "
                    "stay (doctor without --fast counts them)",
                )
            )
    return out


def declares_unsaved_bias(snapshot: AdapterSnapshot, fates: dict[str, KeyFate]) -> bool:
    """bias="lora_only"/"all" and the file holds no bias a peft load would put into the model (what ``--fast``
    reports as ``unsaved-bias`` without knowing whether the base's layers have biases)."""
    bias = (snapshot.config.bias or "none").lower()
    return bias in ("lora_only", "all") and not any(
        f.param == "bias" and f.status == LOADS_BASE for f in fates.values()
    )


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
    if _ORIGINAL_INFIX in module:
        canon = module.replace(_ORIGINAL_INFIX, "")
        if canon in profile.modules:
            return KeyFate(
                p.key, HEAD_COPY, tower, canon, p.param, "untrained copy of a trained module (original_module)"
            )
        return None
    canon = _SAVED_INFIX.sub("", module)
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


def _path_pair(fate: KeyFate, p: LoraKey) -> tuple[str, str]:
    """Summarise a mis-pathing as (saved prefix, base prefix).

    e.g. ('base_model.model.model.layers.N', 'base_model.model.model.language_model.layers.N').
    """
    saved = (PEFT_PREFIX if p.had_peft_prefix else "") + p.module
    target = PEFT_PREFIX + (fate.target or "")
    layer = re.compile(r"^(.*?\.(?:layers|h|blocks)\.)\d+(\.|$)")
    ms, mt = layer.match(saved), layer.match(target)
    if ms and mt:
        return ms.group(1) + "N", mt.group(1) + "N"
    s_parts, t_parts = saved.split("."), target.split(".")
    while s_parts and t_parts and s_parts[-1] == t_parts[-1]:
        s_parts.pop()
        t_parts.pop()
    return ".".join(s_parts) or "(root)", ".".join(t_parts) or "(root)"


def _ranges(nums: list[int | None]) -> str:
    vals = sorted(n for n in nums if n is not None)
    parts: list[str] = []
    for n in vals:
        if parts and int(parts[-1].split("-")[-1]) == n - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ",".join(parts)


def _findings(
    snapshot: AdapterSnapshot,
    profile: BaseProfile,
    plan: InjectionPlan,
    fates: dict[str, KeyFate],
    missing_keys: list[str],
    owner: dict[str, str],
) -> list[Finding]:
    cfg = snapshot.config
    out: list[Finding] = []
    by_status: dict[str, list[KeyFate]] = defaultdict(list)
    for f in fates.values():
        by_status[f.status].append(f)

    mis = by_status[MISPATHED]
    if mis:
        pairs = Counter(_path_pair(f, parse_key(f.key)) for f in mis)
        desc = "; ".join(f"`{a}` -> `{b}` ({n})" for (a, b), n in pairs.most_common(3))
        out.append(
            F.make(
                "mispathed-keys",
                F.ERROR,
                len(mis),
                f"{len(mis)} keys are saved under paths the base does not have: {desc}",
                keys=[f.key for f in mis],
            )
        )

    # Tower LoRAs: loaded ones are a warning, ones that would be dropped are an error.
    tower_keys: dict[str, list[KeyFate]] = defaultdict(list)
    for f in fates.values():
        if f.tower != "language" and f.status in (LOADS, TOWER):
            tower_keys[f.tower].append(f)
    for tower, fs in sorted(tower_keys.items()):
        dropped = [f for f in fs if f.status == TOWER]
        inner = sum(
            1
            for f in fs
            if parse_key(f.key).module.endswith(".linear")
            and f.target
            and f.target in profile.modules
            and profile.modules[f.target].kind == "clippable"
        )
        where = f" ({inner} at Gemma4ClippableLinear's inner `.linear`)" if inner else ""
        if dropped:
            out.append(
                F.make(
                    "tower-lora",
                    F.ERROR,
                    len(fs),
                    f"{len(fs)} LoRA tensors on the {tower} tower{where} would not load; "
                    "the text model never uses them",
                    tower=tower,
                    keys=[f.key for f in fs],
                )
            )
        else:
            out.append(
                F.make(
                    "tower-lora",
                    F.WARNING,
                    len(fs),
                    f"{len(fs)} LoRA tensors on the {tower} tower load and adapt it",
                    tower=tower,
                    keys=[f.key for f in fs],
                )
            )

    # Injection into towers that cannot be served: peft raises (Clippable) or leaves default LoRAs (missing keys).
    tower_targets = [m for m in plan.targeted if profile.tower_of(m) != "language"]
    if tower_targets:
        # modules whose tensors are only saved under another path are answered by rerooting, not excluding
        missing_mods = {owner[k] for k in missing_keys if k in owner} - {f.target for f in mis}
        bad = [m for m in tower_targets if m in plan.unsupported or m in missing_mods]
        if bad:
            towers = sorted({profile.tower_of(m) for m in bad})
            why = []
            if any(m in plan.unsupported for m in bad):
                n_uns = sum(1 for m in bad if m in plan.unsupported)
                cls = profile.modules[next(m for m in bad if m in plan.unsupported)].cls
                why.append(f"peft cannot wrap {n_uns} of them ({cls}) and raises")
            if any(m in missing_mods for m in bad):
                why.append(f"{sum(1 for m in bad if m in missing_mods)} would stay default-initialised")
            ex = cfg.exclude_modules
            if isinstance(ex, list) and any(t in ex for t in profile.tower_roots()):
                why.append(
                    f"exclude_modules {ex} is a list, which matches only those exact modules, not their children"
                )
            elif not ex:
                why.append("no exclude_modules")
            out.append(
                F.make(
                    "tower-injection",
                    F.ERROR,
                    len(bad),
                    f"target_modules also match {len(bad)} {'/'.join(towers)} tower modules: " + "; ".join(why),
                    keys=bad,
                )
            )

    orphans = by_status[ORPHAN] + by_status[HEAD_COPY]
    if orphans:
        reasons = Counter(f.reason for f in orphans)
        desc = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
        kv = [f for f in orphans if "KV-shared" in f.reason]
        kv_layers = sorted({profile.address_of(parse_key(f.key).module).layer for f in kv})
        head = f"{len(orphans)} tensors have no module in the base"
        if kv_layers:
            head += f" (KV-shared layers {_ranges(kv_layers)})"
        out.append(F.make("orphan-keys", F.ERROR, len(orphans), f"{head}: {desc}", keys=[f.key for f in orphans]))

    untargeted = by_status[UNTARGETED]
    if untargeted:
        on_params = [f for f in untargeted if f.target and f.target not in profile.modules or "parameter" in f.reason]
        what = f" ({len(on_params)} are LoRAs of parameters target_parameters does not name)" if on_params else ""
        out.append(
            Finding(
                "untargeted-keys",
                F.ERROR,
                len(untargeted),
                f"{len(untargeted)} tensors belong to base modules the config does not target{what}",
                "add-targets",
                None,
                [f.key for f in untargeted],
            )
        )

    lang_missing = [k for k in missing_keys if profile.tower_of(owner.get(k, "")) == "language"]
    mis_targets = {f.target for f in mis}
    unexplained = [k for k in lang_missing if owner.get(k) not in mis_targets]
    if unexplained:
        mods = sorted({owner[k] for k in unexplained})
        out.append(
            Finding(
                "missing-keys",
                F.ERROR,
                len(unexplained),
                f"the config injects {len(mods)} language-model modules the file has no tensors for "
                "(peft leaves them default-initialised)",
                "narrow-targets",
                None,
                unexplained,
            )
        )

    shape = by_status[SHAPE]
    if shape:
        out.append(
            F.make(
                "shape-mismatch",
                F.ERROR,
                len(shape),
                f"{len(shape)} tensors do not fit the base: {shape[0].reason} (wrong base?)",
                keys=[f.key for f in shape],
            )
        )
    rank = by_status[RANK]
    if rank:
        ranks = Counter(f.reason for f in rank)
        out.append(
            F.make(
                "rank-mismatch",
                F.ERROR,
                len(rank),
                f"{len(rank)} tensors have a rank other than the config's: "
                + "; ".join(f"{r} ({n})" for r, n in ranks.most_common(3)),
                keys=[f.key for f in rank],
            )
        )

    q = quantized_base_reference(cfg.base_model)
    if q:
        out.append(F.make("quantized-base", F.WARNING, 1, q))
    if snapshot.weights_format == "pickle":
        out.append(
            F.make(
                "pickle-weights",
                F.WARNING,
                1,
                f"{snapshot.weights_path.name} is a pickle; peft loads it with weights_only=True",
            )
        )
    peft_v = installed_version("peft")
    if peft_v:
        unsupported = fields_unsupported_by(cfg, peft_v)
        if unsupported:
            out.append(
                F.make(
                    "unsupported-fields",
                    F.WARNING,
                    len(unsupported),
                    f"peft {peft_v} does not know config fields {', '.join(unsupported)}",
                )
            )
    if cfg.peft_type != "LORA":
        out.append(F.make("not-lora", F.INFO, 1, f"{cfg.peft_type} adapter: only LoRA is analysed in depth"))
    out.extend(scaling_findings(cfg))
    return out


def scaling_findings(cfg: AdapterConfig) -> list[Finding]:
    """A LoRA's output is scaled by lora_alpha / r (or / sqrt(r)): a zero, negative or non-finite alpha, or a
    rank <= 0, zeroes, flips or poisons every module it applies to (peft loads it without a word, or raises)."""
    if cfg.peft_type not in ("LORA", "ADALORA"):
        return []
    bad: list[str] = []
    if cfg.r is not None and cfg.r <= 0:
        bad.append(f"r is {cfg.r}")
    alpha = cfg.lora_alpha
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        bad.append(f"lora_alpha is {alpha!r}")
    for key, a in cfg.alpha_pattern.items():
        if not (math.isfinite(a) and a > 0):
            bad.append(f"alpha_pattern[{key!r}] is {a!r}")
    for key, r in cfg.rank_pattern.items() if cfg.peft_type == "LORA" else ():  # AdaLoRA prunes ranks to 0
        if not r > 0:
            bad.append(f"rank_pattern[{key!r}] is {r!r}")
    if not bad:
        return []
    shown = "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
    return [
        F.make(
            "bad-scaling",
            F.ERROR,
            len(bad),
            f"{shown}: the LoRA scaling (alpha / r) would be zero, negative or not finite, so the adapter would "
            "do nothing or poison the outputs; set the values it was trained with",
            repair=None,
        )
    ]


# ---------------------------------------------------------------------------------------------------------


def quantized_base_reference(base: str | None) -> str | None:
    """A message when ``base`` names a quantized repack (from manifests/repacks.toml, or by its name)."""
    if not base:
        return None
    from loradoc.model.repacks import lookup_repack

    hit = lookup_repack(base)
    if hit is not None:
        if not hit.quantized:
            return None
        return f"base_model_name_or_path {base} is a {hit.relation} of {hit.original}"
    low = base.lower()
    for marker in ("bnb-4bit", "4bit", "-awq", "gptq", "bnb-8bit", "int4", "-nf4"):
        if marker in low:
            return f"base_model_name_or_path {base} looks like a quantized repack ({marker})"
    return None
