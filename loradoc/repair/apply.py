"""Write a repair plan: a new adapter directory, streamed tensor by tensor, atomically, with a proof.

- The input is never modified. The output is built in a dot-prefixed temp directory beside ``--out``, fsync'd
  and renamed into place: a crash leaves no directory that looks complete.
- Kept tensors are copied byte for byte (chunks of at most 16 MiB); the sha256 of the source bytes, of the
  bytes written and of the bytes read back from the finished file must all agree, and are recorded.
- ``loradoc-repair.json`` records the source file hashes, the passes, every dropped key with its reason,
  every renamed key, the config changes and the sha256 of every kept tensor.
- Doctor is re-run on the output before it is moved into place; repair succeeds only if it is healthy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import BadInputError, LoradocError
from ..profiles import BaseSource, installed_version
from ..safetensors_io import (
    SafetensorsWriter,
    TensorSpec,
    atomic_directory,
    iter_tensor_bytes,
    read_header,
    sha256_file,
)
from ..snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME
from .passes import RepairPlan

REPORT_NAME = "loradoc-repair.json"
CERTIFICATE_NAME = "loradoc-certificate.json"
_NOT_COPIED = {SAFETENSORS_NAME, PICKLE_NAME, CONFIG_NAME, REPORT_NAME, CERTIFICATE_NAME}


@dataclass
class RepairResult:
    out: Path
    plan: RepairPlan
    report: dict[str, Any]
    verdict: str | None

    @property
    def ok(self) -> bool:
        return self.verdict in (None, "healthy")


def _source_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _check_out(plan: RepairPlan, out: Path, overwrite: bool) -> None:
    src = plan.source.directory.resolve()
    o = out.resolve()
    if o == src or src in o.parents or o in src.parents:
        raise BadInputError(
            f"--out {out} overlaps the input adapter {plan.source.directory}",
            hint="write the repaired adapter to a new directory; the input is never modified",
        )
    if out.exists() and not overwrite:
        raise BadInputError(f"{out} already exists", hint="choose a new --out directory or pass --overwrite")


def _delay() -> float:
    # Fault-injection hook for the crash test: seconds to sleep after each tensor.
    try:
        return float(os.environ.get("LORADOC_FAULT_SLOW_WRITE", "0"))
    except ValueError:
        return 0.0


def _stream_tensors(plan: RepairPlan, target: Path) -> list[dict[str, Any]]:
    snap = plan.source
    kept = plan.kept()
    delay = _delay()
    if snap.weights_format == "safetensors":
        header = snap.header or read_header(snap.weights_path)
        by_source = {a.source: a for a in kept}
        order = [t.name for t in header.ordered_by_offset() if t.name in by_source]
        specs = [
            TensorSpec(str(by_source[n].target), header.tensors[n].dtype, header.tensors[n].shape) for n in order
        ]
        metadata = dict(header.metadata) or {"format": "pt"}
        rows: list[dict[str, Any]] = []
        with SafetensorsWriter(target, specs, metadata=metadata, overwrite=False) as w:
            for info, chunks in iter_tensor_bytes(header, order):
                h = hashlib.sha256()
                name = str(by_source[info.name].target)
                for chunk in chunks:
                    h.update(chunk)
                    w.write(name, chunk)
                rows.append({"key": name, "source_key": info.name, "dtype": info.dtype, "shape": list(info.shape),
                             "source_sha256": h.hexdigest()})
                if delay:
                    time.sleep(delay)
        for row in rows:
            row["written_sha256"] = w.sha256[row["key"]]
        return rows
    # pickle source (only with consent): tensors already loaded with weights_only=True
    import torch

    state = snap._pickle_state or {}
    from ..snapshot import _torch_dtype_name

    specs = []
    for a in kept:
        t = state[a.source]
        specs.append(TensorSpec(str(a.target), _torch_dtype_name(t.dtype), tuple(t.shape)))
    rows = []
    with SafetensorsWriter(target, specs, metadata={"format": "pt"}, overwrite=False) as w:
        for a in kept:
            t = state[a.source].detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            name = str(a.target)
            w.write(name, data)
            rows.append({"key": name, "source_key": a.source, "dtype": _torch_dtype_name(t.dtype),
                         "shape": list(t.shape), "source_sha256": hashlib.sha256(data).hexdigest()})
            if delay:
                time.sleep(delay)
    for row in rows:
        row["written_sha256"] = w.sha256[row["key"]]
    return rows


def _reread_hashes(path: Path) -> dict[str, str]:
    header = read_header(path)
    out: dict[str, str] = {}
    for info, chunks in iter_tensor_bytes(header):
        h = hashlib.sha256()
        for c in chunks:
            h.update(c)
        out[info.name] = h.hexdigest()
    return out


def apply_plan(
    plan: RepairPlan,
    out: Path,
    base: BaseSource,
    *,
    verify: str = "full",
    overwrite: bool = False,
) -> RepairResult:
    out = Path(out)
    _check_out(plan, out, overwrite)
    snap = plan.source
    source_files = _source_hashes(snap.directory)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for item in sorted(snap.directory.iterdir()):
            if item.is_file() and item.name not in _NOT_COPIED and not item.name.startswith("."):
                shutil.copy2(item, tmp / item.name)
        (tmp / CONFIG_NAME).write_text(json.dumps(plan.config, indent=2) + "\n")
        rows = _stream_tensors(plan, tmp / SAFETENSORS_NAME)
        reread = _reread_hashes(tmp / SAFETENSORS_NAME)
        for row in rows:
            row["reread_sha256"] = reread.get(row["key"])
            if not (row["source_sha256"] == row["written_sha256"] == row["reread_sha256"]):
                raise LoradocError(
                    f"tensor {row['source_key']} was not copied bit for bit",
                    hint="check the disk (the output was not kept); re-run the repair",
                )
        verdict = None
        after: dict[str, Any] | None = None
        if verify != "none":
            from .doctor import diagnose

            d = diagnose(str(tmp), base, fast=(verify == "fast"))
            verdict = d.verdict
            after = {"mode": d.mode, "verdict": d.verdict, "peft": d.peft.to_json(max_keys=20),
                     "findings": [f.to_json(max_keys=10) for f in d.findings]}
        report = _report(plan, base, source_files, rows, verdict, after)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return RepairResult(out, plan, report, verdict)


def _report(
    plan: RepairPlan,
    base: BaseSource,
    source_files: dict[str, str],
    rows: list[dict[str, Any]],
    verdict: str | None,
    after: dict[str, Any] | None,
) -> dict[str, Any]:
    snap = plan.source
    return {
        "format": 1,
        "tool": f"loradoc {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": {
            "path": str(snap.directory),
            "repo_id": snap.repo_id,
            "commit": snap.commit,
            "weights_format": snap.weights_format,
            "files": source_files,
        },
        "base": {"name": plan.profile.name, "architecture": plan.profile.architecture,
                 "config_sha256": plan.profile.config_sha256},
        "versions": {d: installed_version(d) for d in ("peft", "transformers", "safetensors")},
        "passes": plan.passes,
        "counts": plan.counts,
        "config_changes": [
            {"field": c.field, "old": c.old, "new": c.new, "pass": c.pass_name, "reason": c.reason}
            for c in plan.changes
        ],
        "dropped": [
            {"key": a.source, "pass": a.pass_name, "reason": a.reason,
             "dtype": snap.tensors[a.source].dtype, "shape": list(snap.tensors[a.source].shape)}
            for a in plan.dropped()
        ],
        "renamed": [{"from": a.source, "to": a.target, "pass": a.pass_name} for a in plan.renamed()],
        "kept": [
            {"key": r["key"], "source_key": r["source_key"], "dtype": r["dtype"], "shape": r["shape"],
             "sha256": r["reread_sha256"]}
            for r in rows
        ],
        "proof": "for every kept tensor: sha256(source bytes) == sha256(bytes written) == sha256(bytes re-read)",
        "findings_before": [f.to_json(max_keys=0) for f in plan.before],
        "verification": after,
        "healthy": verdict == "healthy" if verdict is not None else None,
    }
