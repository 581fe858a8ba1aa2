"""The manifest schema: one human-editable TOML file per adapter and per base (documented in SCHEMA.md).

Everything here is plain data: dataclasses, a validator that turns a parsed TOML document into them (collecting
every problem with its key path), a TOML writer, and a scanner that finds the line of a key path so that schema
errors name the line as well as the file.

Conventions (also in SCHEMA.md):

- ``"unknown"`` (:data:`UNKNOWN`) marks a fact we do not know (a commit sha, a tensor count...). It is never
  replaced by a guess. For *fact* fields an absent key means unknown too; the writer always spells it out.
- TOML has no null: for *optional* fields (a finding's ``tower``, an artifact's ``size_bytes``...) absent == none.
  Free-form tables (certificate figures, versions) drop null values on the way in: absent == null.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

SCHEMA_VERSION: Final = 1
UNKNOWN: Final = "unknown"

STATUSES: Final = ("healthy", "repairable", "broken", "repaired", "verified", UNKNOWN)
SEVERITIES: Final = ("error", "warning", "info")
VERDICTS: Final = ("verified-clean", "known-broken")
TOWERS: Final = ("language", "vision", "audio", "projector", UNKNOWN)
ARTIFACT_KINDS: Final = ("merged", "gguf", "gguf-lora", "other")
RUNTIMES: Final = ("vllm", "sglang", "llama_cpp", "mlx_lm")
RUNTIME_VERDICTS: Final = ("loads", "loads-with-flags", "refused", "unknown")
RELATION_KINDS: Final = ("bnb-4bit-repack", "mirror", "quantized-repack", "finetune-of", "other")
COMPAT_PACKAGES: Final = ("peft", "transformers")  # what a compat query asks about
COMPAT_INFO_PACKAGES: Final = ("torch",)  # recorded with an entry, not queried

_COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}\Z")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._\-]{0,95})?\Z")


def _valid_id(v: str) -> bool:
    if v == UNKNOWN:
        return True
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
        return False
    if ".." in v.split("/"):
        return False
    return v.startswith("/") or bool(_REPO_ID_RE.match(v))


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# dataclasses
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BaseRef:
    id: str
    revision: str = UNKNOWN  # commit sha or "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision}


@dataclass
class PeftInfo:
    """The adapter's PEFT config as far as it is known."""

    type: str = UNKNOWN  # "LORA", ... (peft_type)
    method: str = UNKNOWN  # "lora" | "qlora" | "dora" | ... (how it was trained, when stated)
    r: int | str = UNKNOWN
    alpha: int | float | str = UNKNOWN
    dropout: int | float | str = UNKNOWN
    target_modules: list[str] | str = UNKNOWN  # list of names, a regex string, or "unknown"
    exclude_modules: list[str] | str = UNKNOWN  # [] = none set
    peft_version: str = UNKNOWN  # the peft version recorded in adapter_config.json (that wrote it)
    requires: str = UNKNOWN  # peft specifier the config needs, e.g. ">=0.14.0"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "method": self.method,
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules)
            if isinstance(self.target_modules, list)
            else self.target_modules,
            "exclude_modules": (
                list(self.exclude_modules) if isinstance(self.exclude_modules, list) else self.exclude_modules
            ),
            "peft_version": self.peft_version,
            "requires": self.requires,
        }


@dataclass
class TargetSummary:
    """Which modules the adapter targets in one tower."""

    tower: str  # language | vision | audio | projector | unknown
    modules: list[str] | str = UNKNOWN  # module names (q_proj, ...) or "unknown"
    layers: str = UNKNOWN  # "0-33", "0-3,5", or "unknown"
    tensors: int | str = UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "modules": list(self.modules) if isinstance(self.modules, list) else self.modules,
            "layers": self.layers,
            "tensors": self.tensors,
        }


@dataclass
class FindingRecord:
    code: str
    severity: str
    count: int | str = UNKNOWN
    message: str = ""
    repair: str | None = None
    tower: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "code": self.code,
                "severity": self.severity,
                "count": self.count,
                "message": self.message,
                "repair": self.repair,
                "tower": self.tower,
            }
        )


@dataclass
class CompatEntry:
    """A range of package versions that is known to work (``verified-clean``) or known not to."""

    verdict: str  # verified-clean | known-broken
    peft: str | None = None  # packaging specifier, e.g. ">=0.18" or "==0.19.1"
    transformers: str | None = None
    torch: str | None = None  # recorded with the evidence; not part of a query
    evidence: str = ""
    source: str = UNKNOWN  # where the evidence comes from (URL, "loradoc check-load certificate ...")
    recorded: str = UNKNOWN  # ISO date, or "unknown"

    def specs(self) -> dict[str, str]:
        return {k: v for k, v in (("peft", self.peft), ("transformers", self.transformers)) if v is not None}

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("peft", self.peft), ("transformers", self.transformers)) if v]
        if self.torch:
            parts.append(f"torch {self.torch}")
        return ", ".join(parts) or "(no range)"

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "verdict": self.verdict,
                "peft": self.peft,
                "transformers": self.transformers,
                "torch": self.torch,
                "evidence": self.evidence,
                "source": self.source,
                "recorded": self.recorded,
            }
        )


