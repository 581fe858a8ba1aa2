"""Repair passes and the repair plan.

A pass names the finding codes it answers and transforms the *plan*: the fate of every source tensor (keep,
rename, drop with a reason) and the adapter config. Passes are registered with :func:`register_pass`
(in the spirit of peft's ``register_peft_method``); :func:`build_plan` chooses and runs them over a static
analysis, re-analysing the planned output until no answerable error is left. Nothing here reads tensor data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loradoc.diagnose import keyfates as K
from loradoc.diagnose.analysis import analyze
from loradoc.diagnose.findings import ERROR, Finding
from loradoc.errors import BadInputError
from loradoc.io.adapter_config import AdapterConfig, fields_unsupported_by, parse_adapter_config
from loradoc.io.snapshot import AdapterSnapshot, TensorRecord
from loradoc.model.layout import PEFT_PREFIX, parse_key
from loradoc.model.profiles import BaseProfile, head_module


@dataclass
class TensorAction:
    source: str
    target: str | None  # None: dropped
    pass_name: str | None = None
    reason: str = ""

    @property
    def dropped(self) -> bool:
        return self.target is None

    @property
    def renamed(self) -> bool:
        return self.target is not None and self.target != self.source


@dataclass
class ConfigChange:
    field: str
    old: Any
    new: Any
    pass_name: str
    reason: str


@dataclass
class RepairPlan:
    source: AdapterSnapshot
    profile: BaseProfile
    actions: dict[str, TensorAction]
    config: dict[str, Any]
    changes: list[ConfigChange] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # pass -> {"renamed", "dropped", "config"}
    before: list[Finding] = field(default_factory=list)
    after: list[Finding] = field(default_factory=list)
    predicted: K.PeftCounts | None = None
    # per pass: the real (meta) peft dry load of the plan's output after it, when the plan was judged
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bugs in the plan that were caught and undone (e.g. two keys renamed onto one module)
    problems: list[Finding] = field(default_factory=list)

    # -- views -----------------------------------------------------------------------------------------------
    def kept(self) -> list[TensorAction]:
        return [a for a in self.actions.values() if not a.dropped]

    def dropped(self) -> list[TensorAction]:
        return [a for a in self.actions.values() if a.dropped]

    def renamed(self) -> list[TensorAction]:
        return [a for a in self.actions.values() if a.renamed]

    def virtual_snapshot(self) -> AdapterSnapshot:
        """The planned output as a snapshot (names, shapes, config) for re-analysis."""
        tensors: dict[str, TensorRecord] = {}
        for a in self.kept():
            rec = self.source.tensors[a.source]
            assert a.target is not None
            tensors[a.target] = TensorRecord(a.target, rec.dtype, rec.shape)
        cfg = parse_adapter_config(self.config, source=f"{self.source.directory} (planned)")
        return AdapterSnapshot(
            self.source.directory, cfg, self.source.weights_path, "safetensors", tensors, self.source.source
        )

    def set_config(self, key: str, value: Any, pass_name: str, reason: str) -> None:
        old = self.config.get(key)
        if old == value:
            return
        self.config[key] = value
        self.changes.append(ConfigChange(key, old, value, pass_name, reason))
        self._count(pass_name, "config")

    def drop_config(self, key: str, pass_name: str, reason: str) -> None:
        if key in self.config:
            old = self.config.pop(key)
            self.changes.append(ConfigChange(key, old, None, pass_name, reason))
            self._count(pass_name, "config")

    def rename(self, target_key: str, new_key: str, pass_name: str, reason: str) -> None:
        a = self._by_target(target_key)
        if a is None or a.target == new_key:
            return
        a.target, a.pass_name, a.reason = new_key, pass_name, reason
        self._count(pass_name, "renamed")

    def drop(self, target_key: str, pass_name: str, reason: str) -> None:
        a = self._by_target(target_key)
        if a is None or a.dropped:
            return
        a.target, a.pass_name, a.reason = None, pass_name, reason
        self._count(pass_name, "dropped")

    def _by_target(self, key: str) -> TensorAction | None:
        a = self.actions.get(key)  # most keys are never renamed
        if a is not None and a.target == key:
            return a
        return next((x for x in self.actions.values() if x.target == key), None)

    def _count(self, pass_name: str, what: str) -> None:
        c = self.counts.setdefault(pass_name, {"renamed": 0, "dropped": 0, "config": 0})
        c[what] += 1

    def to_json(self, *, full: bool = True) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "counts": self.counts,
            "kept": len(self.kept()),
            "renamed": [{"from": a.source, "to": a.target, "pass": a.pass_name} for a in self.renamed()]
            if full
            else len(self.renamed()),
            "dropped": [{"key": a.source, "pass": a.pass_name, "reason": a.reason} for a in self.dropped()],
            "config_changes": [
                {"field": c.field, "old": c.old, "new": c.new, "pass": c.pass_name, "reason": c.reason}
                for c in self.changes
            ],
            "findings_before": [f.to_json(max_keys=0) for f in self.before],
            "findings_after": [f.to_json(max_keys=0) for f in self.after],
            "predicted_load": self.predicted.to_json(max_keys=20) if self.predicted else None,
            "judged": self.judged,
            "problems": [f.to_json(max_keys=10) for f in self.problems],
        }


@dataclass(frozen=True)
class RepairPass:
    name: str
    answers: tuple[str, ...]
    description: str
    run: Callable[[RepairPlan, K.StaticResult, dict[str, Any]], None]
    default: bool = True  # runs by default when one of its findings is an *error*


PASSES: dict[str, RepairPass] = {}


def register_pass(
    name: str, answers: tuple[str, ...], description: str, *, default: bool = True
) -> Callable[[Callable[[RepairPlan, K.StaticResult, dict[str, Any]], None]], Any]:
    def deco(fn: Callable[[RepairPlan, K.StaticResult, dict[str, Any]], None]) -> Any:
        if name in PASSES:
            raise ValueError(f"repair pass {name} registered twice")
        PASSES[name] = RepairPass(name, answers, description, fn, default)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------------------
# The passes (registration order is execution order)
# ----------------------------------------------------------------------------------------------------------


@register_pass(
    "reroot-keys",
    ("mispathed-keys",),
    "re-root mis-pathed keys onto the base's module paths (text-only <-> wrapper, prefixes, inner .linear)",
)
def _reroot(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    for key, fate in st.fates.items():
        if fate.status == K.MISPATHED and fate.target:
            plan.rename(key, f"{PEFT_PREFIX}{fate.target}.{fate.param}", "reroot-keys", fate.reason)


def is_trained_head(plan: RepairPlan, key: str) -> bool:
    """A full weight saved through modules_to_save (a task head such as ``classifier`` / ``score``, or a module
    the config names): trained, and never dropped by a repair."""
    p = parse_key(key)
    if p.is_lora:
        return False
    if head_module(key) is not None:
        return True
    module = p.module
    while module.startswith(PEFT_PREFIX):
        module = module[len(PEFT_PREFIX) :]
    names = list(plan.source.config.modules_to_save or [])
    parts = module.split(".")
    # peft wraps a module whose name ends with a modules_to_save entry (``key.endswith(name)``); its weights are
    # the wrapped module's or its children's
    ancestors = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(a.endswith(n) for a in ancestors for n in names)


@register_pass("drop-orphans", ("orphan-keys",), "drop tensors for modules the base does not have")
def _drop_orphans(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    targets = {a.target for a in plan.kept()}
    for key, fate in st.fates.items():
        if fate.status == K.HEAD_COPY:
            trained = f"{PEFT_PREFIX}{fate.target}.{fate.param}"
            if trained in targets:
                plan.drop(key, "drop-orphans", "untrained copy (original_module) of a head saved beside it")
            continue
        if fate.status == K.ORPHAN:
            if is_trained_head(plan, key):
                continue  # trained heads are never dropped: they stay for a person to place
            plan.drop(key, "drop-orphans", fate.reason)


@register_pass(
    "drop-tower-loras",
    ("tower-lora",),
    "drop LoRA tensors on the vision/audio towers (the text model never uses them)",
)
def _drop_towers(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    only_dead = not opts.get("explicit", False)
    for key, fate in st.fates.items():
        if fate.tower == "language" or fate.status not in (K.TOWER, K.LOADS):
            continue
        if only_dead and fate.status == K.LOADS:
            continue  # tower LoRAs that load are only dropped when the pass is named
        if is_trained_head(plan, key):
            continue
        plan.drop(key, "drop-tower-loras", f"{fate.tower} tower LoRA: the text model never uses it")


@register_pass(
    "keep-tower-loras",
    ("tower-lora",),
    "make tower LoRAs saved at Gemma4ClippableLinear's inner .linear load, by targeting those inner linears",
    default=False,
)
def _keep_towers(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    inner = sorted({parse_key(k).module for k, f in st.fates.items() if f.status == K.TOWER and k.endswith(".weight")})
    inner = [m for m in inner if m.endswith(".linear") and m in plan.profile.modules]
    if not inner:
        return
    cfg = parse_adapter_config(plan.config)
    modules = sorted(_language_targets(plan, cfg) | set(inner))
    plan.set_config("target_modules", modules, "keep-tower-loras", "explicit modules: LM targets + inner .linear")
    ex = plan.config.get("exclude_modules")
    if ex:
        plan.set_config("exclude_modules", None, "keep-tower-loras", "tower modules are targeted explicitly")


def _language_targets(plan: RepairPlan, cfg: AdapterConfig) -> set[str]:
    from loradoc.model.peft_rules import plan_injection

    inj = plan_injection(cfg, plan.profile)
    prof = plan.profile
    return {m for m in inj.targeted if prof.tower_of(m) == "language" and prof.modules[m].lora_supported}


def tower_exclude_regex(profile: BaseProfile) -> str | None:
    """A regex that excludes every child of the base's towers (found from the model's structure); None without
    towers."""
    roots = profile.tower_roots()
    return rf".*\.({'|'.join(map(re.escape, roots))})\..*" if roots else None


@register_pass(
    "exclude-towers",
    ("tower-injection",),
    "set exclude_modules to a regex that really excludes the towers' children (replaces a list that does not)",
)
def _exclude_towers(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    regex = tower_exclude_regex(plan.profile)
    if regex is None:  # tower-injection comes from the profile's towers: none, nothing to exclude
        return
    old = plan.config.get("exclude_modules")
    new: str = regex
    if isinstance(old, str) and old and old != regex:
        new = f"(?:{old})|(?:{regex})"
    elif isinstance(old, list) and old:
        towers = set(plan.profile.tower_roots())
        keep = [re.escape(x) for x in old if x not in towers]
        if keep:
            new = rf"(?:(?:.*\.)?(?:{'|'.join(keep)}))|(?:{regex})"
    if isinstance(old, list):
        why = "a list matches only those exact modules; this regex excludes every tower child"
    elif old:
        why = "the old pattern let tower modules through; this regex excludes every tower child"
    else:
        why = "no exclude_modules: target_modules also matched the towers"
    plan.set_config("exclude_modules", new, "exclude-towers", why)


@register_pass(
    "add-targets",
    ("untargeted-keys",),
    "extend target_modules to the base modules the file has tensors for",
)
def _add_targets(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    params = sorted(set(st.untargeted_params.values()))
    if params:
        # LoRAs on bare parameters (fused MoE experts) are peft's target_parameters, not target_modules
        old_params = plan.config.get("target_parameters")
        new_params = sorted(set(old_params if isinstance(old_params, list) else []) | set(params))
        why = f"{len(params)} parameters had LoRA tensors but no target"
        plan.set_config("target_parameters", new_params, "add-targets", why)
    mods = sorted(
        {
            f.target
            for f in st.fates.values()
            if f.status == K.UNTARGETED and f.target and f.target not in st.untargeted_params
        }
    )
    if not mods:
        return
    old = plan.config.get("target_modules")
    if isinstance(old, str):
        new: Any = f"(?:{old})|(?:{'|'.join(re.escape(m) for m in mods)})"
    else:
        new = sorted(set(old or []) | set(mods))
    plan.set_config("target_modules", new, "add-targets", f"{len(mods)} modules had tensors but no target")


@register_pass(
    "narrow-targets",
    ("missing-keys",),
    "restrict target_modules to exactly the modules the file has tensors for",
)
def _narrow_targets(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    # modules only: the LoRAs of target_parameters (ParamWrapper paths) stay targeted by their own field
    wrappers = {t.wrapper for t in st.plan.params.targets}
    mods = sorted(
        {f.target for f in st.fates.values() if f.status == K.LOADS and f.target and f.target not in wrappers}
    )
    if mods:
        plan.set_config("target_modules", mods, "narrow-targets", "the config injected modules without tensors")


@register_pass("rank-pattern", ("rank-mismatch",), "write rank_pattern where the tensor ranks differ from r")
def _rank_pattern(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    ranks: dict[str, int] = {}
    for key, fate in st.fates.items():
        if fate.status in (K.RANK, K.LOADS) and fate.target:
            shape = plan.source.tensors[_source_of(plan, key)].shape
            p = parse_key(key)
            if p.kind in ("lora_A", "lora_embedding_A"):
                ranks[fate.target] = int(shape[0])
            elif p.kind in ("lora_B", "lora_embedding_B") and fate.target not in ranks:
                ranks[fate.target] = int(shape[-1])
    if not ranks:
        return
    r = plan.config.get("r")
    values = set(ranks.values())
    if len(values) == 1:
        plan.set_config("r", values.pop(), "rank-pattern", "every tensor has this rank")
        if plan.config.get("rank_pattern"):
            plan.set_config("rank_pattern", {}, "rank-pattern", "superseded by r")
        return
    common = max(values, key=lambda v: sum(1 for x in ranks.values() if x == v))
    if common != r:
        plan.set_config("r", common, "rank-pattern", "the most common tensor rank")
    pattern = {f"^{re.escape(m)}$": v for m, v in sorted(ranks.items()) if v != common}
    plan.set_config("rank_pattern", pattern, "rank-pattern", f"{len(pattern)} modules with another rank")


def _source_of(plan: RepairPlan, target_key: str) -> str:
    a = plan._by_target(target_key)
    return a.source if a else target_key


@register_pass(
    "full-precision-base",
    ("quantized-base",),
    "point base_model_name_or_path at the full-precision original of a 4-bit repack (manifests/repacks.toml)",
    default=False,
)
def _full_precision(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    from loradoc.model.repacks import full_precision_original

    base = plan.config.get("base_model_name_or_path")
    if isinstance(base, str):
        orig = full_precision_original(base)
        if orig:
            plan.set_config("base_model_name_or_path", orig, "full-precision-base", f"{base} is a 4-bit repack")


@register_pass(
    "pickle-to-safetensors",
    ("pickle-weights",),
    "write the weights as safetensors (the pickle is read with torch weights_only=True)",
    default=False,
)
def _pickle(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    # The writer always writes safetensors; naming this pass is the consent to read the pickle.
    plan._count("pickle-to-safetensors", "config")


@register_pass(
    "drop-unsupported-fields",
    ("unsupported-fields",),
    "drop config fields the target peft version does not accept",
    default=False,
)
def _drop_fields(plan: RepairPlan, st: K.StaticResult, opts: dict[str, Any]) -> None:
    from loradoc.model.profiles import installed_version

    target = opts.get("peft_version") or installed_version("peft") or "0.21.2"
    cfg = parse_adapter_config(plan.config)
    for name in fields_unsupported_by(cfg, target):
        if name == "peft_type":
            continue
        plan.drop_config(name, "drop-unsupported-fields", f"peft {target} does not accept it")


# ----------------------------------------------------------------------------------------------------------


def passes_for(findings: list[Finding], *, errors_only: bool = True) -> list[str]:
    """The passes answering ``findings`` (default passes for errors), in registry order."""
    wanted: set[str] = set()
    for f in findings:
        if errors_only and f.severity != ERROR:
            continue
        for p in PASSES.values():
            if f.code in p.answers and p.default:
                wanted.add(p.name)
    return [n for n in PASSES if n in wanted]


Judge = Callable[[AdapterSnapshot], K.PeftCounts]


def _badness(c: K.PeftCounts) -> tuple[int, int]:
    return (1 if c.error is not None else 0, (c.missing or 0) + (c.unexpected or 0))


def _undo_collisions(plan: RepairPlan, pass_name: str) -> None:
    """Two source keys planned onto one target is a bug in the plan, not bad input: report it and leave those keys
    as they were (a key that was never renamed keeps its own name)."""
    by_target: dict[str, list[TensorAction]] = {}
    for a in plan.kept():
        by_target.setdefault(str(a.target), []).append(a)
    clashes = {t: acts for t, acts in by_target.items() if len(acts) > 1}
    if not clashes:
        return
    undone: list[str] = []
    for acts in clashes.values():
        for a in acts:
            if a.renamed:
                a.target, a.pass_name, a.reason = a.source, None, ""
                undone.append(a.source)
    plan.problems.append(
        Finding(
            "plan-collision",
            ERROR,
            len(undone),
            f"bug in the {pass_name} plan: {len(clashes)} modules were the target of several keys "
            f"(e.g. {next(iter(clashes))}); those {len(undone)} keys are left as they were",
            None,
            None,
            undone,
        )
    )


def _state(plan: RepairPlan) -> Any:
    return copy.deepcopy((plan.actions, plan.config, plan.changes, plan.counts, plan.passes))


def dry_load_judge(base: Any, spec: Any = None) -> Judge:
    """Judge a planned output by peft's real dry load (meta device) on ``base``."""
    from loradoc.diagnose.dryload import dry_load

    def judge(snap: AdapterSnapshot) -> K.PeftCounts:
        return dry_load(snap, base, spec).counts

    return judge


