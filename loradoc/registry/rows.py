"""What the registry's methods return: plain dataclasses with ``to_json()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loradoc.registry.reader import ManifestProblem


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # files opened (stat changed or new)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": len(self.unchanged),
            "read": len(self.read),
            "problems": [p.to_json() for p in self.problems],
            "seconds": round(self.seconds, 4),
        }


@dataclass
class AdapterRow:
    id: str
    base: str
    status: str
    current: str  # label of the current revision
    revision: str  # its commit sha, or "unknown"
    architecture: str
    peft_type: str
    r: int | str
    alpha: int | float | str
    revisions: int
    file: str
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime -> verdict, of the current revision

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BaseRow:
    id: str
    architecture: str
    relation: str | None  # e.g. "bnb-4bit-repack"
    of: str | None  # the original it relates to
    file: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)
