"""Which base goes with an adapter when the user names none (both shells' ``--base`` default)."""

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