def build_plan(
    snapshot: AdapterSnapshot,
    profile: BaseProfile,
    *,
    only: list[str] | None = None,
    also: list[str] | None = None,
    peft_version: str | None = None,
    max_rounds: int = 4,
    judge: Judge | None = None,
) -> RepairPlan:
    """Choose passes and plan every tensor's fate. ``only``: exactly these passes; ``also``: defaults + these.

    ``judge``: the real load of each pass's output (``dry_load_judge``); a pass that makes it worse (peft raises
    where it did not, or more keys are missing / unexpected) is undone and reported."""
    for name in [*(only or []), *(also or [])]:
        if name not in PASSES:
            raise BadInputError(f"unknown repair pass {name!r}", hint="choose from: " + ", ".join(PASSES))
    if only and "drop-tower-loras" in only and "keep-tower-loras" in only:
        raise BadInputError("drop-tower-loras and keep-tower-loras exclude each other", hint="name one of them")
    plan = RepairPlan(
        source=snapshot,
        profile=profile,
        actions={k: TensorAction(k, k) for k in snapshot.tensors},
        config=copy.deepcopy(snapshot.config.raw),
    )
    st = analyze(snapshot, profile)
    plan.before = list(st.findings)
    explicit = set(only or []) | set(also or [])
    current = judge(snapshot) if judge else None
    # (badness, state) after each judged step: a plan ends at its best judged state (a later pass that leaves the
    # real load worse than an earlier state is undone, and reported)
    best: tuple[tuple[int, int], Any] | None = None
    if current is not None:
        plan.judged["(input)"] = current.to_json(max_keys=5)
        best = (_badness(current), _state(plan))
    for _ in range(max_rounds):
        if only is not None:
            names = [n for n in PASSES if n in only and n not in plan.passes]
        else:
            names = [n for n in passes_for(st.findings) if n not in plan.passes]
            names += [n for n in PASSES if n in (also or []) and n not in plan.passes and n not in names]
            if "keep-tower-loras" in names and "drop-tower-loras" in names:
                names.remove("drop-tower-loras")
        if not names:
            break
        for name in names:
            opts = {"explicit": name in explicit, "peft_version": peft_version}
            PASSES[name].run(plan, st, opts)
            _undo_collisions(plan, name)
            plan.passes.append(name)
            out = plan.virtual_snapshot()
            if judge is not None and best is not None:
                after = judge(out)
                plan.judged[name] = after.to_json(max_keys=5)
                if _badness(after) <= best[0]:
                    best = (_badness(after), _state(plan))
            st = analyze(out, profile)
        if only is not None:
            break
    if judge is not None and best is not None and plan.passes and best[1][4] != plan.passes:
        undone = plan.passes[len(best[1][4]) :]
        plan.actions, plan.config, plan.changes, plan.counts, plan.passes = copy.deepcopy(best[1])
        plan.problems.append(
            Finding(
                "repair-unverified",
                ERROR,
                len(undone),
                f"passes {', '.join(undone)} left peft's dry load worse than before them; they were undone",
            )
        )
        st = analyze(plan.virtual_snapshot(), profile)
    plan.after = list(st.findings)
    plan.predicted = st.predicted
    return plan


def describe_passes() -> list[dict[str, Any]]:
    return [
        {"name": p.name, "answers": list(p.answers), "default": p.default, "description": p.description}
        for p in PASSES.values()
    ]
