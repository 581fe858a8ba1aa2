"""The manifest data model (documented in SCHEMA.md): pydantic v2 models, each field spelled once.

A field's type (loradoc/registry/fields.py) is its validation; its default is what an absent key means:

- ``"unknown"`` (:data:`UNKNOWN`) marks a fact we do not know (a commit sha, a tensor count...). It is never
  replaced by a guess. For *fact* fields an absent key means unknown too; the writer always spells it out.
- TOML has no null: for *optional* fields (a finding's ``tower``, an artifact's ``size_bytes``...) absent == none.
  Free-form tables (certificate figures, versions) drop null values on the way in: absent == null.

Reading a TOML document into these models (every problem collected with its key path) is validate.py's job;
writing them is toml_io.py's. The models accept their fields by name or in order (``BaseRef("org/name")``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from loradoc.registry.fields import (
    SCHEMA_VERSION,
    UNKNOWN,
    Commit,
    Count,
    Fingerprint,
    FreeTable,
    FreeValue,
    Ident,
    IntOrUnknown,
    Label,
    LayerListOrUnknown,
    Layers,
    NonEmpty,
    NumOrUnknown,
    Positive,
    PositiveIntOrUnknown,
    SchemaVersion,
    Sha256,
    Specifier,
    SpecifierOrUnknown,
    StrList,
    StrListOrStr,
    StrListOrUnknown,
    StrTable,
)
from loradoc.registry.issues import SchemaError, issues_from

Status = Literal["healthy", "repairable", "broken", "repaired", "verified", "unknown"]
Tower = Literal["language", "vision", "audio", "projector", "unknown"]
Severity = Literal["error", "warning", "info"]
Verdict = Literal["verified-clean", "known-broken"]
ArtifactKind = Literal["merged", "gguf", "gguf-lora", "other"]
Runtime = Literal["vllm", "sglang", "llama_cpp", "mlx_lm"]
RuntimeVerdict = Literal["loads", "loads-with-flags", "refused", "unknown"]
RelationKind = Literal["bnb-4bit-repack", "mirror", "quantized-repack", "finetune-of", "other"]
DoctorVerdict = Literal["healthy", "repairable", "broken"]

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

# Lists / tables whose absence means "empty": left out of the TOML when empty (shorter files, same data).
EMPTY_MEANS_NONE: Final = frozenset(
    {
        "targets", "findings", "compat", "certificates", "artifacts", "hub", "lineage", "config_changes",
        "checks", "versions", "device", "figures", "files", "sources", "relations", "text", "runtimes",
    }
)  # fmt: skip


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Record(BaseModel):
    """A table of a manifest: unknown keys refused, no type coercion (TOML says what it means)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        protected_namespaces=(),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:  # positional fields, in their declared order
            names = list(type(self).model_fields)
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional fields")
            kwargs.update(zip(names, args, strict=False))
        try:
            super().__init__(**kwargs)
        except ValidationError as e:
            raise SchemaError(issues_from(type(self), e)) from None

    # pydantic calls a model's own __init__ when it validates nested tables, unless it is marked as the base one:
    # this one only maps positional fields, so nested tables are validated by pydantic-core alone (faster, and
    # every error of a document is collected in one pass).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: Any) -> dict[str, Any]:
        d = handler(self)
        return {k: v for k, v in d.items() if v is not None and not (k in EMPTY_MEANS_NONE and v in ([], {}))}

    def to_dict(self) -> dict[str, Any]:
        """The TOML table (null and empty record lists left out)."""
        return self.model_dump(by_alias=True)

    def to_json(self) -> dict[str, Any]:
        return self.to_dict()


class BaseRef(Record):
    id: Ident
    revision: Commit = UNKNOWN  # commit sha or "unknown"


class PeftInfo(Record):
    """The adapter's PEFT config as far as it is known."""

    type: NonEmpty = UNKNOWN  # "LORA", ... (peft_type)
    method: NonEmpty = UNKNOWN  # "lora" | "qlora" | "dora" | ... (how it was trained, when stated)
    r: PositiveIntOrUnknown = UNKNOWN
    alpha: NumOrUnknown = UNKNOWN
    dropout: NumOrUnknown = UNKNOWN
    target_modules: StrListOrStr = UNKNOWN  # list of names, a regex string, "default" or "unknown"
    exclude_modules: StrListOrStr = UNKNOWN  # [] = none set
    peft_version: NonEmpty = UNKNOWN  # the peft version recorded in adapter_config.json (that wrote it)
    requires: SpecifierOrUnknown = UNKNOWN  # peft specifier the config needs, e.g. ">=0.14.0"


