"""Recording: the one place both shells write a step's result into the registry.

A registry is given as a :class:`loradoc.registry.Registry` (the TUI keeps one per worker thread), as the path of
its index, or as None (the default index); :func:`registry_of` opens the latter two only when something is recorded
and closes them after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loradoc.errors import LoradocError

#: a Registry, the path of its SQLite index, or None (``$LORADOC_REGISTRY`` or the user data directory)
RegistryRef = Any


def _is_registry(ref: RegistryRef) -> bool:
    return ref is not None and not isinstance(ref, str | Path) and hasattr(ref, "show")


def registry_path(ref: RegistryRef) -> Any:
    """The index path of ``ref`` without opening it (None: the default one)."""
    return ref.path if _is_registry(ref) else ref


@contextmanager
def registry_of(ref: RegistryRef) -> Iterator[Any]:
    """``ref`` as an open Registry: itself when it is one, else opened here and closed on leaving."""
    if _is_registry(ref):
        yield ref
        return
    from loradoc.registry import Registry

    reg = Registry(Path(ref) if ref else None)
    try:
        yield reg
    finally:
        reg.close()


def adapter_id(registry: Any, adapter: str) -> str | None:
    """The registry id of a local adapter path (or a repo id), or None when the registry does not know it."""
    for ref in (str(Path(adapter).expanduser().resolve()), adapter):
        try:
            return str(registry.show(ref).id)
        except LoradocError:
            continue
    return None


def artifact_format(kind: str, dtype: str | None) -> str:
    """How an output is described in the registry: ``safetensors-bf16``, ``gguf-q8_0``, ``gguf-lora``."""
    if kind == "merged":
        return f"safetensors-{dtype or 'bf16'}"
    if kind == "gguf":
        return f"gguf-{dtype or 'bf16'}"
    return "gguf-lora"


def artifact_sha256(out: str | Path) -> str | None:
    """What an output is committed to: a file's sha256; for a merged directory, the sha256 of the sorted
    ``name sha256`` lines of every file ``loradoc-merge.json`` lists as an output (the content, not the run's
    timings and paths, so the same merge made twice is the same artifact)."""
    import hashlib
    import json

    from loradoc.io.hashing import sha256_file

    p = Path(out)
    if p.is_file():
        return sha256_file(p)
    manifest = p / "loradoc-merge.json"
    if not manifest.is_file():
        return None
    outputs = json.loads(manifest.read_text()).get("outputs") or {}
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(outputs.items()) if name != "loradoc-merge.json")
    return hashlib.sha256(lines.encode()).hexdigest()


def record_convert(registry: Any, adapter: str, kind: str, out: str | Path, dtype: str | None) -> Path | None:
    """Record a conversion's output as an artifact of the adapter's current revision (None: adapter unknown)."""
    ident = adapter_id(registry, adapter)
    if ident is None:
        return None
    return registry.record_artifact(
        ident,
        kind=kind,
        path=out,
        format=artifact_format(kind, dtype),
        tool="loradoc",
        sha256=artifact_sha256(out),
    )


def record_publish(registry: Any, directory: str | Path, result: Any) -> Path | None:
    """Record the commit a publish created on the published directory's revision (None: directory unknown)."""
    ident = adapter_id(registry, str(directory))
    if ident is None:
        return None
    return registry.record_hub_revision(
        ident,
        commit=result.commit_sha,
        pr=result.pr_num,
        tag=result.tag,
        repo_id=result.repo_id,
        revision=str(Path(directory).expanduser().resolve()),
    )


def record_pull(registry: Any, got: Any, base: str | None) -> Path | None:
    """Record a pulled commit: with a static diagnosis when the base (``base``, else the one the adapter's config
    declares) has a profile here, else the bare revision."""
    from loradoc.io.adapter_config import load_adapter_config
    from loradoc.registry import record as R
    from loradoc.registry.model import AdapterManifest, BaseRef

    declared = load_adapter_config(got.path).base_model
    target = base or declared
    if target:
        try:
            from loradoc.diagnose.doctor import diagnose
            from loradoc.model.profiles import get_profile

            get_profile(target, allow_build=False)
            d = diagnose(str(got.path), target, fast=True)
            return registry.add_from_diagnosis(d, repo_id=got.repo_id, revision=got.commit_sha)  # type: ignore[no-any-return]
        except LoradocError:
            pass

    def create() -> Any:
        return AdapterManifest(
            id=got.repo_id, repo_id=got.repo_id, base=BaseRef(declared or "unknown"), revisions=[], current=""
        )

    def change(m: Any) -> None:
        R.ensure_revision(m, commit=got.commit_sha, path=str(got.path), label_prefix="pulled")

    return registry.update(got.repo_id, change, create=create)  # type: ignore[no-any-return]


def record_scan(registry: Any, base: str, rows: Any) -> None:
    """Record each adapter a scan-hub diagnosed (static verdicts from the header alone) at the commit it read."""
    for row in rows:
        if row.verdict is None:
            continue
        registry.add_from_diagnosis(
            {
                "verdict": row.verdict,
                "findings": row.findings,
                "mode": "static",
                "adapter": {"repo_id": row.repo_id, "commit": row.sha, "base_model": base, "tensors": row.tensors},
                "base": {"name": base},
            },
            repo_id=row.repo_id,
            revision=row.sha,
        )