@dataclass
class RuntimeRecord:
    """Whether a serving runtime loads this revision (``loradoc runtimes --record``), by the rules of
    loradoc/runtimes/rules.toml for that runtime release."""

    runtime: str  # vllm | sglang | llama_cpp | mlx_lm
    verdict: str  # loads | loads-with-flags | refused | unknown
    version: str = UNKNOWN  # the runtime release the rules were read from
    flags: list[str] = field(default_factory=list)  # what loads-with-flags needs
    reason: str | None = None  # the runtime's own message
    fix: str | None = None  # the loradoc command that makes a refused adapter load
    rules: list[str] = field(default_factory=list)  # the rules.toml ids that applied
    base: str | None = None  # the base checked against
    checked: str = UNKNOWN  # ISO date

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "runtime": self.runtime,
                "verdict": self.verdict,
                "version": self.version,
                "flags": list(self.flags) or None,
                "reason": self.reason,
                "fix": self.fix,
                "rules": list(self.rules) or None,
                "base": self.base,
                "checked": self.checked,
            }
        )


@dataclass
class CheckResult:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"name": self.name, "passed": self.passed, "figures": self.figures})


@dataclass
class CertificateRecord:
    """A ``loradoc check-load`` certificate, as recorded in the manifest."""

    created: str
    passed: bool
    tool: str = UNKNOWN
    versions: dict[str, str] = field(default_factory=dict)  # package -> version (absent: not installed)
    device: dict[str, Any] = field(default_factory=dict)  # type, name, dtype
    checks: list[CheckResult] = field(default_factory=list)
    path: str | None = None  # where the certificate JSON was
    sha256: str | None = None  # of the certificate JSON file

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "created": self.created,
                "passed": self.passed,
                "tool": self.tool,
                "path": self.path,
                "sha256": self.sha256,
                "versions": dict(self.versions),
                "device": dict(self.device),
                "checks": [c.to_dict() for c in self.checks],
            }
        )


@dataclass
class Artifact:
    """A derived file: a merged checkpoint, a GGUF model, a GGUF LoRA."""

    kind: str  # merged | gguf | gguf-lora | other
    path: str = UNKNOWN  # local path or file name, or "unknown"
    sha256: str = UNKNOWN
    size_bytes: int | None = None
    format: str | None = None  # e.g. "bf16 safetensors", "GGUF F16", "Q8_0"
    tool: str | None = None
    created: str = UNKNOWN
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "kind": self.kind,
                "path": self.path,
                "sha256": self.sha256,
                "size_bytes": self.size_bytes,
                "format": self.format,
                "tool": self.tool,
                "created": self.created,
                "notes": self.notes,
            }
        )


@dataclass
class HubPush:
    """A commit loradoc (or someone) pushed to the Hub for this revision."""

    repo_id: str
    commit: str  # sha or "unknown"
    pr: int | None = None
    tag: str | None = None
    created: str = UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"repo_id": self.repo_id, "commit": self.commit, "pr": self.pr, "tag": self.tag, "created": self.created}
        )


@dataclass
class DiagnosisRecord:
    """The last ``loradoc doctor`` run on a revision (its counts and the versions it ran with)."""

    mode: str  # full | static
    verdict: str
    created: str = UNKNOWN
    loaded: int | None = None
    missing: int | None = None
    unexpected: int | None = None
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    base: str | None = None  # the base it was checked against (a shipped id or a local path)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "mode": self.mode,
                "verdict": self.verdict,
                "created": self.created,
                "loaded": self.loaded,
                "missing": self.missing,
                "unexpected": self.unexpected,
                "error": self.error,
                "base": self.base,
                "versions": dict(self.versions),
            }
        )


@dataclass
class ConfigChange:
    field: str
    old: Any = None
    new: Any = None
    pass_name: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"field": self.field, "old": self.old, "new": self.new, "pass": self.pass_name, "reason": self.reason}
        )


@dataclass
class LineageStep:
    """source revision -> passes -> output revision (a label) and/or output path."""

    source: str  # a revision label of this manifest
    passes: list[str]
    output: str  # a revision label of this manifest
    path: str = UNKNOWN  # where the output was written, or "unknown"
    created: str = UNKNOWN
    tool: str = UNKNOWN
    dropped: int | str = UNKNOWN
    renamed: int | str = UNKNOWN
    config_changes: list[ConfigChange] = field(default_factory=list)
    notes: str | None = None
    report: str | None = None  # the loradoc-repair.json with every key's fate and hash

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "from": self.source,
                "passes": list(self.passes),
                "to": self.output,
                "path": self.path,
                "report": self.report,
                "created": self.created,
                "tool": self.tool,
                "dropped": self.dropped,
                "renamed": self.renamed,
                "notes": self.notes,
                "config_changes": [c.to_dict() for c in self.config_changes],
            }
        )


@dataclass
class Revision:
    """One snapshot of an adapter: its own status, key layout, findings, compatibility and records."""

    label: str  # unique within the manifest; `id@label` selects it
    revision: str = UNKNOWN  # commit sha or "unknown"
    path: str | None = None  # a local directory (repaired outputs, local adapters)
    status: str = UNKNOWN
    key_fingerprint: str = UNKNOWN
    tensors: int | str = UNKNOWN
    base: BaseRef | None = None  # absent: the manifest's base
    notes: str | None = None
    peft: PeftInfo = field(default_factory=PeftInfo)
    targets: list[TargetSummary] = field(default_factory=list)
    findings: list[FindingRecord] = field(default_factory=list)
    compat: list[CompatEntry] = field(default_factory=list)
    diagnosis: DiagnosisRecord | None = None
    certificates: list[CertificateRecord] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    hub: list[HubPush] = field(default_factory=list)
    runtimes: list[RuntimeRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "label": self.label,
                "revision": self.revision,
                "path": self.path,
                "status": self.status,
                "key_fingerprint": self.key_fingerprint,
                "tensors": self.tensors,
                "notes": self.notes,
                "base": self.base.to_dict() if self.base else None,
                "peft": self.peft.to_dict(),
                "targets": [t.to_dict() for t in self.targets],
                "findings": [f.to_dict() for f in self.findings],
                "compat": [c.to_dict() for c in self.compat],
                "diagnosis": self.diagnosis.to_dict() if self.diagnosis else None,
                "certificates": [c.to_dict() for c in self.certificates],
                "artifacts": [a.to_dict() for a in self.artifacts],
                "hub": [h.to_dict() for h in self.hub],
                "runtimes": [x.to_dict() for x in self.runtimes],
            }
        )


