"""``loradoc doctor``: static analysis + a real peft dry load + a verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..adapter_config import PEFT_VERSION_KNOWN
from ..errors import MalformedConfigError
from ..profiles import BaseProfile, BaseSource, get_profile, installed_version, resolve_base
from ..snapshot import AdapterSnapshot, open_snapshot
from . import findings as F
from .analysis import LOADS, LOADS_BASE, PeftCounts, StaticResult, analyze
from .findings import Finding

HEALTHY, REPAIRABLE, BROKEN = "healthy", "repairable", "broken"
# Findings whose error explains why peft raises (so the exception is not reported twice).
_RAISE_EXPLAINERS = {"tower-injection", "shape-mismatch", "rank-mismatch", "regex-too-expensive"}
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
    if not errors and not clean_load:
        return BROKEN
    return BROKEN


def _loads_nonfinite(findings: list[Finding], st: StaticResult) -> bool:
    """Whether peft loads a NaN / Inf tensor into the model. Then the adapted modules' outputs are not finite (a
    NaN in one lora_A makes every logit of a real load NaN), so the adapter has no usable effect: ``effective``
    is False, as the real load measures it. Non-finite tensors that peft drops (unexpected keys) change nothing."""
    keys = [k for f in findings if f.code == "nonfinite-weights" and f.severity == F.ERROR for k in f.keys]
    return any((fate := st.fates.get(k)) is not None and fate.status in (LOADS, LOADS_BASE) for k in keys)


def _explain_error(findings: list[Finding], peft: PeftCounts, static: PeftCounts) -> list[Finding]:
    if peft.error is None:
        return []
    if any(f.code in _RAISE_EXPLAINERS and f.severity == F.ERROR for f in findings):
        return []
    return [F.make("peft-load-error", F.ERROR, 1, f"peft raises while loading: {peft.error}")]


def _disagreement(real: PeftCounts, static: PeftCounts) -> Finding | None:
    same = (real.error is None) == (static.error is None) and (
        real.error is not None
        or (real.loaded, real.missing, real.unexpected) == (static.loaded, static.missing, static.unexpected)
    )
    if same:
        return None
    return F.make(
        "static-disagrees",
        F.INFO,
        1,
        f"static prediction (loaded {static.loaded}, missing {static.missing}, unexpected {static.unexpected}, "
        f"error {static.error}) differs from the real dry load; the dry load is authoritative",
        repair=None,
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
    endpoint: str | None = None,
    allow_pickle: bool = False,
    read_data: bool = True,
    snapshot: AdapterSnapshot | None = None,
) -> Diagnosis:
    snap = snapshot or open_snapshot(adapter, endpoint=endpoint, allow_pickle=allow_pickle)
    _require_loadable_peft_type(snap)
    source = base if isinstance(base, BaseSource) else resolve_base(base)
    profile = get_profile(source, allow_build=not fast)
    st: StaticResult = analyze(snap, profile)
    findings = list(st.findings)
    if profile.note:
        findings.append(F.make("profile-version-gap", F.INFO, 0, profile.note, repair=None))
    if read_data:
        findings.extend(data_findings(snap))
    warnings_: list[str] = []
    if fast or st.plan.regex_problem is not None:
        # a regex peft would hang on is never handed to peft: the static verdict stands
        peft = st.predicted
        mode = "static" if fast else "full"
    else:
        from .dryload import dry_load

        dl = dry_load(snap, source)
        peft = dl.counts
        warnings_ = dl.warnings
        mode = "full"
        dis = _disagreement(peft, st.predicted)
        if dis:
            findings.append(dis)
    untrained = any(f.code == "untrained-lora" and f.severity == F.ERROR for f in findings)
    if untrained or _loads_nonfinite(findings, st):
        peft.effective = False
    findings.extend(_explain_error(findings, peft, st.predicted))
    order = {F.ERROR: 0, F.WARNING: 1, F.INFO: 2}
    findings.sort(key=lambda f: (order[f.severity], f.tower or "", f.code))
    return Diagnosis(
        adapter=snap.label,
        base=profile.name,
        mode=mode,
        verdict=verdict_of(findings, peft),
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
