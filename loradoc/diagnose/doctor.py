"""``loradoc doctor``: static analysis + a real peft dry load + a verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loradoc.diagnose import findings as F
from loradoc.diagnose.analysis import analyze
from loradoc.diagnose.findings import Finding
from loradoc.diagnose.keyfates import LOADS, LOADS_BASE, MISPATHED, PeftCounts, StaticResult
from loradoc.diagnose.static_findings import declares_unsaved_bias
from loradoc.errors import MalformedConfigError
from loradoc.io.adapter_config import PEFT_VERSION_KNOWN
from loradoc.io.snapshot import AdapterSnapshot, open_snapshot
from loradoc.model.layout import PEFT_PREFIX
from loradoc.model.profiles import (
    BaseProfile,
    BaseSource,
    ModelSpec,
    get_profile,
    installed_version,
    resolve_base,
    spec_for_adapter,
)

HEALTHY, REPAIRABLE, BROKEN = "healthy", "repairable", "broken"
# Findings whose error explains why peft raises (so the exception is not reported twice).
_RAISE_EXPLAINERS = {
    "tower-injection",
    "shape-mismatch",
    "rank-mismatch",
    "unsaved-modules",
    "mispathed-keys",
    "regex-too-expensive",
}
# Static findings about where keys load: the real dry load decides whether they hold.
_LOAD_CODES = {
    "mispathed-keys",
    "orphan-keys",
    "untargeted-keys",
    "missing-keys",
    "tower-lora",
    "tower-injection",
    "shape-mismatch",
    "rank-mismatch",
    "unsaved-modules",
}
# Repair passes that throw away tensors the base *can* use: a verdict needing them is not "repairable".
_LOSSY = {"drop-tower-loras-usable"}


@dataclass
class Diagnosis:
    adapter: str
    base: str
    mode: str  # "full" (real peft dry load) | "static" (--fast)
    verdict: str
    findings: list[Finding]
    peft: PeftCounts
    static: PeftCounts
    snapshot: AdapterSnapshot
    profile: BaseProfile
    data_checked: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def repair_passes(self) -> list[str]:
        return sorted({f.repair for f in self.findings if f.severity == F.ERROR and f.repair})

    def to_json(self) -> dict[str, Any]:
        cfg = self.snapshot.config
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "peft": self.peft.to_json(),
            "mode": self.mode,
            "prediction": self.mode == "static",
            "adapter": {
                "path": str(self.snapshot.directory),
                "source": self.snapshot.source,
                "repo_id": self.snapshot.repo_id,
                "commit": self.snapshot.commit,
                "tensors": len(self.snapshot.tensors),
                "weights_format": self.snapshot.weights_format,
                "peft_type": cfg.peft_type,
                "base_model": cfg.base_model,
                "r": cfg.r,
                "lora_alpha": cfg.lora_alpha,
                "target_modules": cfg.target_modules,
                "exclude_modules": cfg.exclude_modules,
                "min_peft_version": cfg.min_peft_version,
            },
            "base": {
                "name": self.profile.name,
                "architecture": self.profile.architecture,
                "task": self.profile.task,
                "num_labels": self.profile.num_labels,
                "model_type": self.profile.model_type,
                "layers": self.profile.num_layers,
                "kv_shared_layers": self.profile.kv_shared_layers,
                "towers": sorted(set(self.profile.towers.values())),
            },
            "static": self.static.to_json(),
            "data_checked": self.data_checked,
            "repair_passes": self.repair_passes,
            "versions": {d: installed_version(d) for d in ("peft", "transformers", "torch")},
            "warnings": self.warnings,
        }


def data_findings(snapshot: AdapterSnapshot) -> list[Finding]:
    """untrained-lora and nonfinite-weights: the only checks that read tensor data (one tensor at a time)."""
    import numpy as np

    nonfinite: list[str] = []
    b_total = 0
    b_zero: list[str] = []
    for name, chunks in snapshot.iter_array_chunks():
        finite, nonzero = True, False
        for arr in chunks:  # bounded reads: a header may declare a 24 GiB tensor
            if finite and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                finite = False
            if not nonzero and np.any(arr):
                nonzero = True
            if nonzero and not finite:
                break  # nothing more to learn from this tensor
        if not finite:
            nonfinite.append(name)
        if ".lora_B" in name or ".lora_embedding_B" in name:
            b_total += 1
            if not nonzero:
                b_zero.append(name)
    out: list[Finding] = []
    if nonfinite:
        out.append(
            F.make(
                "nonfinite-weights",
                F.ERROR,
                len(nonfinite),
                f"{len(nonfinite)} tensors contain NaN or Inf",
                keys=nonfinite,
            )
        )
    if b_total and len(b_zero) == b_total:
        out.append(
            F.make(
                "untrained-lora",
                F.ERROR,
                b_total,
                f"all {b_total} lora_B tensors are zero: the adapter is a no-op (never trained, or "
                "saved before training)",
                keys=b_zero,
            )
        )
    elif b_zero:
        out.append(
            Finding(
                "untrained-lora",
                F.INFO,
                len(b_zero),
                f"{len(b_zero)} of {b_total} lora_B tensors are zero (those modules do nothing)",
                None,
                None,
                b_zero,
            )
        )
    return out


def verdict_of(findings: list[Finding], peft: PeftCounts) -> str:
    errors = [f for f in findings if f.severity == F.ERROR]
    clean_load = peft.error is None and peft.missing == 0 and peft.unexpected == 0
    if not errors and clean_load:
        return HEALTHY
    if errors and all(f.repair and f.repair not in _LOSSY for f in errors):
        return REPAIRABLE
    return BROKEN


def _loads_nonfinite(findings: list[Finding], st: StaticResult) -> bool:
    """Whether peft loads a NaN / Inf tensor into the model. Then the adapted modules' outputs are not finite (a
    NaN in one lora_A makes every logit of a real load NaN), so the adapter has no usable effect: ``effective``
    is False, as the real load measures it. Non-finite tensors that peft drops (unexpected keys) change nothing."""
    keys = [k for f in findings if f.code == "nonfinite-weights" and f.severity == F.ERROR for k in f.keys]
    return any((fate := st.fates.get(k)) is not None and fate.status in (LOADS, LOADS_BASE) for k in keys)


def explain_error(findings: list[Finding], peft: PeftCounts, static: PeftCounts) -> list[Finding]:
    if peft.error is None:
        return []
    same_kind = static.error is not None and static.error.split(":")[0] == peft.error.split(":")[0]
    if same_kind and any(f.code in _RAISE_EXPLAINERS and f.severity == F.ERROR for f in findings):
        return []
    return [F.make("peft-load-error", F.ERROR, 1, f"peft raises while loading: {peft.error}")]


def _disagreement(real: PeftCounts, static: PeftCounts, demoted: list[str] | None = None) -> Finding | None:
    same = (real.error is None) == (static.error is None) and (
        real.error is not None
        or (real.loaded, real.missing, real.unexpected) == (static.loaded, static.missing, static.unexpected)
    )
    if same and not demoted:
        return None
    msg = (
        f"static prediction (loaded {static.loaded}, missing {static.missing}, unexpected {static.unexpected}, "
        f"error {static.error}) differs from the real dry load (loaded {real.loaded}, missing {real.missing}, "
        f"unexpected {real.unexpected}, error {real.error}); the dry load decides"
    )
    if demoted:
        msg += f"; static errors not borne out by peft: {', '.join(demoted)}"
    return F.make("static-disagrees", F.INFO, 1, msg, repair=None)


def reconcile(findings: list[Finding], real: PeftCounts, static: PeftCounts) -> list[Finding]:
    """The real dry load decides; static findings explain it and never flip healthy <-> unhealthy on their own.

    - peft loads every tensor and nothing is missing: static load errors are demoted to info (named in a
      ``static-disagrees`` finding);
    - peft leaves keys missing / unexpected (or raises) and no static error explains it: a ``load-mismatch``
      error (no repair pass: the static side cannot plan one)."""
    clean = real.error is None and real.missing == 0 and real.unexpected == 0
    out: list[Finding] = []
    demoted: list[str] = []
    for f in findings:
        if clean and f.severity == F.ERROR and f.code in _LOAD_CODES:
            demoted.append(f.code)
            out.append(
                Finding(f.code, F.INFO, f.count, f"(static only; peft loads it) {f.message}", None, f.tower, f.keys)
            )
        else:
            out.append(f)
    load_errors = [f for f in out if f.severity == F.ERROR and f.code in _LOAD_CODES]
    if not clean and real.error is None and not load_errors:
        out.append(
            F.make(
                "load-mismatch",
                F.ERROR,
                (real.missing or 0) + (real.unexpected or 0),
                f"peft's dry load leaves {real.missing} keys missing and {real.unexpected} unexpected, which the "
                "static analysis does not explain (no repair can be planned)",
                keys=(real.missing_keys + real.unexpected_keys),
                repair=None,
            )
        )
    dis = _disagreement(real, static, demoted)
    if dis:
        out.append(dis)
    return out


def _no_bias_to_save(snap: AdapterSnapshot) -> Finding:
    """bias="lora_only"/"all", no bias in the file, and peft's dry load would have saved none: the base's layers
    have no bias, nothing trained is lost. ``--fast`` cannot know it (it reports ``unsaved-bias`` as an error)."""
    bias = (snap.config.bias or "none").lower()
    return F.make(
        "unsaved-bias",
        F.INFO,
        0,
        f'bias="{bias}" and the file has no bias, but peft would have saved none: the targeted layers have no '
        "bias, nothing trained is lost (--fast predicts an error here when the base profile does not record biases)",
        repair=None,
    )


def spec_of(snapshot: AdapterSnapshot) -> ModelSpec:
    """The model class the adapter's task type implies (and a classification head's label count)."""
    return spec_for_adapter(snapshot.config.task_type, {k: tuple(r.shape) for k, r in snapshot.tensors.items()})


def _verify_repair(snap: AdapterSnapshot, profile: BaseProfile, source: BaseSource, spec: ModelSpec) -> Finding | None:
    """A 'repairable' verdict holds only if the repair plan's output gives a clean real dry load."""
    from loradoc.diagnose.dryload import dry_load
    from loradoc.repair.passes import build_plan, dry_load_judge

    try:
        plan = build_plan(snap, profile, judge=dry_load_judge(source, spec))
        dl = dry_load(plan.virtual_snapshot(), source, spec)
    except Exception as e:  # noqa: BLE001 - a plan that cannot be built is not a repair
        return F.make("repair-unverified", F.ERROR, 1, f"the repair plan fails: {e.__class__.__name__}: {e}")
    c = dl.counts
    if c.error is None and c.missing == 0 and c.unexpected == 0 and not dl.unsaved_bias:
        return None
    return F.make(
        "repair-unverified",
        F.ERROR,
        1,
        f"the repair plan ({', '.join(plan.passes) or 'no passes'}) does not give a clean peft dry load "
        f"(missing {c.missing}, unexpected {c.unexpected}, error {c.error})",
    )