class TargetSummary(Record):
    """Which modules the adapter targets in one tower."""

    tower: Tower
    modules: StrListOrUnknown = UNKNOWN  # module names (q_proj, ...) or "unknown"
    layers: Layers = UNKNOWN  # "0-33", "0-3,5", or "unknown"
    tensors: IntOrUnknown = UNKNOWN


class FindingRecord(Record):
    code: NonEmpty
    severity: Severity
    count: IntOrUnknown = UNKNOWN
    message: str = ""
    repair: str | None = None
    tower: str | None = None


class CompatEntry(Record):
    """A range of package versions that is known to work (``verified-clean``) or known not to."""

    verdict: Verdict
    peft: Specifier | None = None  # packaging specifier, e.g. ">=0.18" or "==0.19.1"
    transformers: Specifier | None = None
    torch: Specifier | None = None  # recorded with the evidence; not part of a query
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


class RuntimeRecord(Record):
    """Whether a serving runtime loads this revision (``loradoc runtimes --record``), by the rules of
    loradoc/runtimes/rules.toml for that runtime release."""

    runtime: Runtime
    verdict: RuntimeVerdict
    version: str = UNKNOWN  # the runtime release the rules were read from
    flags: StrList = Field(default_factory=list)  # what loads-with-flags needs
    reason: str | None = None  # the runtime's own message
    fix: str | None = None  # the loradoc command that makes a refused adapter load
    rules: StrList = Field(default_factory=list)  # the rules.toml ids that applied
    base: str | None = None  # the base checked against
    checked: str = UNKNOWN  # ISO date


class CheckResult(Record):
    name: NonEmpty
    passed: bool
    figures: FreeTable = Field(default_factory=dict)


class CertificateRecord(Record):
    """A ``loradoc check-load`` certificate, as recorded in the manifest."""

    created: NonEmpty
    passed: bool
    tool: str = UNKNOWN
    path: str | None = None  # where the certificate JSON was
    sha256: str | None = None  # of the certificate JSON file
    versions: StrTable = Field(default_factory=dict)  # package -> version (absent: not installed)
    device: FreeTable = Field(default_factory=dict)  # type, name, dtype
    checks: list[CheckResult] = Field(default_factory=list)


class Artifact(Record):
    """A derived file: a merged checkpoint, a GGUF model, a GGUF LoRA."""

    kind: ArtifactKind
    path: NonEmpty = UNKNOWN  # local path or file name, or "unknown"
    sha256: Sha256 = UNKNOWN
    size_bytes: Count | None = None
    format: str | None = None  # e.g. "bf16 safetensors", "GGUF F16", "Q8_0"
    tool: str | None = None
    created: str = UNKNOWN
    notes: str | None = None


class HubPush(Record):
    """A commit loradoc (or someone) pushed to the Hub for this revision."""

    repo_id: NonEmpty
    commit: Commit = UNKNOWN  # sha or "unknown"
    pr: Positive | None = None
    tag: str | None = None
    created: str = UNKNOWN


class DiagnosisRecord(Record):
    """The last ``loradoc doctor`` run on a revision (its counts and the versions it ran with)."""

    mode: Literal["full", "static"]
    verdict: DoctorVerdict
    created: str = UNKNOWN
    loaded: Count | None = None
    missing: Count | None = None
    unexpected: Count | None = None
    error: str | None = None
    base: str | None = None  # the base it was checked against (a shipped id or a local path)
    versions: StrTable = Field(default_factory=dict)


class ConfigChange(Record):
    field: NonEmpty
    old: FreeValue = None
    new: FreeValue = None
    pass_name: str | None = Field(None, alias="pass")
    reason: str | None = None


class LineageStep(Record):
    """source revision -> passes -> output revision (a label) and/or output path."""

    source: NonEmpty = Field(alias="from")  # a revision label of this manifest
    passes: StrList
    output: NonEmpty = Field(alias="to")  # a revision label of this manifest
    path: str = UNKNOWN  # where the output was written, or "unknown"
    report: str | None = None  # the loradoc-repair.json with every key's fate and hash
    created: str = UNKNOWN
    tool: str = UNKNOWN
    dropped: IntOrUnknown = UNKNOWN
    renamed: IntOrUnknown = UNKNOWN
    notes: str | None = None
    config_changes: list[ConfigChange] = Field(default_factory=list)


