"""Repair: plan (every pass judged by a peft dry load), then write the fixed copy and record the lineage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.progress import Progress
from loradoc.workflows.recording import RegistryRef, registry_of


@dataclass
class RepairPlanned:
    plan: Any  # loradoc.repair.passes.RepairPlan
    snapshot: Any  # the adapter's AdapterSnapshot
    source: Any  # the base's BaseSource

    @property
    def would_be_healthy(self) -> bool:
        return not any(f.severity == "error" for f in self.plan.after)


@dataclass
class Repaired:
    result: Any  # loradoc.repair.apply.RepairResult
    plan: Any
    recorded: Path | None = None


def plan_repair(
    adapter: str,
    base: str,
    *,
    only: Sequence[str] = (),
    also: Sequence[str] = (),
    peft_version: str | None = None,
    verify: str = "full",
    allow_pickle: bool = False,
    endpoint: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> RepairPlanned:
    """The repair plan for ``adapter`` against ``base``; writes nothing. ``out`` (when the plan is to be applied)
    is checked first: it must not touch the inputs, nor exist unless ``overwrite``."""
    from loradoc.diagnose.doctor import spec_of
    from loradoc.model.profiles import get_profile, resolve_base
    from loradoc.repair.passes import build_plan, dry_load_judge
    from loradoc.workflows.source import open_adapter

    consent = allow_pickle or "pickle-to-safetensors" in (*only, *also)
    snap = open_adapter(adapter, endpoint=endpoint, allow_pickle=consent)
    source = resolve_base(base)
    if out:  # before any work: --out must not touch the inputs
        from loradoc.io.outputs import guard_outputs

        guard_outputs([("--out", str(out))], adapter=snap.directory, base=source.directory, overwrite=overwrite)
    spec = spec_of(snap)
    profile = get_profile(source, spec=spec)
    judge = dry_load_judge(source, spec) if verify == "full" else None
    plan = build_plan(
        snap, profile, only=list(only) or None, also=list(also) or None, peft_version=peft_version, judge=judge
    )
    return RepairPlanned(plan, snap, source)


def apply_repair(
    planned: RepairPlanned,
    out: str | Path,
    *,
    verify: str = "full",
    overwrite: bool = False,
    record: bool = False,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> Repaired:
    """Write the repaired copy to ``out`` (streamed, atomic, re-checked by doctor); with ``record``, record the
    lineage (source -> passes -> output) in the registry."""
    from loradoc.repair.apply import apply_plan

    result = apply_plan(planned.plan, Path(out), planned.source, verify=verify, overwrite=overwrite, progress=progress)
    if not record:
        return Repaired(result, planned.plan)
    with registry_of(registry) as reg:
        return Repaired(result, planned.plan, reg.record_repair(result.report, result.out))
