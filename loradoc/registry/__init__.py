"""The adapter / base registry: TOML manifests (schema in SCHEMA.md) indexed in SQLite.

    from loradoc.registry import Registry
    reg = Registry()                       # index: $LORADOC_REGISTRY or user_data_dir/registry.sqlite
    reg.sync()                             # SyncReport(added, updated, removed, unchanged, problems)
    reg.list(base="google/gemma-4-E4B-it") # [AdapterRow]
    reg.show("org/name")                   # AdapterManifest | BaseManifest
    reg.compat("org/name@old", peft="0.19.1")  # CompatAnswer(loads_cleanly, reasons, evidence, hint, ...)

No torch / transformers / peft import here (``add_from_diagnosis`` takes an already computed Diagnosis).
"""

from __future__ import annotations

from loradoc.registry.compat import CompatAnswer
from loradoc.registry.issues import SchemaError
from loradoc.registry.model import (
    SCHEMA_VERSION,
    UNKNOWN,
    AdapterManifest,
    Artifact,
    BaseManifest,
    BaseRef,
    CertificateRecord,
    CheckResult,
    CompatEntry,
    ConfigChange,
    DiagnosisRecord,
    FindingRecord,
    HubPush,
    LineageStep,
    PeftInfo,
    ProfileSummary,
    Provenance,
    Relation,
    Revision,
    RuntimeRecord,
    TargetSummary,
    fingerprint_safetensors,
    key_fingerprint,
)
from loradoc.registry.store import (
    ENV_MANIFESTS,
    ENV_REGISTRY,
    AdapterRow,
    BaseRow,
    ManifestProblem,
    Registry,
    SyncReport,
    check_manifest,
    default_registry_path,
    default_user_dir,
    load_manifest,
)
from loradoc.registry.toml_io import manifest_to_toml
from loradoc.registry.validate import parse_manifest

__all__ = [
    "ENV_MANIFESTS",
    "ENV_REGISTRY",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "AdapterManifest",
    "AdapterRow",
    "Artifact",
    "BaseManifest",
    "BaseRef",
    "BaseRow",
    "CertificateRecord",
    "CheckResult",
    "CompatAnswer",
    "CompatEntry",
    "ConfigChange",
    "DiagnosisRecord",
    "FindingRecord",
    "HubPush",
    "LineageStep",
    "ManifestProblem",
    "PeftInfo",
    "ProfileSummary",
    "Provenance",
    "Registry",
    "Relation",
    "Revision",
    "RuntimeRecord",
    "SchemaError",
    "SyncReport",
    "TargetSummary",
    "check_manifest",
    "default_registry_path",
    "default_user_dir",
    "fingerprint_safetensors",
    "key_fingerprint",
    "load_manifest",
    "manifest_to_toml",
    "parse_manifest",
]
