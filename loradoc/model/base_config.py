"""Finding the config of a base: a local directory (or its config.json) or a shipped base id, and reading its
config.json with the types and sizes of the fields loradoc reads checked (one clear line naming the field)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, MalformedConfigError, UnknownBaseError

__all__ = [
    "BASE_INT_FIELDS",
    "BaseSource",
    "manifests_dir",
    "read_config",
    "resolve_base",
    "shipped_bases",
    "validate_base_config",
]


def manifests_dir() -> Path:
    """The shipped manifests: inside the wheel (loradoc/_manifests) or the source checkout (manifests/)."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_manifests"
    if packaged.is_dir():
        return packaged
    return package.parent / "manifests"


@dataclass(frozen=True)
class BaseSource:
    name: str  # repo id for shipped bases, else the directory
    config_path: Path
    directory: Path  # where weights live (shipped bases: the manifest folder, which has no weights)
    shipped: bool
    provenance: dict[str, Any] | None = None


def shipped_bases() -> dict[str, Path]:
    root = manifests_dir() / "bases"
    out: dict[str, Path] = {}
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "config.json").is_file():
                out[d.name.replace("--", "/", 1)] = d
    return out


def resolve_base(base: str) -> BaseSource:
    """A local base directory (with config.json), or a shipped base id such as ``google/gemma-4-E4B-it``."""
    p = Path(base).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise BadInputError(
                f"base directory {p} has no config.json",
                hint="pass the folder of a transformers checkpoint (config.json + weights) or a shipped base id",
            )
        return BaseSource(str(p), cfg, p, shipped=False)
    if p.is_file() and p.name == "config.json":
        return BaseSource(str(p.parent), p, p.parent, shipped=False)
    shipped = shipped_bases()
    for repo_id, d in shipped.items():
        if repo_id.lower() == base.lower():
            prov = None
            if (d / "provenance.toml").is_file():
                import tomllib

                prov = tomllib.loads((d / "provenance.toml").read_text())
            return BaseSource(repo_id, d / "config.json", d, shipped=True, provenance=prov)
    known = ", ".join(shipped) or "none"
    raise UnknownBaseError(
        f"base {base!r} is neither a local directory nor a shipped base id (shipped: {known})",
        hint="pass a local snapshot directory with config.json, or `loradoc pull REPO` it first",
    )


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path} not found", hint="pass a base directory that has config.json") from None
    try:
        cfg = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad syntax, bad UTF-8, an integer too long, nesting too deep
        raise MalformedConfigError(
            f"{path} is not valid JSON ({e.__class__.__name__} at {getattr(e, 'lineno', '?')})",
            hint="restore the base's config.json from its source",
        ) from None
    if not isinstance(cfg, dict):
        raise MalformedConfigError(f"{path} is not a JSON object", hint="restore the base's config.json")
    validate_base_config(cfg, path)
    return cfg, hashlib.sha256(raw).hexdigest()


#: The size fields loradoc (and the meta-device build) read, with generous upper bounds no real model reaches:
#: past them a hostile config.json makes the module-tree build run for minutes.
BASE_INT_FIELDS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (0, 4096),
    "num_kv_shared_layers": (0, 4096),
    "hidden_size": (1, 1 << 20),
    "intermediate_size": (1, 1 << 22),
    "num_attention_heads": (1, 1 << 16),
    "num_key_value_heads": (1, 1 << 16),
    "head_dim": (1, 1 << 16),
    "vocab_size": (1, 1 << 24),
}


def validate_base_config(cfg: dict[str, Any], path: Path) -> None:
    """Types and sizes of the base config.json fields loradoc reads: one clear line naming the field."""

    def bad(name: str, want: str, got: Any) -> MalformedConfigError:
        shown = json.dumps(got)[:60] if isinstance(got, str | int | float | list | dict | None) else repr(got)[:60]
        return MalformedConfigError(
            f"{path}: field {name!r} must be {want}, got {shown}",
            hint="restore the base's config.json from its source (or fix that field)",
        )

    archs = cfg.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and archs and all(isinstance(a, str) and 0 < len(a) <= 256 for a in archs)
    ):
        raise bad("architectures", 'a non-empty list of class names such as ["Gemma4ForConditionalGeneration"]', archs)
    subs: list[tuple[str, dict[str, Any]]] = [("", cfg)]
    subs += [(f"{k}.", v) for k, v in cfg.items() if k.endswith("_config") and isinstance(v, dict)]
    for prefix, d in subs:
        for name, (lo, hi) in BASE_INT_FIELDS.items():
            v = d.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(prefix + name, "an integer", v)
            if not lo <= v <= hi:
                raise bad(prefix + name, f"an integer from {lo} to {hi}", v)
        lt = d.get("layer_types")
        if lt is None:
            continue
        if not isinstance(lt, list) or not all(isinstance(t, str) and len(t) <= 256 for t in lt):
            raise bad(prefix + "layer_types", "a list of layer type names", lt)
        n = d.get("num_hidden_layers")
        if n is not None and len(lt) != n:
            raise MalformedConfigError(
                f"{path}: field {prefix + 'layer_types'!r} has {len(lt)} entries but "
                f"{prefix + 'num_hidden_layers'} is {n}",
                hint="restore the base's config.json from its source (one layer type per layer)",
            )