def _require_loadable_peft_type(snap: AdapterSnapshot) -> None:
    """No peft_type, or a type no peft release knows: peft cannot even pick a config class (KeyError), so there
    is nothing to diagnose (bad input, exit 2). A known type misspelt ("lora") gets a verdict: peft-load-error."""
    cfg = snap.config
    if "peft_type" not in cfg.raw:
        raise MalformedConfigError(
            f"{cfg.source}: has no peft_type, so peft cannot load it (KeyError: 'peft_type')",
            hint=f'add "peft_type": "{cfg.peft_type}" to {cfg.source}',
        )
    if not cfg.known_peft_type:
        raise MalformedConfigError(
            f"{cfg.source}: peft_type {cfg.raw.get('peft_type')!r} is unknown to peft {PEFT_VERSION_KNOWN} "
            "(a typo, a fork or an unmerged branch): peft cannot load it",
            hint=f'set peft_type in {cfg.source} to the method the adapter was trained with (e.g. "LORA")',
        )


def diagnose(
    adapter: str,
    base: str | BaseSource,
    *,
    fast: bool = False,
    allow_pickle: bool = False,
    read_data: bool = True,
    snapshot: AdapterSnapshot | None = None,
) -> Diagnosis:
    snap = snapshot or open_snapshot(adapter, allow_pickle=allow_pickle)
    _require_loadable_peft_type(snap)
    source = base if isinstance(base, BaseSource) else resolve_base(base)
    spec = spec_of(snap)
    profile = get_profile(source, allow_build=not fast, spec=spec)
    st: StaticResult = analyze(snap, profile)
    findings = list(st.findings)
    if profile.note:
        findings.append(F.make("profile-version-gap", F.INFO, 0, profile.note, repair=None))
    warnings_: list[str] = []
    if fast or st.plan.regex_problem is not None:
        # a regex peft would hang on is never handed to peft: the static verdict stands
        peft = st.predicted
        mode = "static" if fast else "full"
    else:
        from loradoc.diagnose.dryload import dry_load

        dl = dry_load(snap, source, spec)
        peft = dl.counts
        warnings_ = dl.warnings
        mode = "full"
        # what loads is what was trained: the dry load knows which biases peft would save for this config
        findings = [f for f in findings if f.code != "unsaved-bias"]
        # biases saved under another path are in the file: mispathed-keys places them (reroot-keys)
        placed = {f"{PEFT_PREFIX}{f.target}.{f.param}" for f in st.fates.values() if f.status == MISPATHED}
        unsaved_bias = [k for k in dl.unsaved_bias if k not in placed]
        if unsaved_bias:
            from loradoc.diagnose.static_findings import trained_parts_findings

            findings += trained_parts_findings(snap, profile, st.plan, st.fates, [], unsaved_bias=unsaved_bias)
        elif not dl.unsaved_bias and declares_unsaved_bias(snap, st.fates):
            findings.append(_no_bias_to_save(snap))
        findings = reconcile(findings, peft, st.predicted)
    if read_data:
        findings.extend(data_findings(snap))
    untrained = any(f.code == "untrained-lora" and f.severity == F.ERROR for f in findings)
    if untrained or _loads_nonfinite(findings, st):
        peft.effective = False
    findings.extend(explain_error(findings, peft, st.predicted))
    verdict = verdict_of(findings, peft)
    if verdict == REPAIRABLE and not fast and st.plan.regex_problem is None:
        bad = _verify_repair(snap, profile, source, spec)
        if bad is not None:
            findings.append(bad)
            verdict = BROKEN
    order = {F.ERROR: 0, F.WARNING: 1, F.INFO: 2}
    findings.sort(key=lambda f: (order[f.severity], f.tower or "", f.code))
    return Diagnosis(
        adapter=snap.label,
        base=profile.name,
        mode=mode,
        verdict=verdict,
        findings=findings,
        peft=peft,
        static=st.predicted,
        snapshot=snap,
        profile=profile,
        data_checked=read_data,
        warnings=warnings_,
    )


def fmt_count(n: int | None) -> str:
    return "-" if n is None or (isinstance(n, float) and math.isnan(n)) else str(n)