@dataclass
class AdapterManifest:
    id: str  # the Hub repo id, or the absolute path of a local adapter
    base: BaseRef
    revisions: list[Revision]
    current: str  # label of the current revision
    repo_id: str | None = None  # set for Hub adapters (== id)
    architecture: str = UNKNOWN
    description: str | None = None
    notes: str | None = None
    lineage: list[LineageStep] = field(default_factory=list)
    schema: int = SCHEMA_VERSION
    kind: str = field(default="adapter", init=False)

    # -- queries -------------------------------------------------------------------------------------------
    def revision(self, ref: str | None = None) -> Revision:
        """The revision named by label, commit sha (or a 7+ char prefix) or local path; None: the current one."""
        found = self.find_revision(ref)
        if found is None:
            from loradoc.errors import BadInputError

            labels = ", ".join(r.label for r in self.revisions)
            raise BadInputError(
                f"{self.id} has no revision {ref!r} (revisions: {labels})",
                hint=f"name one of: {labels}, or a commit sha recorded in the manifest",
            )
        return found

    def find_revision(self, ref: str | None = None) -> Revision | None:
        if ref is None:
            ref = self.current
        low = ref.lower()
        for r in self.revisions:
            if r.label.lower() == low:
                return r
        if len(low) >= 7 and _COMMIT_RE.match(low):
            hits = [r for r in self.revisions if r.revision != UNKNOWN and r.revision.lower().startswith(low)]
            if len(hits) == 1:
                return hits[0]
        for r in self.revisions:
            if r.path is not None and r.path == ref:
                return r
        return None

    @property
    def current_revision(self) -> Revision:
        return self.revision(None)

    def base_of(self, rev: Revision) -> BaseRef:
        return rev.base or self.base

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "kind": "adapter",
                "id": self.id,
                "repo_id": self.repo_id,
                "current": self.current,
                "architecture": self.architecture,
                "description": self.description,
                "notes": self.notes,
                "base": self.base.to_dict(),
                "revisions": [r.to_dict() for r in self.revisions],
                "lineage": [s.to_dict() for s in self.lineage],
            }
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_dict()


@dataclass
class ProfileSummary:
    """What loradoc knows of a base's module layout (from its shipped profile.json)."""

    architecture: str = UNKNOWN
    model_type: str = UNKNOWN
    num_layers: int | str = UNKNOWN
    kv_shared_layers: list[int] | str = UNKNOWN
    towers: list[str] | str = UNKNOWN
    config_sha256: str = UNKNOWN
    transformers_version: str = UNKNOWN  # the transformers that built the profile
    torch_dtype: str = UNKNOWN
    quantization: str = UNKNOWN  # "none", "bnb-4bit", ... or "unknown"
    text: dict[str, Any] = field(default_factory=dict)  # hidden_size, num_attention_heads, ...

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "architecture": self.architecture,
                "model_type": self.model_type,
                "num_layers": self.num_layers,
                "kv_shared_layers": (
                    list(self.kv_shared_layers) if isinstance(self.kv_shared_layers, list) else self.kv_shared_layers
                ),
                "towers": list(self.towers) if isinstance(self.towers, list) else self.towers,
                "config_sha256": self.config_sha256,
                "transformers_version": self.transformers_version,
                "torch_dtype": self.torch_dtype,
                "quantization": self.quantization,
                "text": dict(self.text),
            }
        )


@dataclass
class Provenance:
    source_kind: str = UNKNOWN  # verbatim-copy | reconstructed | hub | unknown
    file: str | None = None  # provenance.toml beside the manifest
    summary: str | None = None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"source_kind": self.source_kind, "file": self.file, "summary": self.summary, "sources": list(self.sources)}
        )


@dataclass
class Relation:
    kind: str  # bnb-4bit-repack | mirror | quantized-repack | finetune-of | other
    of: str  # the related (original) repo id
    quantization: str | None = None
    verified: bool = False
    evidence: str = ""
    source: str = UNKNOWN

    @property
    def quantized(self) -> bool:
        return bool(self.quantization) or "repack" in self.kind

    def describe(self, base_id: str) -> str:
        if self.quantized:
            q = self.quantization or "quantized"
            bits = "4-bit" if "4bit" in (self.quantization or self.kind) else q
            return f"base {base_id} is a {bits} repack ({q}) of {self.of}: its bf16 original is {self.of}"
        if self.kind == "mirror":
            return f"base {base_id} is a 16-bit mirror of {self.of} (same weights and tensor layout)"
        return f"base {base_id} is related to {self.of} ({self.kind})"

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "kind": self.kind,
                "of": self.of,
                "quantization": self.quantization,
                "verified": self.verified,
                "evidence": self.evidence,
                "source": self.source,
            }
        )


@dataclass
class BaseManifest:
    id: str
    revision: str = UNKNOWN
    profile: ProfileSummary = field(default_factory=ProfileSummary)
    provenance: Provenance = field(default_factory=Provenance)
    relations: list[Relation] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # role -> file beside the manifest (config, profile...)
    description: str | None = None
    notes: str | None = None
    schema: int = SCHEMA_VERSION
    kind: str = field(default="base", init=False)

    @property
    def architecture(self) -> str:
        return self.profile.architecture

    def original(self) -> Relation | None:
        """The relation to the full-precision original, when this base is a repack or a mirror."""
        for rel in self.relations:
            if rel.kind in ("bnb-4bit-repack", "quantized-repack", "mirror"):
                return rel
        return None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema": self.schema,
                "kind": "base",
                "id": self.id,
                "revision": self.revision,
                "description": self.description,
                "notes": self.notes,
                "files": dict(self.files),
                "profile": self.profile.to_dict(),
                "provenance": self.provenance.to_dict(),
                "relations": [r.to_dict() for r in self.relations],
            }
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_dict()


