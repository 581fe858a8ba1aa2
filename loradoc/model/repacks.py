"""Quantized repacks and mirrors of base models, from the shipped ``manifests/repacks.toml`` (data, not code)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache

from loradoc.model.profiles import manifests_dir


@dataclass(frozen=True)
class Repack:
    repo_id: str
    original: str
    relation: str
    quantization: str | None
    verified: bool

    @property
    def quantized(self) -> bool:
        return bool(self.quantization) or "repack" in self.relation


@lru_cache(maxsize=1)
def _table() -> dict[str, Repack]:
    path = manifests_dir() / "repacks.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    out: dict[str, Repack] = {}
    for e in data.get("repack", []):
        r = Repack(
            e["repo_id"],
            e["original"],
            e.get("relation", "repack"),
            e.get("quantization"),
            bool(e.get("verified", False)),
        )
        out[r.repo_id.lower()] = r
    return out


def lookup_repack(repo_id: str) -> Repack | None:
    """The repack entry for ``repo_id`` (case-insensitive), or None."""
    return _table().get(repo_id.lower())


def full_precision_original(repo_id: str) -> str | None:
    hit = lookup_repack(repo_id)
    return hit.original if hit and hit.quantized else None
