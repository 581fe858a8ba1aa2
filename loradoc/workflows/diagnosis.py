"""Diagnose an adapter (and record the verdict); build the bundled example and record each adapter with its base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.progress import Progress, report
from loradoc.workflows.recording import RegistryRef, registry_of


@dataclass
class Diagnosed:
    diagnosis: Any  # loradoc.diagnose.doctor.Diagnosis
    recorded: Path | None = None  # the manifest written (with ``record``)

    @property
    def healthy(self) -> bool:
        from loradoc.diagnose.doctor import HEALTHY

        return bool(self.diagnosis.verdict == HEALTHY)


def diagnose(
    adapter: str,
    base: str,
    *,
    fast: bool = False,
    endpoint: str | None = None,
    allow_pickle: bool = False,
    read_data: bool = True,
    record: bool = False,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> Diagnosed:
    """Run doctor on ``adapter`` (a directory, an HF cache snapshot or ``org/name[@rev]`` pulled from
    ``endpoint``) against ``base``; with ``record``, write the result into the adapter's manifest."""
    from loradoc.diagnose.doctor import diagnose as run
    from loradoc.workflows.source import open_adapter

    snap = open_adapter(adapter, endpoint=endpoint, allow_pickle=allow_pickle)
    d = run(adapter, base, fast=fast, allow_pickle=allow_pickle, read_data=read_data, snapshot=snap)
    if not record:
        return Diagnosed(d)
    report(progress, 1, 1, "recording")  # the last point a cancel stops it: nothing recorded yet
    with registry_of(registry) as reg:
        return Diagnosed(d, reg.add_from_diagnosis(d))


@dataclass
class ExamplePair:
    adapter: Path
    base: Path
    diagnosis: Any


@dataclass
class ExampleBuilt:
    example: Any  # loradoc.demo.builder.ExampleSet
    pairs: dict[str, ExamplePair] = field(default_factory=dict)  # adapter name -> (adapter, its tiny base, doctor)
    registry: Path | None = None  # the index they were recorded in


def example(root: Path, *, registry: RegistryRef = None, progress: Progress | None = None) -> ExampleBuilt:
    """Build the tiny bases and seed replicas under ``root``, diagnose every adapter against its tiny base (real
    peft dry load) and record each pair, so that ``--base`` can be left out afterwards."""
    from loradoc.demo.builder import ADAPTER_SPECS
    from loradoc.demo.builder import build_example as build
    from loradoc.diagnose.doctor import diagnose as run

    ex = build(Path(root))
    out = ExampleBuilt(ex)
    names = list(ADAPTER_SPECS)
    with registry_of(registry) as reg:
        out.registry = Path(reg.path)
        for i, name in enumerate(names, 1):
            a_dir, b_dir = ex.adapters[name].resolve(), ex.bases[ADAPTER_SPECS[name].base].resolve()
            d = run(str(a_dir), str(b_dir))
            reg.add_from_diagnosis(d)
            out.pairs[name] = ExamplePair(a_dir, b_dir, d)
            report(progress, i, len(names), name)
    return out