Manifest = AdapterManifest | BaseManifest


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


# Lists / tables whose absence means "empty": left out of the TOML when empty (shorter files, same data).
_EMPTY_MEANS_NONE = frozenset(
    {
        "targets", "findings", "compat", "certificates", "artifacts", "hub", "lineage", "config_changes",
        "checks", "versions", "device", "figures", "files", "sources", "relations", "text", "runtimes",
    }
)  # fmt: skip


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and not (k in _EMPTY_MEANS_NONE and v in ([], {}))}


def clean_free(value: Any) -> Any:
    """Free-form data made TOML-safe: null dict values dropped (absent == null), null list items dropped,
    tuples -> lists, non-string keys -> strings. Applied when data enters a manifest, so what is kept in memory
    equals what a TOML round trip gives back."""
    if isinstance(value, Mapping):
        return {str(k): clean_free(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [clean_free(v) for v in value if v is not None]
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return None
    return str(value)


def key_fingerprint(tensors: Mapping[str, Sequence[int]] | Iterable[tuple[str, Sequence[int]]]) -> str:
    """A stable hash of the sorted key names + shapes: ``sha256:<hex>``. Independent of dtype, order, data."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    lines = sorted(f"{name}\t{','.join(str(int(d)) for d in shape)}" for name, shape in items)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fingerprint_safetensors(path: Any) -> str:
    """:func:`key_fingerprint` of a safetensors file, from its header alone."""
    from loradoc.io.safetensors import read_header

    header = read_header(path)
    return key_fingerprint({n: t.shape for n, t in header.tensors.items()})


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + p
    return out or "(top level)"


@dataclass
class SchemaIssue:
    path: KeyPath
    message: str

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.message}"


class SchemaError(ValueError):
    """A manifest that parses as TOML but does not fit the schema. ``issues`` lists every problem found."""

    def __init__(self, issues: list[SchemaIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues[:5]))


_MISSING = object()


class _R:
    """Reads one table, recording problems instead of raising (so that one run reports them all)."""

    def __init__(self, data: Any, path: KeyPath, issues: list[SchemaIssue], allowed: Iterable[str]) -> None:
        self.path = path
        self.issues = issues
        self.ok = isinstance(data, dict)
        self.d: dict[str, Any] = data if isinstance(data, dict) else {}
        if not self.ok:
            self.bad(None, f"must be a table, not {_tname(data)}")
            return
        allowed_set = _frozen(tuple(allowed))
        if not allowed_set.issuperset(self.d):
            for k in self.d:
                if k not in allowed_set:
                    self.bad(k, f"unknown key (allowed here: {', '.join(sorted(allowed_set))})")

    def bad(self, key: str | int | None, msg: str) -> None:
        self.issues.append(SchemaIssue(self.path + ((key,) if key is not None else ()), msg))

    def get(self, key: str) -> Any:
        return self.d.get(key, _MISSING)

    def string(self, key: str, *, required: bool = False, default: Any = None, choices: Sequence[str] = ()) -> Any:
        v = self.get(key)
        if v is _MISSING:
            if required:
                self.bad(key, "required")
            return default
        if not isinstance(v, str):
            self.bad(key, f"must be a string, not {_tname(v)}")
            return default
        if choices and v not in choices:
            self.bad(key, f"{v!r} is not one of {', '.join(choices)}")
            return default
        return v

    def nonempty(self, key: str, *, required: bool = True, default: Any = None) -> Any:
        v = self.string(key, required=required, default=default)
        if isinstance(v, str) and not v.strip():
            self.bad(key, "must not be empty")
            return default
        return v

    def ident(self, key: str, *, default: Any = None) -> Any:
        """An adapter/base id: a Hub repo id (``org/name``) or an absolute local path, with no ``..`` step and no
        control character (ids become file names and lookups)."""
        v = self.nonempty(key, default=default)
        if not isinstance(v, str) or v == default:
            return v
        if _valid_id(v):
            return v
        self.bad(key, f"{v!r} is neither a Hub repo id (org/name) nor an absolute local path")
        return default

    def commit(self, key: str) -> str:
        v = self.string(key, default=UNKNOWN)
        if v != UNKNOWN and not _COMMIT_RE.match(v):
            self.bad(key, f'{v!r} is not a commit sha (7-64 lowercase hex) or "unknown"')
            return UNKNOWN
        return v

    def sha256(self, key: str) -> str:
        v = self.string(key, default=UNKNOWN)
        if v != UNKNOWN and not _SHA256_RE.match(v):
            self.bad(key, f'{v!r} is not a sha256 (64 lowercase hex) or "unknown"')
            return UNKNOWN
        return v

    def boolean(self, key: str, *, required: bool = False, default: bool = False) -> bool:
        v = self.get(key)
        if v is _MISSING:
            if required:
                self.bad(key, "required")
            return default
        if not isinstance(v, bool):
            self.bad(key, f"must be true or false, not {_tname(v)}")
            return default
        return v

    def int_opt(self, key: str, *, minimum: int | None = 0) -> int | None:
        v = self.get(key)
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(key, f"must be an integer, not {_tname(v)}")
            return None
        if minimum is not None and v < minimum:
            self.bad(key, f"must be >= {minimum}")
            return None
        return v

    def int_or_unknown(self, key: str, *, minimum: int = 0) -> int | str:
        v = self.get(key)
        if v is _MISSING or v == UNKNOWN:
            return UNKNOWN
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(key, f'must be an integer or "unknown", not {_tname(v)}')
            return UNKNOWN
        if v < minimum:
            self.bad(key, f"must be >= {minimum}")
            return UNKNOWN
        return v

    def num_or_unknown(self, key: str) -> int | float | str:
        v = self.get(key)
        if v is _MISSING or v == UNKNOWN:
            return UNKNOWN
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.bad(key, f'must be a number or "unknown", not {_tname(v)}')
            return UNKNOWN
        return v

    def str_list(self, key: str, *, allow_str: bool = False, allow_unknown: bool = False, default: Any = None) -> Any:
        v = self.get(key)
        if v is _MISSING:
            return default
        if isinstance(v, str) and (allow_str or (allow_unknown and v == UNKNOWN)):
            return v
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        want = "a list of strings" + (" or a string" if allow_str else "") + (' or "unknown"' if allow_unknown else "")
        self.bad(key, f"must be {want}")
        return default

    def specifier(self, key: str) -> str | None:
        v = self.string(key)
        if v is None:
            return None
        if not _valid_specifier(v):
            self.bad(key, f'{v!r} is not a version specifier (e.g. ">=0.18", "==0.19.1", ">=5.5,<5.8")')
            return None
        if not v.strip():
            self.bad(key, "must not be empty")
            return None
        return v

    def free_table(self, key: str) -> dict[str, Any]:
        v = self.get(key)
        if v is _MISSING:
            return {}
        if not isinstance(v, dict):
            self.bad(key, f"must be a table, not {_tname(v)}")
            return {}
        return clean_free(v)

    def str_table(self, key: str) -> dict[str, str]:
        t = self.free_table(key)
        out: dict[str, str] = {}
        for k, v in t.items():
            if isinstance(v, str):
                out[k] = v
            else:
                self.issues.append(SchemaIssue(self.path + (key, k), f"must be a string, not {_tname(v)}"))
        return out

    def table(self, key: str, allowed: Iterable[str], *, required: bool = False) -> _R | None:
        v = self.get(key)
        if v is _MISSING:
            if required:
                self.bad(key, "required")
            return None
        return _R(v, self.path + (key,), self.issues, allowed)

    def tables(self, key: str, allowed: Iterable[str]) -> list[_R]:
        v = self.get(key)
        if v is _MISSING:
            return []
        if not isinstance(v, list):
            self.bad(key, f"must be an array of tables ([[{key}]]), not {_tname(v)}")
            return []
        return [_R(x, self.path + (key, i), self.issues, allowed) for i, x in enumerate(v)]


_frozen = functools.lru_cache(maxsize=None)(frozenset)


@functools.lru_cache(maxsize=4096)
def _valid_specifier(v: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(v)
    except InvalidSpecifier:
        return False
    return True


def _tname(v: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a float",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _read_base_ref(r: _R) -> BaseRef:
    return BaseRef(id=r.ident("id", default=UNKNOWN), revision=r.commit("revision"))


def _read_peft(r: _R) -> PeftInfo:
    return PeftInfo(
        type=r.nonempty("type", required=False, default=UNKNOWN),
        method=r.nonempty("method", required=False, default=UNKNOWN),
        r=r.int_or_unknown("r", minimum=1),
        alpha=r.num_or_unknown("alpha"),
        dropout=r.num_or_unknown("dropout"),
        target_modules=r.str_list("target_modules", allow_str=True, default=UNKNOWN),
        exclude_modules=r.str_list("exclude_modules", allow_str=True, default=UNKNOWN),
        peft_version=r.nonempty("peft_version", required=False, default=UNKNOWN),
        requires=_requires(r),
    )


def _requires(r: _R) -> str:
    if r.get("requires") in (_MISSING, UNKNOWN):
        return UNKNOWN
    return r.specifier("requires") or UNKNOWN


_LAYERS_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*\Z")


def _read_target(r: _R) -> TargetSummary:
    layers = r.string("layers", default=UNKNOWN)
    if layers != UNKNOWN and not _LAYERS_RE.match(layers):
        r.bad("layers", f'{layers!r} is not a layer range like "0-33" or "0-3,5" (or "unknown")')
        layers = UNKNOWN
    return TargetSummary(
        tower=r.string("tower", required=True, default=UNKNOWN, choices=TOWERS),
        modules=r.str_list("modules", allow_unknown=True, default=UNKNOWN),
        layers=layers,
        tensors=r.int_or_unknown("tensors"),
    )


def _read_finding(r: _R) -> FindingRecord:
    return FindingRecord(
        code=r.nonempty("code", default=UNKNOWN),
        severity=r.string("severity", required=True, default="error", choices=SEVERITIES),
        count=r.int_or_unknown("count"),
        message=r.string("message", default=""),
        repair=r.string("repair"),
        tower=r.string("tower"),
    )


def _read_compat(r: _R) -> CompatEntry:
    e = CompatEntry(
        verdict=r.string("verdict", required=True, default="known-broken", choices=VERDICTS),
        peft=r.specifier("peft"),
        transformers=r.specifier("transformers"),
        torch=r.specifier("torch"),
        evidence=r.string("evidence", default=""),
        source=r.string("source", default=UNKNOWN),
        recorded=r.string("recorded", default=UNKNOWN),
    )
    if r.ok and e.peft is None and e.transformers is None and "peft" not in r.d and "transformers" not in r.d:
        r.bad(None, "names neither a peft nor a transformers range")
    return e


def _read_runtime(r: _R) -> RuntimeRecord:
    return RuntimeRecord(
        runtime=r.string("runtime", required=True, default=UNKNOWN, choices=RUNTIMES),
        verdict=r.string("verdict", required=True, default=UNKNOWN, choices=RUNTIME_VERDICTS),
        version=r.string("version", default=UNKNOWN),
        flags=r.str_list("flags", default=[]),
        reason=r.string("reason"),
        fix=r.string("fix"),
        rules=r.str_list("rules", default=[]),
        base=r.string("base"),
        checked=r.string("checked", default=UNKNOWN),
    )


def _read_check(r: _R) -> CheckResult:
    return CheckResult(
        name=r.nonempty("name", default=UNKNOWN),
        passed=r.boolean("passed", required=True),
        figures=r.free_table("figures"),
    )


def _read_certificate(r: _R) -> CertificateRecord:
    return CertificateRecord(
        created=r.nonempty("created", default=UNKNOWN),
        passed=r.boolean("passed", required=True),
        tool=r.string("tool", default=UNKNOWN),
        versions=r.str_table("versions"),
        device=r.free_table("device"),
        checks=[_read_check(c) for c in r.tables("checks", ("name", "passed", "figures"))],
        path=r.string("path"),
        sha256=r.string("sha256"),
    )


def _read_artifact(r: _R) -> Artifact:
    return Artifact(
        kind=r.string("kind", required=True, default="other", choices=ARTIFACT_KINDS),
        path=r.nonempty("path", required=False, default=UNKNOWN),
        sha256=r.sha256("sha256"),
        size_bytes=r.int_opt("size_bytes"),
        format=r.string("format"),
        tool=r.string("tool"),
        created=r.string("created", default=UNKNOWN),
        notes=r.string("notes"),
    )


def _read_hub(r: _R) -> HubPush:
    return HubPush(
        repo_id=r.nonempty("repo_id", default=UNKNOWN),
        commit=r.commit("commit"),
        pr=r.int_opt("pr", minimum=1),
        tag=r.string("tag"),
        created=r.string("created", default=UNKNOWN),
    )


def _read_diagnosis(r: _R) -> DiagnosisRecord:
    return DiagnosisRecord(
        mode=r.string("mode", required=True, default="static", choices=("full", "static")),
        verdict=r.string("verdict", required=True, default=UNKNOWN, choices=("healthy", "repairable", "broken")),
        created=r.string("created", default=UNKNOWN),
        loaded=r.int_opt("loaded"),
        missing=r.int_opt("missing"),
        unexpected=r.int_opt("unexpected"),
        error=r.string("error"),
        versions=r.str_table("versions"),
        base=r.string("base"),
    )


_REVISION_KEYS = (
    "label", "revision", "path", "status", "key_fingerprint", "tensors", "base", "notes", "peft", "targets",
    "findings", "compat", "diagnosis", "certificates", "artifacts", "hub", "runtimes",
)  # fmt: skip
_PEFT_KEYS = (
    "type",
    "method",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "exclude_modules",
    "peft_version",
    "requires",
)


def _read_revision(r: _R) -> Revision:
    label = r.nonempty("label", default="?")
    if label != "?" and not _LABEL_RE.match(label):
        r.bad("label", f"{label!r}: use letters, digits, '.', '_' or '-' (at most 64, starting with a letter/digit)")
    fp = r.string("key_fingerprint", default=UNKNOWN)
    if fp != UNKNOWN and not _FINGERPRINT_RE.match(fp):
        r.bad("key_fingerprint", f'{fp!r} is not "sha256:<64 hex>" or "unknown"')
        fp = UNKNOWN
    base_t = r.table("base", ("id", "revision"))
    peft_t = r.table("peft", _PEFT_KEYS)
    diag_t = r.table(
        "diagnosis", ("mode", "verdict", "created", "loaded", "missing", "unexpected", "error", "versions", "base")
    )
    return Revision(
        label=label,
        revision=r.commit("revision"),
        path=r.string("path"),
        status=r.string("status", default=UNKNOWN, choices=STATUSES),
        key_fingerprint=fp,
        tensors=r.int_or_unknown("tensors"),
        base=_read_base_ref(base_t) if base_t else None,
        notes=r.string("notes"),
        peft=_read_peft(peft_t) if peft_t else PeftInfo(),
        targets=[_read_target(t) for t in r.tables("targets", ("tower", "modules", "layers", "tensors"))],
        findings=[
            _read_finding(t) for t in r.tables("findings", ("code", "severity", "count", "message", "repair", "tower"))
        ],
        compat=[
            _read_compat(t)
            for t in r.tables("compat", ("verdict", "peft", "transformers", "torch", "evidence", "source", "recorded"))
        ],
        diagnosis=_read_diagnosis(diag_t) if diag_t else None,
        certificates=[
            _read_certificate(t)
            for t in r.tables(
                "certificates", ("created", "passed", "tool", "versions", "device", "checks", "path", "sha256")
            )
        ],
        artifacts=[
            _read_artifact(t)
            for t in r.tables(
                "artifacts", ("kind", "path", "sha256", "size_bytes", "format", "tool", "created", "notes")
            )
        ],
        hub=[_read_hub(t) for t in r.tables("hub", ("repo_id", "commit", "pr", "tag", "created"))],
        runtimes=[
            _read_runtime(t)
            for t in r.tables(
                "runtimes", ("runtime", "verdict", "version", "flags", "reason", "fix", "rules", "base", "checked")
            )
        ],
    )


def _read_change(r: _R) -> ConfigChange:
    return ConfigChange(
        field=r.nonempty("field", default=UNKNOWN),
        old=clean_free(r.d.get("old")),
        new=clean_free(r.d.get("new")),
        pass_name=r.string("pass"),
        reason=r.string("reason"),
    )


def _read_lineage(r: _R) -> LineageStep:
    passes = r.str_list("passes", default=None)
    if passes is None:
        if r.get("passes") is _MISSING:
            r.bad("passes", 'required (the repair passes, e.g. ["drop-tower-loras"])')
        passes = []
    return LineageStep(
        source=r.nonempty("from", default="?"),
        passes=passes,
        output=r.nonempty("to", default="?"),
        path=r.string("path", default=UNKNOWN),
        created=r.string("created", default=UNKNOWN),
        tool=r.string("tool", default=UNKNOWN),
        dropped=r.int_or_unknown("dropped"),
        renamed=r.int_or_unknown("renamed"),
        config_changes=[_read_change(c) for c in r.tables("config_changes", ("field", "old", "new", "pass", "reason"))],
        notes=r.string("notes"),
        report=r.string("report"),
    )


_ADAPTER_KEYS = (
    "schema", "kind", "id", "repo_id", "current", "architecture", "description", "notes", "base", "revisions",
    "lineage",
)  # fmt: skip
_BASE_KEYS = ("schema", "kind", "id", "revision", "description", "notes", "files", "profile", "provenance", "relations")
_PROFILE_KEYS = (
    "architecture", "model_type", "num_layers", "kv_shared_layers", "towers", "config_sha256",
    "transformers_version", "torch_dtype", "quantization", "text",
)  # fmt: skip


def _check_schema_version(r: _R) -> int:
    v = r.get("schema")
    if v is _MISSING:
        r.bad("schema", f"required (schema = {SCHEMA_VERSION})")
        return SCHEMA_VERSION
    if isinstance(v, bool) or not isinstance(v, int):
        r.bad("schema", f"must be an integer, not {_tname(v)}")
        return SCHEMA_VERSION
    if v > SCHEMA_VERSION:
        r.bad("schema", f"schema {v} is newer than this loradoc reads ({SCHEMA_VERSION}): upgrade loradoc")
    elif v < 1:
        r.bad("schema", "must be >= 1")
    return v


def parse_manifest(data: Any) -> Manifest:
    """Validate a parsed TOML document and build the manifest. Raises :class:`SchemaError` with every issue."""
    issues: list[SchemaIssue] = []
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "base":
        m: Manifest = _parse_base(data, issues)
    elif kind == "adapter":
        m = _parse_adapter(data, issues)
    else:
        issues.append(
            SchemaIssue(
                ("kind",), 'required: "adapter" or "base"' if kind is None else f'{kind!r} is not "adapter" or "base"'
            )
        )
        raise SchemaError(issues)
    if issues:
        raise SchemaError(issues)
    return m


def _parse_adapter(data: dict[str, Any], issues: list[SchemaIssue]) -> AdapterManifest:
    r = _R(data, (), issues, _ADAPTER_KEYS)
    schema = _check_schema_version(r)
    ident = r.ident("id", default="?")
    repo_id = r.string("repo_id")
    if repo_id is not None and ident.lower() != repo_id.lower():
        r.bad("repo_id", f"{repo_id!r} differs from id {ident!r} (a Hub adapter's id is its repo id)")
    base_t = r.table("base", ("id", "revision"), required=True)
    revs = [_read_revision(t) for t in r.tables("revisions", _REVISION_KEYS)]
    if not revs and r.get("revisions") is _MISSING:
        r.bad("revisions", "required: at least one [[revisions]] entry")
    seen: dict[str, int] = {}
    for i, rev in enumerate(revs):
        low = rev.label.lower()
        if low in seen:
            issues.append(
                SchemaIssue(("revisions", i, "label"), f"duplicate label {rev.label!r} (also revisions[{seen[low]}])")
            )
        seen.setdefault(low, i)
    current = r.string("current")
    if current is None:
        current = revs[-1].label if revs else "?"
        if len(revs) > 1:
            r.bad("current", "required when there is more than one revision (the label of the current one)")
    elif revs and current.lower() not in seen:
        r.bad("current", f"{current!r} is not the label of a revision ({', '.join(x.label for x in revs)})")
    lineage = [
        _read_lineage(t)
        for t in r.tables(
            "lineage",
            (
                "from",
                "passes",
                "to",
                "path",
                "report",
                "created",
                "tool",
                "dropped",
                "renamed",
                "config_changes",
                "notes",
            ),
        )
    ]
    for i, step in enumerate(lineage):
        for key, lab in (("from", step.source), ("to", step.output)):
            if lab != "?" and lab.lower() not in seen:
                issues.append(SchemaIssue(("lineage", i, key), f"{lab!r} is not the label of a revision"))
    return AdapterManifest(
        id=ident,
        base=_read_base_ref(base_t) if base_t else BaseRef(UNKNOWN),
        revisions=revs,
        current=current,
        repo_id=repo_id,
        architecture=r.string("architecture", default=UNKNOWN),
        description=r.string("description"),
        notes=r.string("notes"),
        lineage=lineage,
        schema=schema,
    )


def _parse_base(data: dict[str, Any], issues: list[SchemaIssue]) -> BaseManifest:
    r = _R(data, (), issues, _BASE_KEYS)
    schema = _check_schema_version(r)
    p = r.table("profile", _PROFILE_KEYS)
    prof = ProfileSummary()
    if p is not None:
        kv = p.get("kv_shared_layers")
        if kv is _MISSING or kv == UNKNOWN:
            kv_v: list[int] | str = UNKNOWN
        elif isinstance(kv, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in kv):
            kv_v = list(kv)
        else:
            p.bad("kv_shared_layers", 'must be a list of layer indices or "unknown"')
            kv_v = UNKNOWN
        prof = ProfileSummary(
            architecture=p.string("architecture", default=UNKNOWN),
            model_type=p.string("model_type", default=UNKNOWN),
            num_layers=p.int_or_unknown("num_layers"),
            kv_shared_layers=kv_v,
            towers=p.str_list("towers", allow_unknown=True, default=UNKNOWN),
            config_sha256=p.sha256("config_sha256"),
            transformers_version=p.string("transformers_version", default=UNKNOWN),
            torch_dtype=p.string("torch_dtype", default=UNKNOWN),
            quantization=p.string("quantization", default=UNKNOWN),
            text=p.free_table("text"),
        )
    pv = r.table("provenance", ("source_kind", "file", "summary", "sources"))
    prov = Provenance()
    if pv is not None:
        prov = Provenance(
            source_kind=pv.string("source_kind", default=UNKNOWN),
            file=pv.string("file"),
            summary=pv.string("summary"),
            sources=pv.str_list("sources", default=[]),
        )
    rels = []
    for t in r.tables("relations", ("kind", "of", "quantization", "verified", "evidence", "source")):
        rels.append(
            Relation(
                kind=t.string("kind", required=True, default="other", choices=RELATION_KINDS),
                of=t.nonempty("of", default=UNKNOWN),
                quantization=t.string("quantization"),
                verified=t.boolean("verified"),
                evidence=t.string("evidence", default=""),
                source=t.string("source", default=UNKNOWN),
            )
        )
    return BaseManifest(
        id=r.ident("id", default="?"),
        revision=r.commit("revision"),
        profile=prof,
        provenance=prov,
        relations=rels,
        files=r.str_table("files"),
        description=r.string("description"),
        notes=r.string("notes"),
        schema=schema,
    )


def manifest_from_json(d: dict[str, Any]) -> Manifest:
    """Rebuild a manifest from :meth:`to_dict` output (the index stores that JSON)."""
    return parse_manifest(d)


# ---------------------------------------------------------------------------------------------------------
# TOML writing (arrays of tables as [[a.b]] headers; small flat tables inline)
# ---------------------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _string(s: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape, s) + '"'


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return _string(v)
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_inline(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    return _scalar(v)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _small(v: dict[str, Any]) -> bool:
    return not any(isinstance(x, dict) or _is_table_array(x) for x in v.values()) and len(_inline(v)) <= 100


def _emit_table(d: dict[str, Any], prefix: str, out: list[str]) -> None:
    subs: list[tuple[str, Any]] = []
    for k, v in d.items():
        if v is None:
            continue
        if (isinstance(v, dict) and not _small(v)) or _is_table_array(v):
            subs.append((k, v))
        else:
            out.append(f"{_key(k)} = {_inline(v)}")
    for k, v in subs:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{name}]")
            _emit_table(v, name, out)
        else:
            for item in v:
                out.append("")
                out.append(f"[[{name}]]")
                _emit_table(item, name, out)


def dumps(d: dict[str, Any], header: str | None = None) -> str:
    out: list[str] = []
    if header:
        out += [f"# {line}".rstrip() for line in header.splitlines()]
    _emit_table(d, "", out)
    return "\n".join(out).lstrip("\n") + "\n"


def manifest_to_toml(m: Manifest) -> str:
    kind = "adapter" if isinstance(m, AdapterManifest) else "base"
    header = f"loradoc {kind} manifest (schema {SCHEMA_VERSION}); see loradoc/registry/SCHEMA.md"
    return dumps(m.to_dict(), header=header)


# ---------------------------------------------------------------------------------------------------------
# where is a key? (schema errors name the line)
# ---------------------------------------------------------------------------------------------------------

_HDR_ARRAY = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_HDR_TABLE = re.compile(r"^\[\s*(.+?)\s*\]\s*(#.*)?$")
_KEYPART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_ASSIGN = re.compile(rf"^({_KEYPART}(?:\s*\.\s*{_KEYPART})*)\s*=\s*(.*)$")
_STRINGS = re.compile(r'"""|\'\'\'|"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split_key(s: str) -> list[str]:
    parts = re.findall(_KEYPART, s)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Line number (1-based) of every table header and key assignment, by concrete key path
    (``("revisions", 1, "compat", 0, "verdict")``). Approximate for exotic TOML; exact for what we write."""
    lines: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}
    current: KeyPath = ()
    in_ml: str | None = None
    depth = 0

    def resolve(parts: list[str]) -> KeyPath:
        p: KeyPath = ()
        for part in parts:
            p = p + (part,)
            if p in arrays:
                p = p + (arrays[p],)
        return p

    for lineno, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if in_ml:
            if in_ml in s:
                in_ml = None
            continue
        if depth > 0:
            body = _STRINGS.sub("", s).split("#", 1)[0]
            depth += body.count("[") - body.count("]")
            continue
        if not s or s.startswith("#"):
            continue
        m = _HDR_ARRAY.match(s)
        if m:
            parts = _split_key(m.group(1))
            concrete = resolve(parts[:-1]) + (parts[-1],)
            idx = arrays.get(concrete, -1) + 1
            arrays[concrete] = idx
            current = concrete + (idx,)
            lines.setdefault(concrete, lineno)
            lines[current] = lineno
            continue
        m = _HDR_TABLE.match(s)
        if m and not s.startswith("[["):
            current = resolve(_split_key(m.group(1)))
            lines[current] = lineno
            continue
        m = _ASSIGN.match(s)
        if m:
            path = current + tuple(_split_key(m.group(1)))
            lines[path] = lineno
            value = m.group(2)
            for delim in ('"""', "'''"):
                if value.startswith(delim) and value.count(delim) == 1:
                    in_ml = delim
            if in_ml is None:
                body = _STRINGS.sub("", value)
                body = body.split("#", 1)[0]
                depth = max(0, body.count("[") - body.count("]"))
    return lines


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest enclosing key that has one."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None


def to_json_text(m: Manifest) -> str:
    return json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False)
