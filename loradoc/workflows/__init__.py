"""The workflow layer: every step both shells (the CLI and the TUI) run, usable from Python as well.

Each step is ``run -> record -> result``: it calls the core, records what it did in the registry when asked
(the one place both shells write registry rows), and returns a plain dataclass. Long steps take one progress
callback, ``progress(done, total, what)`` (:mod:`loradoc.progress`); raising :class:`loradoc.errors.Cancelled`
from it stops the step before anything is written or recorded. Nothing here prints.

    from loradoc import workflows as wf
    wf.diagnose("org/name@v1", "google/gemma-4-E2B-it", record=True)     # Diagnosed(diagnosis, recorded)
    planned = wf.plan_repair(adapter, base, out="fixed")                 # RepairPlanned(plan, snapshot, source)
    wf.apply_repair(planned, "fixed", record=True)                       # Repaired(result, plan, recorded)
    wf.check_load("fixed", base_dir, record=True)                        # LoadChecked(certificate, recorded)
    wf.convert("gguf", "fixed", base_dir, "m.gguf", dtype="q8_0", record=True)   # Converted(...)
    wf.publish(wf.plan_publish("fixed", "org/name"), record=True)        # Published(result, recorded)

A registry is passed as a ``Registry``, the path of its index, or None (the default index).
"""

from __future__ import annotations

from loradoc.workflows.base import BaseChoice, choose_base
from loradoc.workflows.conversions import KINDS, Converted, base_model_type, convert, convert_mlx_lm, is_mlx_adapter
from loradoc.workflows.diagnosis import Diagnosed, ExampleBuilt, ExamplePair, diagnose, example
from loradoc.workflows.hubsteps import Published, Pulled, plan_publish, publish, pull, scan_hub
from loradoc.workflows.loadcheck import LoadChecked, check_load
from loradoc.workflows.recording import (
    RegistryRef,
    adapter_id,
    artifact_format,
    artifact_sha256,
    record_convert,
    record_publish,
    record_pull,
    record_scan,
    registry_of,
)
from loradoc.workflows.repairs import Repaired, RepairPlanned, apply_repair, plan_repair
from loradoc.workflows.runtimechecks import runtimes
from loradoc.workflows.source import local_adapter, open_adapter

__all__ = [
    "KINDS",
    "BaseChoice",
    "Converted",
    "Diagnosed",
    "ExampleBuilt",
    "ExamplePair",
    "LoadChecked",
    "Published",
    "Pulled",
    "RegistryRef",
    "RepairPlanned",
    "Repaired",
    "adapter_id",
    "apply_repair",
    "artifact_format",
    "artifact_sha256",
    "base_model_type",
    "check_load",
    "choose_base",
    "convert",
    "convert_mlx_lm",
    "diagnose",
    "example",
    "is_mlx_adapter",
    "local_adapter",
    "open_adapter",
    "plan_publish",
    "plan_repair",
    "publish",
    "pull",
    "record_convert",
    "record_publish",
    "record_pull",
    "record_scan",
    "registry_of",
    "runtimes",
    "scan_hub",
]
