"""The workflow layer shared by the CLI and the TUI: steps that combine the core with the registry.

Nothing here prints; each function returns what it decided and why, and the shells say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, LoradocError


@dataclass(frozen=True)
class BaseChoice:
    base: str
    why: str  # "given", "registry", "adapter_config.json"


def _usable(base: str | None, *, weights: bool) -> bool:
    """A shipped id (``weights=False`` only) or a local directory with config.json."""
    if not base:
        return False
    p = Path(base).expanduser()
    if p.is_dir():
        return (p / "config.json").is_file()
    if weights:
        return False
    from loradoc.model.profiles import shipped_bases

    return base.lower() in {k.lower() for k in shipped_bases()}


def choose_base(adapter: str, base: str | None, registry: Any, *, weights: bool = False) -> BaseChoice:
    """The base to use for ``adapter``: ``base`` when given; else the base the registry last diagnosed this
    adapter against (``loradoc example`` records the tiny base of each bundled adapter); else the base its
    adapter_config.json names, when that is a shipped id or a local directory. ``weights``: the command needs a
    local base with weights (check-load, convert), so shipped ids (config only) do not count."""
    if base:
        return BaseChoice(base, "given")
    candidates: list[tuple[str, str]] = []
    try:
        manifest = registry.show(adapter) if registry is not None else None
    except LoradocError:
        manifest = None
    if manifest is not None and hasattr(manifest, "revisions"):
        try:
            rev = manifest.current_revision
        except LoradocError:
            rev = None
        for r in [rev] + [x for x in reversed(manifest.revisions) if x is not rev]:
            if r is not None and r.diagnosis is not None and r.diagnosis.base:
                candidates.append((r.diagnosis.base, "registry"))
        candidates.append((manifest.base.id, "registry"))
    try:
        from loradoc.io.adapter_config import load_adapter_config

        declared = load_adapter_config(Path(adapter)).base_model if Path(adapter).is_dir() else None
    except LoradocError:
        declared = None
    if declared:
        candidates.append((declared, "adapter_config.json"))
    for cand, why in candidates:
        if _usable(cand, weights=weights):
            return BaseChoice(cand, why)
    need = "a local base directory with weights" if weights else "a local base directory or a shipped base id"
    named = f" (it names {declared!r})" if declared else ""
    raise BadInputError(
        f"no --base given and none is known for {adapter}{named}",
        hint=f"pass --base with {need} (`loradoc base list` lists the shipped ids; `loradoc pull REPO` fetches one)",
    )


# ---------------------------------------------------------------------------------------------------------
# recording: the one place both shells write a step's result into the registry


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
