"""The static analysis's findings: from the fate of every key to what is wrong, in words (mispathed keys, tower
LoRAs, orphans, trained parts the file lacks, scaling, quantized bases)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from loradoc.diagnose import findings as F
from loradoc.diagnose.findings import Finding
from loradoc.diagnose.keyfates import (
    HEAD_COPY,
    LOADS,
    LOADS_BASE,
    MISPATHED,
    ORPHAN,
    RANK,
    SHAPE,
    TOWER,
    UNTARGETED,
    KeyFate,
)
from loradoc.io.adapter_config import AdapterConfig, fields_unsupported_by
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.layout import PEFT_PREFIX, LoraKey, parse_key
from loradoc.model.peft_rules import InjectionPlan
from loradoc.model.profiles import BaseProfile, installed_version


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


def key_findings(
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