class Revision(Record):
    """One snapshot of an adapter: its own status, key layout, findings, compatibility and records."""

    label: Label  # unique within the manifest; `id@label` selects it
    revision: Commit = UNKNOWN  # commit sha or "unknown"
    path: str | None = None  # a local directory (repaired outputs, local adapters)
    status: Status = UNKNOWN
    key_fingerprint: Fingerprint = UNKNOWN
    tensors: IntOrUnknown = UNKNOWN
    notes: str | None = None
    base: BaseRef | None = None  # absent: the manifest's base
    peft: PeftInfo = Field(default_factory=PeftInfo)
    targets: list[TargetSummary] = Field(default_factory=list)
    findings: list[FindingRecord] = Field(default_factory=list)
    compat: list[CompatEntry] = Field(default_factory=list)
    diagnosis: DiagnosisRecord | None = None
    certificates: list[CertificateRecord] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    hub: list[HubPush] = Field(default_factory=list)
    runtimes: list[RuntimeRecord] = Field(default_factory=list)


class _Manifest(Record):
    schema_version: SchemaVersion = Field(SCHEMA_VERSION, alias="schema")  # required in a file (validate.py)


class AdapterManifest(_Manifest):
    kind: Literal["adapter"] = "adapter"
    id: Ident  # the Hub repo id, or the absolute path of a local adapter
    repo_id: str | None = None  # set for Hub adapters (== id)
    current: str = "?"  # label of the current revision (absent: the last one)
    architecture: str = UNKNOWN
    description: str | None = None
    notes: str | None = None
    base: BaseRef
    revisions: list[Revision]
    lineage: list[LineageStep] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _current_defaults_to_last(cls, data: Any) -> Any:
        if isinstance(data, dict) and "current" not in data:
            revs = data.get("revisions")
            last = revs[-1] if isinstance(revs, list) and revs else None
            label = last.get("label") if isinstance(last, dict) else getattr(last, "label", None)
            if isinstance(label, str):
                return {**data, "current": label}
        return data

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
        if len(low) >= 7 and all(c in "0123456789abcdef" for c in low) and len(low) <= 64:
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


class ProfileSummary(Record):
    """What loradoc knows of a base's module layout (from its shipped profile.json)."""

    architecture: str = UNKNOWN
    model_type: str = UNKNOWN
    num_layers: IntOrUnknown = UNKNOWN
    kv_shared_layers: LayerListOrUnknown = UNKNOWN
    towers: StrListOrUnknown = UNKNOWN
    config_sha256: Sha256 = UNKNOWN
    transformers_version: str = UNKNOWN  # the transformers that built the profile
    torch_dtype: str = UNKNOWN
    quantization: str = UNKNOWN  # "none", "bnb-4bit", ... or "unknown"
    text: FreeTable = Field(default_factory=dict)  # hidden_size, num_attention_heads, ...


class Provenance(Record):
    source_kind: str = UNKNOWN  # verbatim-copy | reconstructed | hub | unknown
    file: str | None = None  # provenance.toml beside the manifest
    summary: str | None = None
    sources: StrList = Field(default_factory=list)


class Relation(Record):
    kind: RelationKind
    of: NonEmpty  # the related (original) repo id
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


class BaseManifest(_Manifest):
    kind: Literal["base"] = "base"
    id: Ident
    revision: Commit = UNKNOWN
    description: str | None = None
    notes: str | None = None
    files: StrTable = Field(default_factory=dict)  # role -> file beside the manifest (config, profile...)
    profile: ProfileSummary = Field(default_factory=ProfileSummary)
    provenance: Provenance = Field(default_factory=Provenance)
    relations: list[Relation] = Field(default_factory=list)

    ORIGINAL_KINDS: ClassVar[tuple[str, ...]] = ("bnb-4bit-repack", "quantized-repack", "mirror")

    @property
    def architecture(self) -> str:
        return self.profile.architecture

    def original(self) -> Relation | None:
        """The relation to the full-precision original, when this base is a repack or a mirror."""
        return next((rel for rel in self.relations if rel.kind in self.ORIGINAL_KINDS), None)


Manifest = AdapterManifest | BaseManifest


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
