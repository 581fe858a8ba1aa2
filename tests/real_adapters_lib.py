"""Doctor / repair / check-load against real ``PeftModel.from_pretrained`` loads of adapters published by others.

The adapters and their bases' ``config.json`` are in ``../shared/data/real-adapters`` (beside the checkout; CI has
it). Bases are built from those configs with uninitialised bf16 weights (load behaviour does not depend on the
values); check-load gets a saved base with small random weights. Nothing here is hard-coded: each truth is what
peft does, computed when asked. Used by tests/test_real_adapters.py (a subset) and benchmarks/real_adapters.py
(all of them).
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realload import Truth, head_rows, random_base, real_truth

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-adapters"
# header-level only: the base is too large to instantiate with weights on a CI machine
HEADER_ONLY = {"gpt-oss-20b-qv"}


def provenance() -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in json.loads((REAL / "provenance.json").read_text())["adapters"]}


def base_config(name: str) -> Path:
    return REAL / "base-configs" / f"{provenance()[name]['base']}.json"


def config_dir(name: str, work: Path) -> Path:
    """A base directory with only the config.json (what doctor needs)."""
    d = work / "bases" / provenance()[name]["base"]
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "config.json").is_file():
        shutil.copy(base_config(name), d / "config.json")
    return d


def weights_dir(name: str, work: Path) -> Path:
    """A base directory with config.json (the published one) and small random weights (for check-load / merge)."""
    labels = head_rows(REAL / "adapters" / name) if provenance()[name].get("task_type") == "SEQ_CLS" else None
    d = work / "weighted" / provenance()[name]["base"] / f"{provenance()[name].get('task_type') or 'none'}-{labels}"
    if not (d / "model.safetensors").is_file():
        model = random_base(base_config(name), REAL / "adapters" / name, fill=True)
        model.save_pretrained(d)
        shutil.copy(base_config(name), d / "config.json")
        del model
        gc.collect()
    return d


def truth_of(adapter_dir: Path, name: str, *, meta: bool = False) -> Truth:
    model = random_base(base_config(name), adapter_dir, meta=meta)
    try:
        return real_truth(adapter_dir, model)
    finally:
        del model
        gc.collect()


@dataclass
class Row:
    adapter: str
    arch: str
    task: str
    doctor: str  # verdict, or "bad-input: <Error>"
    doctor_counts: tuple[Any, ...]
    real: str
    real_counts: tuple[Any, ...]
    agree: bool | None  # None: no real load (header-only)
    repaired: bool | None = None  # repairable ones: the repaired output loads cleanly in peft
    check_load: bool | None = None  # healthy ones, when asked
    why: str = ""
    fast: str = ""  # --fast verdict


def _real_verdict(t: Truth) -> str:
    if t.error:
        return "error"
    if t.healthy:
        return "healthy"
    why = []
    if t.missing or t.unexpected:
        why.append("keys")
    if t.unsaved:
        why.append(f"unsaved {len(t.unsaved)}")
    if t.nonfinite:
        why.append("nan")
    if t.all_b_zero:
        why.append("zero-B")
    return "unhealthy(" + ",".join(why) + ")"


def agrees(d: Any, t: Truth) -> tuple[bool, str]:
    """doctor's verdict and counts against the real load: healthy iff peft's load is clean and what loads is what
    was trained; counts equal; the same exception class when peft raises."""
    p = d.peft
    if t.error is not None:
        if p.error is None:
            return False, f"peft raises {t.error}; doctor predicted a load"
        if p.error.split(":")[0] != t.error.split(":")[0]:
            return False, f"exception {p.error.split(':')[0]} != {t.error.split(':')[0]}"
        return d.verdict != "healthy", "" if d.verdict != "healthy" else "healthy although peft raises"
    if p.error is not None:
        return False, f"doctor says peft raises {p.error}; it loads"
    if (p.loaded, p.missing, p.unexpected) != (t.loaded, t.missing, t.unexpected):
        return False, f"counts {(p.loaded, p.missing, p.unexpected)} != {(t.loaded, t.missing, t.unexpected)}"
    if (d.verdict == "healthy") != t.healthy:
        return False, f"doctor {d.verdict}, real {_real_verdict(t)}"
    return True, ""


def evaluate(name: str, work: Path, *, repair: bool = True, check_load: bool = False, fast: bool = True) -> Row:
    from loradoc.diagnose.doctor import diagnose
    from loradoc.errors import LoradocError

    prov = provenance()[name]
    adapter = REAL / "adapters" / name
    cfg = json.loads(base_config(name).read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    task = prov.get("task_type") or "-"
    base = config_dir(name, work)
    try:
        d = diagnose(str(adapter), str(base))
    except LoradocError as e:
        d = None
        doc, doc_counts = f"bad-input: {e.__class__.__name__}", ()
    else:
        doc, doc_counts = d.verdict, (d.peft.loaded, d.peft.missing, d.peft.unexpected)
    fast_v = ""
    if fast and d is not None:
        try:
            fast_v = diagnose(str(adapter), str(base), fast=True).verdict
        except LoradocError as e:
            fast_v = f"bad-input: {e.__class__.__name__}"
    if name in HEADER_ONLY:
        return Row(name, arch, task, doc, doc_counts, "n/a (header only)", (), None, why="base too large", fast=fast_v)
    unreadable = _unreadable(adapter)
    t = truth_of(adapter, name, meta=unreadable)
    real_counts = (t.loaded, t.missing, t.unexpected)
    if d is None:
        ok = t.error is not None or not t.healthy
        return Row(name, arch, task, doc, doc_counts, _real_verdict(t), real_counts, ok, why=t.error or "", fast=fast_v)
    ok, why = agrees(d, t)
    row = Row(name, arch, task, doc, doc_counts, _real_verdict(t), real_counts, ok, why=why, fast=fast_v)
    if repair and d.verdict == "repairable":
        row.repaired, extra = repair_and_load(name, base, work)
        row.why = (row.why + "; " + extra).strip("; ")
    if check_load and d.verdict == "healthy":
        from loradoc.verify.checkload import check_load as run_check_load

        cert = run_check_load(str(adapter), str(weights_dir(name, work)), device="cpu", write=False)
        row.check_load = cert.passed
        if not cert.passed:
            failed = [c for c in cert.data["checks"] if not c["passed"]]
            row.why = (row.why + f"; check-load failed: {failed[:2]}").strip("; ")
    return row


def _unreadable(adapter: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118
                fh.get_tensor(k)
    except Exception:  # noqa: BLE001 - a truncated / malformed file: peft raises before the base matters
        return True
    return False


def repair_and_load(name: str, base: Path, work: Path) -> tuple[bool, str]:
    """Repair (every pass judged by a dry load), then a real peft load of the output."""
    from loradoc.diagnose.doctor import spec_of
    from loradoc.io.snapshot import open_snapshot
    from loradoc.model.profiles import get_profile, resolve_base
    from loradoc.repair.apply import apply_plan
    from loradoc.repair.passes import build_plan, dry_load_judge

    src = resolve_base(str(base))
    snap = open_snapshot(str(REAL / "adapters" / name))
    spec = spec_of(snap)
    plan = build_plan(snap, get_profile(src, spec=spec), judge=dry_load_judge(src, spec))
    out = work / "repaired" / name
    shutil.rmtree(out, ignore_errors=True)
    res = apply_plan(plan, out, src)
    t = truth_of(out, name)
    kept_heads = all(a.target for a in plan.actions.values() if _is_head(a.source))
    note = "" if t.healthy else f"repaired output: {_real_verdict(t)} {t.error or ''}"
    if not kept_heads:
        note += " (a head was dropped)"
    return t.healthy and res.ok and kept_heads, note


def _is_head(key: str) -> bool:
    from loradoc.model.profiles import head_module

    return head_module(key) is not None and "lora_" not in key
