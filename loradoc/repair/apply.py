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

from loradoc import __version__
from loradoc.errors import LoradocError
from loradoc.io.atomic import atomic_directory, fault_write_delay
from loradoc.io.hashing import HashThread, sha256_file
from loradoc.io.outputs import escapes, guard_outputs
from loradoc.io.safetensors import read_header
from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec
from loradoc.io.snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME
from loradoc.model.profiles import BaseSource, installed_version
from loradoc.progress import Progress
from loradoc.repair.passes import RepairPlan

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


def _source_hashes(directory: Path, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name not in skip and not escapes(p, directory)
    }


def _check_out(plan: RepairPlan, out: Path, base: BaseSource, overwrite: bool) -> None:
    """--out must not be, contain or lie inside an input; an existing --out only with ``overwrite``."""
    guard_outputs([("--out", out)], adapter=plan.source.directory, base=base.directory, overwrite=overwrite)


def _side_files(directory: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The adapter's other files to copy (README.md, tokenizer, ...) and the symlinks skipped because they point
    outside the adapter (their targets are never copied into the output)."""
    copy: list[Path] = []
    skipped: list[dict[str, str]] = []
    for item in sorted(directory.iterdir()):
        if item.name in _NOT_COPIED or item.name.startswith("."):
            continue
        if escapes(item, directory):
            skipped.append(
                {
                    "name": item.name,
                    "target": os.readlink(item),
                    "reason": "symlink pointing outside the adapter directory: not followed",
                }
            )
        elif item.is_file():
            copy.append(item)
    return copy, skipped


_CHUNK = 8 << 20


def _stream_safetensors(
    plan: RepairPlan, target: Path, progress: Progress | None = None
) -> tuple[list[dict[str, Any]], str]:
    """One sequential read of the source file: the whole-file sha256 runs on a thread while the kept tensors'
    bytes go to the writer (which hashes each tensor). Returns the kept rows and the source file's sha256."""
    snap = plan.source
    header = snap.header or read_header(snap.weights_path)
    by_source = {a.source: a for a in plan.kept()}
    kept = [t for t in header.ordered_by_offset() if t.name in by_source]
    specs = [TensorSpec(str(by_source[t.name].target), t.dtype, t.shape) for t in kept]
    delay = fault_write_delay()
    file_hash = HashThread()
    try:
        with (
            open(snap.weights_path, "rb") as fh,
            SafetensorsWriter(target, specs, metadata=dict(header.metadata) or {"format": "pt"}, overwrite=False) as w,
        ):
            i, pos = 0, 0
            while chunk := fh.read(_CHUNK):
                file_hash.update(chunk)
                view = memoryview(chunk)
                end = pos + len(chunk)
                while i < len(kept):
                    t = kept[i]
                    a, b = header.data_start + t.begin, header.data_start + t.end
                    if a >= end:
                        break
                    lo, hi = max(a, pos), min(b, end)
                    if hi > lo:
                        w.write(specs[i].name, view[lo - pos : hi - pos])
                    if b > end:
                        break
                    i += 1
                    if progress is not None:
                        progress(i, len(kept), specs[i - 1].name)
                    if delay:
                        time.sleep(delay)
                pos = end
    finally:
        digest = file_hash.hexdigest()
    rows = [
        {"key": sp.name, "source_key": t.name, "dtype": t.dtype, "shape": list(t.shape), "sha256": w.sha256[sp.name]}
        for t, sp in zip(kept, specs, strict=True)
    ]
    return rows, digest


def _compare_with_source(plan: RepairPlan, written: Path, rows: list[dict[str, Any]]) -> None:
    """Re-read the finished file and compare every kept tensor with its source bytes, chunk by chunk."""
    src_header = plan.source.header or read_header(plan.source.weights_path)
    out_header = read_header(written)
    with open(plan.source.weights_path, "rb") as sfh, open(written, "rb") as ofh:
        for row in rows:
            s, o = src_header.tensors[row["source_key"]], out_header.tensors[row["key"]]
            same = s.nbytes == o.nbytes and s.dtype == o.dtype and tuple(s.shape) == tuple(o.shape)
            done = 0
            while same and done < s.nbytes:
                n = min(_CHUNK, s.nbytes - done)
                a = os.pread(sfh.fileno(), n, src_header.data_start + s.begin + done)
                b = os.pread(ofh.fileno(), n, out_header.data_start + o.begin + done)
                same = a == b and len(a) == n
                done += n
            if not same:
                raise LoradocError(
                    f"tensor {row['source_key']} was not copied bit for bit",
                    hint="check the disk (the output was not kept); re-run the repair",
                )


def _stream_pickle(plan: RepairPlan, target: Path, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Pickle source (only with consent): tensors were loaded with weights_only=True."""
    import torch

    from loradoc.io.snapshot import torch_dtype_name

    state = plan.source._pickle_state or {}
    kept = plan.kept()
    specs = [
        TensorSpec(str(a.target), torch_dtype_name(state[a.source].dtype), tuple(state[a.source].shape)) for a in kept
    ]
    delay = fault_write_delay()
    sources: dict[str, str] = {}
    with SafetensorsWriter(target, specs, metadata={"format": "pt"}, overwrite=False) as w:
        for a, sp in zip(kept, specs, strict=True):
            t = state[a.source].detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            sources[sp.name] = hashlib.sha256(data).hexdigest()
            w.write(sp.name, data)
            if progress is not None:
                progress(len(sources), len(kept), sp.name)
            if delay:
                time.sleep(delay)
    rows = []
    for a, sp in zip(kept, specs, strict=True):
        if sources[sp.name] != w.sha256[sp.name]:
            raise LoradocError(f"tensor {a.source} was not written bit for bit", hint="re-run the repair")
        rows.append(
            {
                "key": sp.name,
                "source_key": a.source,
                "dtype": sp.dtype,
                "shape": list(sp.shape),
                "sha256": w.sha256[sp.name],
            }
        )
    return rows


def apply_plan(
    plan: RepairPlan,
    out: Path,
    base: BaseSource,
    *,
    verify: str = "full",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RepairResult:
    """Write ``plan`` to ``out``. ``progress(done, total, tensor)`` is called after each tensor; an exception
    it raises (e.g. a cancel) aborts the write and leaves nothing at ``out``."""
    out = Path(out)
    _check_out(plan, out, base, overwrite)
    snap = plan.source
    side, skipped_links = _side_files(snap.directory)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for item in side:
            shutil.copy2(item, tmp / item.name)
        (tmp / CONFIG_NAME).write_text(json.dumps(plan.config, indent=2) + "\n")
        if snap.weights_format == "safetensors":
            rows, weights_sha = _stream_safetensors(plan, tmp / SAFETENSORS_NAME, progress)
            _compare_with_source(plan, tmp / SAFETENSORS_NAME, rows)
            source_files = _source_hashes(snap.directory, skip={snap.weights_path.name})
            source_files[snap.weights_path.name] = weights_sha
        else:
            rows = _stream_pickle(plan, tmp / SAFETENSORS_NAME, progress)
            source_files = _source_hashes(snap.directory)
        verdict = None
        after: dict[str, Any] | None = None
        if verify != "none":
            from loradoc.diagnose.doctor import diagnose

            d = diagnose(str(tmp), base, fast=(verify == "fast"))
            verdict = d.verdict
            after = {
                "mode": d.mode,
                "verdict": d.verdict,
                "peft": d.peft.to_json(max_keys=20),
                "findings": [f.to_json(max_keys=10) for f in d.findings],
            }
        report = _report(plan, base, source_files, rows, verdict, after)
        if skipped_links:
            report["skipped_links"] = skipped_links
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
        "base": {
            "name": plan.profile.name,
            "architecture": plan.profile.architecture,
            "config_sha256": plan.profile.config_sha256,
        },
        "versions": {d: installed_version(d) for d in ("peft", "transformers", "safetensors")},
        "passes": plan.passes,
        "counts": plan.counts,
        "config_changes": [
            {"field": c.field, "old": c.old, "new": c.new, "pass": c.pass_name, "reason": c.reason}
            for c in plan.changes
        ],
        "dropped": [
            {
                "key": a.source,
                "pass": a.pass_name,
                "reason": a.reason,
                "dtype": snap.tensors[a.source].dtype,
                "shape": list(snap.tensors[a.source].shape),
            }
            for a in plan.dropped()
        ],
        "renamed": [{"from": a.source, "to": a.target, "pass": a.pass_name} for a in plan.renamed()],
        "kept": [
            {
                "key": r["key"],
                "source_key": r["source_key"],
                "dtype": r["dtype"],
                "shape": r["shape"],
                "sha256": r["sha256"],
            }
            for r in rows
        ],
        "proof": "each kept tensor's bytes were streamed from the source into the output (sha256 taken on the way), "
        "then the finished file was re-read and compared byte for byte with the source",
        "findings_before": [f.to_json(max_keys=0) for f in plan.before],
        "plan_problems": [f.to_json(max_keys=10) for f in plan.problems],
        "judged": plan.judged,
        "verification": after,
        "healthy": verdict == "healthy" if verdict is not None else None,
    }
