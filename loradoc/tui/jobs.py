"""The TUI's jobs: plain functions over the core, run in thread workers, reporting through typed messages.

Nothing here imports textual at module level beyond the message classes' base; the heavy libraries (torch,
transformers, peft) are imported by the core functions these jobs call, i.e. only inside workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

from ..errors import LoradocError


class JobCancelled(LoradocError):
    """The user cancelled a running job (nothing was written)."""

    exit_code = 130


# ------------------------------------------------------------------------------------------------- messages
class JobProgress(Message):
    def __init__(self, job: str, done: int, total: int, what: str = "") -> None:
        super().__init__()
        self.job, self.done, self.total, self.what = job, done, total, what


class JobDone(Message):
    def __init__(self, job: str, result: Any) -> None:
        super().__init__()
        self.job, self.result = job, result


# ------------------------------------------------------------------------------------------------- state
@dataclass
class Workspace:
    """Which local base directory goes with which adapter (remembered across runs, next to the registry)."""

    path: Path
    bases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Workspace:
        try:
            data = json.loads(path.read_text())
            return cls(path, dict(data.get("bases", {})))
        except (OSError, ValueError):
            return cls(path)

    def save(self) -> None:
        from ..safetensors_io import write_file_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.path, json.dumps({"bases": self.bases}, indent=2).encode())

    def base_for(self, adapter_path: str) -> str | None:
        return self.bases.get(str(Path(adapter_path).resolve()))

    def remember(self, adapter_path: str, base: str) -> None:
        self.bases[str(Path(adapter_path).resolve())] = base
        self.save()


Report = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------------- jobs
def build_example(root: Path, registry: Any, workspace: Workspace, report: Report) -> list[str]:
    from ..fixtures import build_example as build
    from ..repair.doctor import diagnose

    ex = build(root)
    names = sorted(ex.adapters)
    for i, name in enumerate(names, 1):
        a, b = ex.adapters[name], ex.bases[ex.spec(name).base]
        d = diagnose(str(a), str(b), fast=False)
        registry.add_from_diagnosis(d)
        workspace.remember(str(a), str(b))
        report(i, len(names), name)
    return [str(ex.adapters[n]) for n in names]


def run_doctor(adapter: str, base: str, registry: Any) -> Any:
    from ..repair.doctor import diagnose

    d = diagnose(adapter, base)
    registry.add_from_diagnosis(d)
    return d


def plan_repair(adapter: str, base: str) -> Any:
    from ..profiles import get_profile, resolve_base
    from ..repair.doctor import spec_of
    from ..repair.passes import build_plan
    from ..snapshot import open_snapshot

    snap = open_snapshot(adapter)
    return build_plan(snap, get_profile(resolve_base(base), spec=spec_of(snap)))


def apply_repair(plan: Any, base: str, out: Path, registry: Any, report: Report) -> Any:
    from ..profiles import resolve_base
    from ..repair.apply import apply_plan

    result = apply_plan(plan, out, resolve_base(base), progress=report)
    registry.record_repair(result.report, result.out)
    return result


def list_devices() -> list[tuple[str, str]]:
    """(device id, label) for every CUDA device with its free memory, else the CPU."""
    import torch

    out: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(
                (
                    "cuda",
                    f"cuda:{i} {torch.cuda.get_device_name(i)}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free",
                )
            )
    out.append(("cpu", "CPU"))
    return out


def run_check_load(adapter: str, base: str, device: str, registry: Any) -> Any:
    from ..repair.checkload import check_load

    cert = check_load(adapter, base, device=device)
    registry.record_certificate(cert.data, path=cert.path)
    return cert


def run_convert(kind: str, adapter: str, base: str, out: Path, registry: Any, report: Report) -> Any:
    if kind == "merged":
        from ..convert.merge import merge_adapter

        result = merge_adapter(adapter, base, out, progress=report)
    elif kind == "gguf":
        from ..convert.gguf_model import convert_gguf

        result = convert_gguf(adapter, base, out, progress=lambda name, done, total: report(done, total, name))
    elif kind == "gguf-lora":
        from ..convert.gguf_lora import convert_gguf_lora

        result = convert_gguf_lora(adapter, base, out)
    else:  # pragma: no cover - the dialog only offers the three
        raise LoradocError(f"unknown conversion {kind}", hint="choose merged, gguf or gguf-lora")
    registry.record_artifact(_adapter_id(registry, adapter), kind=kind, path=out, tool="loradoc")
    return result


def plan_publish(directory: str, repo: str, tag: str | None, endpoint: str | None) -> Any:
    from ..hub.publish import plan_publish as plan

    return plan(Path(directory), repo, tag=tag, endpoint=endpoint)


def run_publish(plan: Any, endpoint: str | None, registry: Any) -> Any:
    from ..hub.publish import publish

    result = publish(plan, endpoint=endpoint)
    registry.record_hub_revision(
        _adapter_id(registry, str(plan.directory)),
        commit=result.commit_sha,
        pr=result.pr_num,
        tag=result.tag,
        repo_id=plan.repo_id,
    )
    return result


def _adapter_id(registry: Any, path: str) -> str:
    m = registry.show(path)
    return str(m.id)
