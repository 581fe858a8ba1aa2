"""The TUI's jobs: the workflow layer's steps (:mod:`loradoc.workflows`, the same the CLI runs, recording the same
registry rows), run in thread workers, reporting through typed messages.

Nothing here imports textual at module level beyond the message classes' base; the heavy libraries (torch,
transformers, peft) are imported by the core functions the workflows call, i.e. only inside workers.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

from loradoc.errors import BadInputError, Cancelled


class JobCancelled(Cancelled):
    """The user cancelled a running job (raised from its progress callback: nothing was written or recorded)."""


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
class RunningJob:
    """One job's cooperative cancel: the UI sets ``cancel``; the worker checks it at every progress call (and
    before anything is written or recorded) and stops with :class:`JobCancelled`. ``finished`` is set when the
    worker thread has really returned (a Textual worker reads as cancelled while its thread still runs)."""

    name: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(f"{self.name} cancelled", hint="nothing was written; run it again when ready")


HEAVY = ("torch", "transformers", "peft")


def status_text(job: str, what: str) -> str:
    """The first status line of a job that needs torch + transformers + peft: their import alone takes seconds
    (about 8 s on a 2-core machine) the first time, so say so rather than show nothing."""
    if all(m in sys.modules for m in HEAVY):
        return f"{job}: {what}"
    return f"{job}: loading torch + transformers + peft…"


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
        from loradoc.io.atomic import write_file_atomic

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
    from loradoc import workflows

    built = workflows.example(root, registry=registry, progress=report)
    for pair in built.pairs.values():
        workspace.remember(str(pair.adapter), str(pair.base))
    return [str(built.example.adapters[n]) for n in sorted(built.pairs)]


def run_doctor(adapter: str, base: str, registry: Any, report: Report) -> Any:
    from loradoc import workflows

    return workflows.diagnose(adapter, base, record=True, registry=registry, progress=report).diagnosis


def plan_repair(adapter: str, base: str) -> Any:
    """The repair plan (``workflows.RepairPlanned``: ``.plan`` is what the plan screen shows)."""
    from loradoc import workflows

    return workflows.plan_repair(adapter, base)


def apply_repair(planned: Any, out: Path, registry: Any, report: Report) -> Any:
    from loradoc import workflows

    return workflows.apply_repair(planned, out, record=True, registry=registry, progress=report).result


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


def run_check_load(adapter: str, base: str, device: str, registry: Any, report: Report) -> Any:
    from loradoc import workflows

    done = workflows.check_load(adapter, base, device=device, record=True, registry=registry, progress=report)
    return done.certificate


# conversion kind -> (output name suffix, output dtypes offered, the first one being the default)
CONVERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "merged": ("-merged", ("bf16", "f16", "f32")),
    "gguf": (".gguf", ("bf16", "f16", "f32", "q8_0")),
    "gguf-lora": ("-lora.gguf", ("f32",)),
}


def default_convert_out(kind: str, adapter: str, data_dir: Path) -> Path:
    """Where a conversion goes unless the user says otherwise: ``<data dir>/converted/<adapter><suffix>``, never
    inside or beside the adapter (the adapters folder holds adapters only)."""
    return data_dir / "converted" / (Path(adapter).name + CONVERSIONS[kind][0])


def run_convert(
    kind: str,
    adapter: str,
    base: str,
    out: Path,
    registry: Any,
    report: Report,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Convert and record the artifact. An existing ``out`` is replaced only with ``overwrite``, and atomically (the
    core functions write the new output under a temporary name beside it and rename it into place once complete):
    a failed or cancelled conversion leaves ``out`` as it was."""
    dtype = dtype or CONVERSIONS[kind][1][0]
    if dtype not in CONVERSIONS[kind][1]:
        raise BadInputError(f"{kind} cannot write {dtype}", hint=f"choose one of {', '.join(CONVERSIONS[kind][1])}")
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise BadInputError(f"{out} already exists", hint="choose another output path or confirm the overwrite")
    from loradoc import workflows

    return workflows.convert(
        kind, adapter, base, out, dtype=dtype, overwrite=overwrite, record=True, registry=registry, progress=report
    ).result


def plan_publish(directory: str, repo: str, tag: str | None, endpoint: str | None, registry: Any = None) -> Any:
    from loradoc import workflows

    return workflows.plan_publish(directory, repo, tag=tag, endpoint=endpoint, registry=registry)


def run_publish(plan: Any, endpoint: str | None, registry: Any, report: Report) -> Any:
    from loradoc import workflows

    return workflows.publish(plan, endpoint=endpoint, record=True, registry=registry, progress=report).result
