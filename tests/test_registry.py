"""The registry: shipped seed manifests, compat answers, schema errors with lines, incremental sync, and lossless
recording of doctor / repair / certificate results through TOML and SQLite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoc.demo.builder import ExampleSet
from loradoc.errors import BadInputError, LoradocError, MalformedConfigError
from loradoc.model.profiles import manifests_dir
from loradoc.registry import (
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
    Registry,
    Revision,
    RuntimeRecord,
    SchemaError,
    TargetSummary,
    check_manifest,
    fingerprint_safetensors,
    key_fingerprint,
    load_manifest,
    manifest_to_toml,
    parse_manifest,
)
from loradoc.registry import record as R
from loradoc.registry.fields import clean_free
from loradoc.registry.keylines import format_path
from loradoc.registry.store import RACY_NS

CLINICAL = "Shubh-0789/gemma4-clinical-endpoint-extractor"
SEEDS = {
    CLINICAL: "google/gemma-4-E4B-it",
    "kcirtapfromspace/cliniq-gemma4-e2b-unsloth-v62": "unsloth/gemma-4-E2B-it",
    "fulvian/gemma-4-e2b-medical-qlora-adapter": "google/gemma-4-E2B-it",
    "albertoanalytics/pediatric-support-g4": "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit",
    "saillab/medgemma-4b-full-lora-mimic-mt-12k": "google/medgemma-4b-it",
}
BASES = {
    "google/gemma-4-E2B-it",
    "google/gemma-4-E4B-it",
    "google/medgemma-4b-it",
    "unsloth/gemma-4-E2B-it",
    "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit",
}


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "index" / "registry.sqlite", user_dir=tmp_path / "user")
    yield r
    r.close()


def _age(root: Path, seconds: float = 3600) -> None:
    """Backdate every manifest under root (files older than the racy window are trusted by stat)."""
    for p in root.rglob("*.toml"):
        st_ = p.stat()
        os.utime(p, ns=(st_.st_atime_ns, st_.st_mtime_ns - int(seconds * 1e9)))


# ---------------------------------------------------------------------------------------------------------
# shipped seeds
# ---------------------------------------------------------------------------------------------------------


def test_fresh_registry_lists_seeds_and_bases(reg: Registry) -> None:
    rep = reg.sync()
    assert rep.problems == [], [str(p) for p in rep.problems]
    rows = reg.list()
    assert {r.id: r.base for r in rows} == SEEDS
    assert {b.id for b in reg.list_bases()} == BASES
    assert reg.path.is_file() and str(reg.path).startswith(str(reg.user_dir.parent))
    clinical = next(r for r in rows if r.id == CLINICAL)
    assert (clinical.status, clinical.current, clinical.revisions, clinical.r, clinical.alpha) == (
        "verified",
        "fixed",
        2,
        16,
        16,
    )
    assert [r.id for r in reg.list(status="verified")] == [CLINICAL]
    assert [r.id for r in reg.list(base="GOOGLE/gemma-4-e4b-it")] == [CLINICAL]
    related = {r.id for r in reg.list(base="google/gemma-4-E4B-it", related=True)}
    assert related == {CLINICAL, "albertoanalytics/pediatric-support-g4"}
    with pytest.raises(BadInputError, match="unknown status"):
        reg.list(status="fine")


def test_shipped_facts_and_unknowns(reg: Registry) -> None:
    m = reg.show(CLINICAL.upper())
    assert isinstance(m, AdapterManifest)
    old, fixed = m.revision("old"), m.revision("fixed")
    assert (old.tensors, fixed.tensors) == (884, 588)
    assert {t.tower: t.tensors for t in old.targets} == {"language": 588, "audio": 72, "vision": 224}
    assert [t.tower for t in fixed.targets] == ["language"]
    assert fixed.peft.exclude_modules == r".*\.(audio_tower|vision_tower)\..*"
    assert (old.revision, fixed.revision, m.base.revision) == (UNKNOWN, UNKNOWN, UNKNOWN)
    assert old.key_fingerprint == UNKNOWN
    step = m.lineage[0]
    assert (step.source, step.passes, step.output, step.dropped) == (
        "old",
        ["drop-tower-loras", "exclude-towers"],
        "fixed",
        296,
    )
    cliniq = reg.show("kcirtapfromspace/cliniq-gemma4-e2b-unsloth-v62")
    assert isinstance(cliniq, AdapterManifest)
    rev = cliniq.current_revision
    assert (rev.peft.r, rev.peft.alpha, rev.peft.dropout) == (16, 16, 0)
    assert len(rev.peft.target_modules) == 7
    assert [(a.kind, a.sha256) for a in rev.artifacts] == [("gguf-lora", UNKNOWN)]
    fulvian = reg.show("fulvian/gemma-4-e2b-medical-qlora-adapter")
    assert fulvian.current_revision.peft.peft_version == "0.18.1"
    ped = reg.show("albertoanalytics/pediatric-support-g4").current_revision.peft
    assert (ped.r, ped.alpha, ped.dropout) == (16, 32, 0.05)
    med = reg.show("saillab/medgemma-4b-full-lora-mimic-mt-12k")
    assert med.architecture == "Gemma3ForConditionalGeneration"
    assert med.current_revision.targets[0].layers == "0-33"
    # every sha in the shipped manifests is "unknown": none was invented
    for p in (manifests_dir() / "adapters").glob("*.toml"):
        doc = load_manifest(p)
        for r in doc.revisions:
            assert r.revision == UNKNOWN and r.key_fingerprint == UNKNOWN


def test_shipped_base_manifests_match_profiles_and_repacks(reg: Registry) -> None:
    from loradoc.model.repacks import lookup_repack

    for d in sorted((manifests_dir() / "bases").iterdir()):
        m = load_manifest(d / "manifest.toml")
        assert isinstance(m, BaseManifest)
        assert d.name == m.id.replace("/", "--")
        for f in m.files.values():
            assert (d / f).is_file()
        if (d / "profile.json").is_file():
            prof = json.loads((d / "profile.json").read_text())
            s = m.profile
            assert (s.architecture, s.model_type, s.num_layers, s.config_sha256, s.transformers_version) == (
                prof["architecture"],
                prof["model_type"],
                prof["num_layers"],
                prof["config_sha256"],
                prof["transformers_version"],
            )
            assert s.kv_shared_layers == prof["kv_shared_layers"]
            towers = prof["towers"]  # format 3: root prefix -> kind; the manifest lists the kinds
            assert s.towers == sorted(set(towers.values()) if isinstance(towers, dict) else towers)
            prov = tomllib.loads((d / "provenance.toml").read_text())
            assert m.provenance.source_kind == prov["source_kind"]
        for rel in m.relations:
            rp = lookup_repack(m.id)
            assert rp is not None and rp.original == rel.of and rp.relation == rel.kind
            assert rp.quantization == rel.quantization


def test_compat_seed_facts(reg: Registry) -> None:
    # done-criterion: the OLD clinical snapshot is broken on peft 0.19 (with any transformers)
    for tf in ("5.7.0", None):
        old = reg.compat(f"{CLINICAL}@old", peft="0.19.1", transformers=tf)
        assert old.loads_cleanly is False and old.verdict == "broken"
        assert any("known-broken for peft >=0.18" in r for r in old.reasons)
        assert old.evidence[0].source.startswith("public history")
    assert reg.compat(CLINICAL.lower(), peft="0.19.0", revision="old").loads_cleanly is False
    fixed = reg.compat(CLINICAL, peft="0.19.1", transformers="5.7.0")
    assert (fixed.revision, fixed.loads_cleanly) == ("fixed", True)
    assert fixed.evidence[0].torch == "==2.8.0"
    # exclude_modules needs peft >= 0.14
    too_old = reg.compat(CLINICAL, peft="0.13.2", transformers="5.7.0")
    assert too_old.loads_cleanly is False and too_old.requires_peft == ">=0.14.0"
    assert any("needs peft >=0.14.0" in r for r in too_old.reasons)
    # not covered: unknown, with the nearest verified range as a hint
    unk = reg.compat(CLINICAL, peft="0.21.2", transformers="5.23.0")
    assert unk.loads_cleanly is None and unk.verdict == "unknown"
    assert "peft ==0.19.1, transformers ==5.7.0" in (unk.hint or "")
    before = reg.compat(f"{CLINICAL}@old", peft="0.17.1", transformers="5.5.0")
    assert before.loads_cleanly is None and "revision 'fixed'" in (before.hint or "")
    # the 4-bit repack base
    ped = reg.compat("albertoanalytics/pediatric-support-g4", peft="0.21.2", transformers="5.23.0")
    assert ped.base_relation is not None and ped.base_relation.kind == "bnb-4bit-repack"
    assert ped.base_relation.of == "google/gemma-4-E4B-it"
    assert any("4-bit repack" in r and "bf16 original is google/gemma-4-E4B-it" in r for r in ped.reasons)
    assert ped.to_json()["base_relation"]["of"] == "google/gemma-4-E4B-it"
    cliniq = reg.compat("kcirtapfromspace/cliniq-gemma4-e2b-unsloth-v62", peft="0.21.2", transformers="5.23.0")
    assert cliniq.base_relation is not None and cliniq.base_relation.kind == "mirror"
    json.dumps(ped.to_json())
    with pytest.raises(BadInputError, match="not a version"):
        reg.compat(CLINICAL, peft="nineteen")
    with pytest.raises(BadInputError, match="no revision"):
        reg.compat(CLINICAL, revision="newest")
    with pytest.raises(BadInputError, match="is a base"):
        reg.compat("google/gemma-4-E4B-it")
    with pytest.raises(BadInputError, match="not in the registry"):
        reg.show("nobody/nothing")


def test_known_broken_wins_over_verified_clean(reg: Registry) -> None:
    m = AdapterManifest(
        id="t/overlap",
        repo_id="t/overlap",
        base=BaseRef("google/gemma-4-E2B-it"),
        current="a",
        revisions=[
            Revision(
                "a",
                peft=PeftInfo(type="LORA"),
                compat=[
                    CompatEntry("verified-clean", peft=">=0.17,<0.20", evidence="ran fine"),
                    CompatEntry("known-broken", peft="==0.19.0", transformers=">=5.6", evidence="regression X"),
                ],
            )
        ],
    )
    reg.update(m.id, lambda _m: None, create=lambda: m)
    a = reg.compat("t/overlap", peft="0.19.0", transformers="5.7.0")
    assert a.loads_cleanly is False
    assert any("known-broken wins" in r for r in a.reasons)
    assert reg.compat("t/overlap", peft="0.19.0", transformers="5.5.0").loads_cleanly is True
    assert reg.compat("t/overlap", peft="0.18.1", transformers="5.7.0").loads_cleanly is True
    assert reg.compat("t/overlap", peft="0.20.0", transformers="5.7.0").loads_cleanly is None


# ---------------------------------------------------------------------------------------------------------
# malformed manifests, incremental sync, overrides
# ---------------------------------------------------------------------------------------------------------

_GOOD = """schema = 1
kind = "adapter"
id = "t/good"

[base]
id = "google/gemma-4-E2B-it"

[[revisions]]
label = "one"
"""

_BAD_TOML = """schema = 1
kind = "adapter"
id = "t/bad-toml"
current =
"""

_BAD_SCHEMA = """schema = 1
kind = "adapter"
id = "t/bad-schema"

[base]
id = "google/gemma-4-E2B-it"
revision = "abc"

[[revisions]]
label = "one"
status = "verified"

[[revisions.compat]]
verdict = "verified-clean"
peft = "==0.19.1"

[[revisions.compat]]
verdict = "maybe"
peft = "==0.19.1"
"""


def test_malformed_manifests_name_file_and_line(reg: Registry) -> None:
    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    (ad / "t--good.toml").write_text(_GOOD)
    (ad / "t--bad-toml.toml").write_text(_BAD_TOML)
    (ad / "t--bad-schema.toml").write_text(_BAD_SCHEMA)
    rep = reg.sync()
    by_file: dict[str, list] = {}
    for p in rep.problems:
        by_file.setdefault(Path(p.path).name, []).append(p)
    assert set(by_file) == {"t--bad-toml.toml", "t--bad-schema.toml"}
    (toml_p,) = by_file["t--bad-toml.toml"]
    assert toml_p.line == 4 and "invalid TOML" in toml_p.message
    assert str(toml_p).startswith(str(ad / "t--bad-toml.toml") + ":4:")
    schema_ps = {p.key: p for p in by_file["t--bad-schema.toml"]}
    assert schema_ps["base.revision"].line == 7 and "not a commit sha" in schema_ps["base.revision"].message
    assert schema_ps["revisions[0].compat[1].verdict"].line == 18
    # everything else still loads
    ids = {r.id for r in reg.list()}
    assert "t/good" in ids and set(SEEDS) <= ids and "t/bad-schema" not in ids
    # an unchanged bad file is reported again (not re-read)
    again = reg.sync()
    assert {Path(p.path).name for p in again.problems} == {"t--bad-toml.toml", "t--bad-schema.toml"}
    # load_manifest raises with file:line
    with pytest.raises(MalformedConfigError, match=r"t--bad-schema\.toml:7: base\.revision"):
        load_manifest(ad / "t--bad-schema.toml")


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"kind": "adapter"}, "schema"),
        (
            {
                "schema": 1,
                "kind": "adapter",
                "id": "a/b",
                "base": {"id": "x"},
                "revisions": [{"label": "a"}],
                "colour": "red",
            },
            "colour",
        ),
        ({"schema": 9, "kind": "base", "id": "a/b"}, "schema"),
        (
            {
                "schema": 1,
                "kind": "adapter",
                "id": "a/b",
                "base": {"id": "x"},
                "revisions": [{"label": "a"}, {"label": "A"}],
                "current": "a",
            },
            "revisions[1].label",
        ),
        (
            {
                "schema": 1,
                "kind": "adapter",
                "id": "a/b",
                "base": {"id": "x"},
                "revisions": [{"label": "a", "compat": [{"verdict": "known-broken", "peft": ">=>0.1"}]}],
            },
            "revisions[0].compat[0].peft",
        ),
        (
            {
                "schema": 1,
                "kind": "adapter",
                "id": "a/b",
                "base": {"id": "x"},
                "revisions": [{"label": "a", "peft": {"r": "sixteen"}}],
            },
            "revisions[0].peft.r",
        ),
        (
            {
                "schema": 1,
                "kind": "adapter",
                "id": "a/b",
                "base": {"id": "x"},
                "revisions": [{"label": "a"}],
                "lineage": [{"from": "a", "to": "b", "passes": []}],
            },
            "lineage[0].to",
        ),
    ],
)
def test_schema_errors_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(SchemaError) as ei:
        parse_manifest(doc)
    assert key in {format_path(i.path) for i in ei.value.issues}


def test_incremental_sync(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(manifests_dir() / "adapters", shipped / "adapters")
    shutil.copytree(manifests_dir() / "bases", shipped / "bases")
    _age(shipped)
    reg = Registry(tmp_path / "r.sqlite", [shipped], user_dir=tmp_path / "user")
    first = reg.sync()
    assert len(first.added) == 10 and len(first.read) == 10 and not first.problems
    second = reg.sync()
    assert (second.read, second.added, second.updated, second.removed) == ([], [], [], [])
    assert len(second.unchanged) == 10
    # touch one file: only it is re-read (hashed); same bytes -> not re-parsed, not "updated"
    one = shipped / "adapters" / "fulvian--gemma-4-e2b-medical-qlora-adapter.toml"
    os.utime(one, None)
    third = reg.sync()
    assert third.read == [str(one.resolve())] and third.updated == []
    # change it: updated and re-indexed
    one.write_text(one.read_text().replace('status = "unknown"', 'status = "healthy"'))
    fourth = reg.sync()
    assert fourth.updated == [str(one.resolve())]
    assert [r.id for r in reg.list(status="healthy")] == ["fulvian/gemma-4-e2b-medical-qlora-adapter"]
    # remove one, add one
    (shipped / "adapters" / "saillab--medgemma-4b-full-lora-mimic-mt-12k.toml").unlink()
    (shipped / "adapters" / "t--good.toml").write_text(_GOOD)
    fifth = reg.sync()
    assert [Path(p).name for p in fifth.removed] == ["saillab--medgemma-4b-full-lora-mimic-mt-12k.toml"]
    assert [Path(p).name for p in fifth.added] == ["t--good.toml"]
    assert "saillab/medgemma-4b-full-lora-mimic-mt-12k" not in {r.id for r in reg.list()}
    # a second Registry on the same index sees the same state without re-reading anything old
    _age(shipped)
    reg.sync()
    other = Registry(tmp_path / "r.sqlite", [shipped], user_dir=tmp_path / "user")
    assert other.sync().read == []
    assert {r.id for r in other.list()} == {r.id for r in reg.list()}
    # racy files (modified just now) are re-hashed next time, never trusted by stat alone
    assert RACY_NS > 0
    reg.close()
    other.close()


def test_user_manifest_overrides_shipped_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADOC_REGISTRY", str(tmp_path / "env.sqlite"))
    monkeypatch.setenv("LORADOC_MANIFESTS", str(tmp_path / "envuser"))
    reg = Registry()
    assert reg.path == tmp_path / "env.sqlite" and reg.user_dir == tmp_path / "envuser"
    monkeypatch.delenv("LORADOC_MANIFESTS")
    assert Registry(tmp_path / "elsewhere" / "r.sqlite").user_dir == tmp_path / "elsewhere" / "manifests"
    from loradoc.registry import default_registry_path, default_user_dir

    monkeypatch.delenv("LORADOC_REGISTRY")
    assert default_registry_path().name == "registry.sqlite"  # platformdirs; nothing is created
    assert default_user_dir() == default_registry_path().parent / "manifests"
    monkeypatch.setenv("LORADOC_MANIFESTS", str(tmp_path / "envuser"))
    src = manifests_dir() / "adapters" / "fulvian--gemma-4-e2b-medical-qlora-adapter.toml"
    dst = reg.user_dir / "adapters" / src.name
    dst.parent.mkdir(parents=True)
    dst.write_text(src.read_text().replace('status = "unknown"', 'status = "broken"'))
    reg.sync()
    row = next(r for r in reg.list() if r.id.startswith("fulvian/"))
    assert row.status == "broken" and row.file == str(dst.resolve())
    assert len(reg.list()) == 5
    dst.unlink()
    reg.sync()
    row = next(r for r in reg.list() if r.id.startswith("fulvian/"))
    assert row.status == "unknown" and row.file == str(src.resolve())
    reg.close()


def test_import_is_light() -> None:
    code = (
        "import sys, loradoc.registry, loradoc.registry.store, loradoc.registry.compat;"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'textual', 'click', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------------------
# recording: real doctor, real repair, certificate, artifact, hub push
# ---------------------------------------------------------------------------------------------------------


def test_record_real_doctor_and_repair(example_root: ExampleSet, reg: Registry, tmp_path: Path) -> None:
    import hashlib

    from loradoc.diagnose.doctor import diagnose
    from loradoc.io.snapshot import open_snapshot
    from loradoc.model.profiles import get_profile, installed_version, resolve_base
    from loradoc.repair.apply import apply_plan
    from loradoc.repair.passes import build_plan

    adapter = example_root.adapters["seed-clinical-endpoint-extractor"]
    base = example_root.bases["tiny-gemma4-e4b"]
    shipped = manifests_dir() / "adapters" / f"{CLINICAL.replace('/', '--')}.toml"
    shipped_bytes = shipped.read_bytes()

    diag = diagnose(str(adapter), str(base))  # real peft dry load
    assert diag.verdict == "repairable"
    path = reg.add_from_diagnosis(diag, repo_id=CLINICAL, label="tiny-replica")
    assert path == (reg.user_dir / "adapters" / shipped.name).resolve()
    m = reg.show(CLINICAL)
    assert isinstance(m, AdapterManifest)
    assert [r.label for r in m.revisions] == ["old", "fixed", "tiny-replica"] and m.current == "tiny-replica"
    rev = m.revision("tiny-replica")
    assert rev.key_fingerprint == fingerprint_safetensors(adapter / "adapter_model.safetensors")
    assert rev.tensors == len(diag.snapshot.tensors)
    assert [(f.code, f.severity, f.count, f.message, f.tower) for f in rev.findings] == [
        (f.code, f.severity, f.count, f.message, f.tower) for f in diag.findings
    ]
    assert rev.status == "repairable" and rev.path == str(adapter.resolve())
    assert rev.diagnosis is not None and rev.diagnosis.mode == "full"
    assert rev.diagnosis.missing == diag.peft.missing and rev.diagnosis.error == diag.peft.error
    assert {t.tower for t in rev.targets} == {"language", "audio", "vision"}
    assert sum(t.tensors for t in rev.targets) == rev.tensors
    assert rev.peft.requires == ">=0.2.0" or rev.peft.requires.startswith(">=")
    assert shipped.read_bytes() == shipped_bytes  # shipped manifests are never written
    assert load_manifest(path) == m  # TOML == SQLite
    # this run's versions are now known-broken for this revision
    ans = reg.compat(f"{CLINICAL}@tiny-replica")
    assert ans.loads_cleanly is False and ans.peft == installed_version("peft")
    assert ans.evidence[0].source.startswith("loradoc doctor")
    assert reg.locate(str(adapter))[1] == "tiny-replica"
    # the old/fixed facts are still answered from the user copy
    assert reg.compat(f"{CLINICAL}@old", peft="0.19.1").loads_cleanly is False

    # a real repair, recorded as lineage
    snap = open_snapshot(str(adapter))
    src = resolve_base(str(base))
    res = apply_plan(build_plan(snap, get_profile(src)), tmp_path / "repaired", src)
    assert res.verdict == "healthy"
    reg.record_repair(res.report, res.out, adapter_id=CLINICAL.lower(), label="tiny-fixed")
    m = reg.show(str(res.out))
    assert m.id == CLINICAL and m.current == "tiny-fixed"
    out = m.revision("tiny-fixed")
    assert out.status == "repaired" and out.path == str(res.out.resolve())
    assert out.key_fingerprint == fingerprint_safetensors(res.out / "adapter_model.safetensors")
    step = m.lineage[-1]
    assert (step.source, step.output, step.passes) == ("tiny-replica", "tiny-fixed", res.report["passes"])
    assert step.dropped == len(res.report["dropped"]) and step.renamed == len(res.report["renamed"])
    assert step.report == str(res.out.resolve() / "loradoc-repair.json")
    assert [c.field for c in step.config_changes] == [c["field"] for c in res.report["config_changes"]]
    assert out.peft.exclude_modules == res.report["config_changes"][0]["new"] or any(
        c.field == "exclude_modules" for c in step.config_changes
    )
    assert m.revision("tiny-replica").status == "repairable"
    fixed_now = reg.compat(str(res.out))
    assert fixed_now.revision == "tiny-fixed" and fixed_now.loads_cleanly is True

    # a certificate (the shape check_load writes), found by the adapter path it names
    cert = {
        "format": 1,
        "tool": "loradoc 0.1.0",
        "created": "2026-01-02T03:04:05+00:00",
        "adapter": {"path": str(res.out), "repo_id": None, "commit": None, "files": {}},
        "versions": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "transformers": "5.23.0",
            "peft": "0.21.2",
            "safetensors": None,
        },
        "device": {"type": "cpu", "name": "x86_64", "dtype": "float32"},
        "checks": [
            {"name": "peft-load", "passed": True, "figures": {"error": None, "warnings": 0}},
            {"name": "bit-exact", "passed": True, "figures": {"compared": 84, "identical": 84, "different": []}},
        ],
        "passed": True,
        "warnings": [],
    }
    cert_file = tmp_path / "cert.json"
    cert_file.write_text(json.dumps(cert))
    reg.record_certificate(cert, path=cert_file)
    out = reg.show(CLINICAL).revision("tiny-fixed")
    (c,) = out.certificates
    assert c.passed and c.versions == {
        "python": "3.11.7",
        "torch": "2.13.0",
        "transformers": "5.23.0",
        "peft": "0.21.2",
    }
    assert c.checks[0].figures == {"warnings": 0} and c.checks[1].figures["different"] == []
    assert c.sha256 == hashlib.sha256(cert_file.read_bytes()).hexdigest()
    assert out.status == "verified"
    v = reg.compat(CLINICAL, peft="0.21.2", transformers="5.23.0")
    assert v.loads_cleanly is True and any(e.torch == "==2.13.0" for e in v.evidence)

    # artifacts and a hub push
    gguf = tmp_path / "adapter.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    reg.record_artifact(CLINICAL, kind="gguf-lora", path=gguf, format="GGUF F16", tool="loradoc convert")
    reg.record_hub_revision(CLINICAL, commit="ab" * 20, pr=7, tag="loradoc-fixed")
    m = reg.show(f"{CLINICAL}@abababab")
    out = m.revision("tiny-fixed")
    assert out.revision == "ab" * 20
    assert out.artifacts[0].sha256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert out.artifacts[0].size_bytes == 104
    assert (out.hub[0].commit, out.hub[0].pr, out.hub[0].tag) == ("ab" * 20, 7, "loradoc-fixed")
    assert reg.count_records(CLINICAL, "certificate") == 1 and reg.count_records(CLINICAL, "lineage") == 2
    with pytest.raises(BadInputError, match="artifact kind"):
        reg.record_artifact(CLINICAL, kind="zip", path=gguf)
    # what was written is what the index holds, and a fresh index built from the files agrees
    assert load_manifest(path) == reg.show(CLINICAL)
    fresh = Registry(tmp_path / "fresh.sqlite", user_dir=reg.user_dir)
    assert fresh.show(CLINICAL) == reg.show(CLINICAL)
    fresh.close()


def test_record_local_adapter_without_repo_id(example_root: ExampleSet, reg: Registry) -> None:
    from loradoc.diagnose.doctor import diagnose

    adapter = example_root.adapters["healthy-gemma4-e4b"]
    diag = diagnose(str(adapter), str(example_root.bases["tiny-gemma4-e4b"]), fast=True)
    path = reg.add_from_diagnosis(diag)
    assert path.name.startswith("local--healthy-gemma4-e4b--")
    m = reg.show(str(adapter))
    assert isinstance(m, AdapterManifest) and m.id == str(adapter.resolve()) and m.repo_id is None
    rev = m.current_revision
    assert rev.status == "healthy" and rev.diagnosis is not None and rev.diagnosis.mode == "static"
    assert rev.compat == []  # a static (--fast) prediction is not compat evidence
    assert str(adapter.resolve()) in {r.id for r in reg.list(status="healthy")}
    # recording the same directory again updates the same revision
    reg.add_from_diagnosis(diag)
    assert len(reg.show(str(adapter)).revisions) == 1


# ---------------------------------------------------------------------------------------------------------
# property: manifests and recordings round-trip through TOML and SQLite without loss
# ---------------------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
_name = st.builds(lambda a, b: a + b, st.sampled_from("abcxyz"), st.text("abcdefz019_-", max_size=10))
_label = st.builds(lambda a, b: a + b, st.sampled_from("aZ09"), st.text("aAbB19._-", max_size=10))
_sha = st.binary(min_size=20, max_size=20).map(bytes.hex) | st.just(UNKNOWN)
_sha256 = st.binary(min_size=32, max_size=32).map(bytes.hex) | st.just(UNKNOWN)
_ver = st.tuples(*(st.integers(0, 40),) * 3).map(lambda t: ".".join(map(str, t)))
_spec = st.builds(lambda op, v: f"{op}{v}", st.sampled_from(["==", ">=", "<", "~=", "!=", "<="]), _ver)
_count = st.integers(0, 10**6) | st.just(UNKNOWN)
_scalar = st.one_of(
    st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), _text
)
_free = st.recursive(
    _scalar, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(_text, ch, max_size=3), max_leaves=8
)
_free_table = st.dictionaries(_text, _free, max_size=4)
_maybe = lambda s: st.none() | s  # noqa: E731
_layers = st.lists(st.integers(0, 60), min_size=1, max_size=6).map(R._ranges) | st.just(UNKNOWN)
_mods = st.lists(_name, max_size=4) | st.just(UNKNOWN)

_peft = st.builds(
    PeftInfo,
    type=st.sampled_from(["LORA", "ADALORA", UNKNOWN]),
    method=st.sampled_from(["lora", "qlora", UNKNOWN]),
    r=st.integers(1, 512) | st.just(UNKNOWN),
    alpha=st.integers(1, 512) | st.floats(0.5, 512) | st.just(UNKNOWN),
    dropout=st.floats(0, 1) | st.just(0) | st.just(UNKNOWN),
    target_modules=st.lists(_name, max_size=7) | _text,
    exclude_modules=st.lists(_name, max_size=3) | _text,
    peft_version=_ver | st.just(UNKNOWN),
    requires=_spec | st.just(UNKNOWN),
)
_finding = st.builds(
    FindingRecord,
    code=_name,
    severity=st.sampled_from(["error", "warning", "info"]),
    count=_count,
    message=_text,
    repair=_maybe(_name),
    tower=_maybe(st.sampled_from(["audio", "vision"])),
)
_compat = st.builds(
    CompatEntry,
    verdict=st.sampled_from(["verified-clean", "known-broken"]),
    peft=_spec,
    transformers=_maybe(_spec),
    torch=_maybe(_spec),
    evidence=_text,
    source=_text,
    recorded=_text,
)
_cert = st.builds(
    CertificateRecord,
    created=_text.filter(lambda s: s.strip() != ""),
    passed=st.booleans(),
    tool=_text,
    versions=st.dictionaries(_name, _ver, max_size=4),
    device=_free_table,
    checks=st.lists(st.builds(CheckResult, name=_name, passed=st.booleans(), figures=_free_table), max_size=3),
    path=_maybe(_text),
    sha256=_maybe(_text),
)
_artifact = st.builds(
    Artifact,
    kind=st.sampled_from(["merged", "gguf", "gguf-lora", "other"]),
    path=_text.filter(lambda s: s.strip() != ""),
    sha256=_sha256,
    size_bytes=_maybe(st.integers(0, 2**50)),
    format=_maybe(_text),
    tool=_maybe(_text),
    created=_text,
    notes=_maybe(_text),
)
_hub = st.builds(
    HubPush,
    repo_id=_name.map(lambda n: f"org/{n}"),
    commit=_sha,
    pr=_maybe(st.integers(1, 10**6)),
    tag=_maybe(_text),
    created=_text,
)
_diagrec = st.builds(
    DiagnosisRecord,
    mode=st.sampled_from(["full", "static"]),
    verdict=st.sampled_from(["healthy", "repairable", "broken"]),
    created=_text,
    loaded=_maybe(st.integers(0, 10**5)),
    missing=_maybe(st.integers(0, 10**5)),
    unexpected=_maybe(st.integers(0, 10**5)),
    error=_maybe(_text),
    versions=st.dictionaries(_name, _ver, max_size=3),
    base=_maybe(_text),
)


_runtime = st.builds(
    RuntimeRecord,
    runtime=st.sampled_from(["vllm", "sglang", "llama_cpp", "mlx_lm"]),
    verdict=st.sampled_from(["loads", "loads-with-flags", "refused", "unknown"]),
    version=_text,
    flags=st.lists(_text, max_size=2),
    reason=_maybe(_text),
    fix=_maybe(_text),
    rules=st.lists(_name, max_size=2),
    base=_maybe(_text),
    checked=_text,
)


@st.composite
def _manifests(draw: st.DrawFn) -> AdapterManifest:
    labels = draw(st.lists(_label, min_size=1, max_size=2, unique_by=str.lower))
    revs = [
        Revision(
            label=lab,
            revision=draw(_sha),
            path=draw(_maybe(_text)),
            status=draw(st.sampled_from(["healthy", "repairable", "broken", "repaired", "verified", UNKNOWN])),
            key_fingerprint=draw(
                st.just(UNKNOWN) | st.lists(_name).map(lambda ks: key_fingerprint({k: [1] for k in ks}))
            ),
            tensors=draw(_count),
            base=draw(_maybe(st.builds(BaseRef, id=_name.map(lambda n: f"b/{n}"), revision=_sha))),
            notes=draw(_maybe(_text)),
            peft=draw(_peft),
            targets=draw(
                st.lists(
                    st.builds(
                        TargetSummary,
                        tower=st.sampled_from(["language", "vision", "audio", "projector", UNKNOWN]),
                        modules=_mods,
                        layers=_layers,
                        tensors=_count,
                    ),
                    max_size=3,
                )
            ),
            findings=draw(st.lists(_finding, max_size=3)),
            compat=draw(st.lists(_compat, max_size=2)),
            diagnosis=draw(_maybe(_diagrec)),
            certificates=draw(st.lists(_cert, max_size=1)),
            artifacts=draw(st.lists(_artifact, max_size=1)),
            hub=draw(st.lists(_hub, max_size=1)),
            runtimes=draw(st.lists(_runtime, max_size=2, unique_by=lambda r: r.runtime)),
        )
        for lab in labels
    ]
    lineage = [
        LineageStep(
            source=draw(st.sampled_from(labels)),
            passes=draw(st.lists(_name, max_size=3)),
            output=draw(st.sampled_from(labels)),
            path=draw(_text),
            created=draw(_text),
            tool=draw(_text),
            dropped=draw(_count),
            renamed=draw(_count),
            config_changes=draw(
                st.lists(
                    st.builds(
                        ConfigChange,
                        field=_name,
                        old=_maybe(_free),
                        new=_maybe(_free),
                        pass_name=_maybe(_name),
                        reason=_maybe(_text),
                    ),
                    max_size=3,
                )
            ),
            notes=draw(_maybe(_text)),
            report=draw(_maybe(_text)),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    for step in lineage:
        for c in step.config_changes:
            c.old, c.new = clean_free(c.old), clean_free(c.new)
    for rev in revs:
        for cert in rev.certificates:
            cert.device = clean_free(cert.device)
    name = draw(_name)
    return AdapterManifest(
        id=f"prop/{name}",
        repo_id=f"prop/{name}",
        base=BaseRef(draw(_name.map(lambda n: f"b/{n}")), draw(_sha)),
        revisions=revs,
        current=draw(st.sampled_from(labels)),
        architecture=draw(_text),
        description=draw(_maybe(_text)),
        notes=draw(_maybe(_text)),
        lineage=lineage,
    )


@pytest.fixture(scope="module")
def prop_reg(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("prop")
    r = Registry(root / "r.sqlite", [], user_dir=root / "user")
    yield r
    r.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_manifests())
def test_manifest_roundtrip_toml_and_sqlite(prop_reg: Registry, m: AdapterManifest) -> None:
    text = manifest_to_toml(m)
    doc = tomllib.loads(text)
    assert parse_manifest(doc) == m
    path = prop_reg.put(m)
    assert load_manifest(path) == m
    assert prop_reg.show(m.id) == m
    assert prop_reg.show(m.id).to_json() == json.loads(json.dumps(m.to_json()))


_finding_json = st.fixed_dictionaries(
    {
        "code": _name,
        "severity": st.sampled_from(["error", "warning", "info"]),
        "count": st.integers(0, 10**5),
        "message": _text,
        "repair": _maybe(_name),
    },
    optional={"tower": st.sampled_from(["audio", "vision"])},
)
_check_json = st.fixed_dictionaries(
    {"name": _name, "passed": st.booleans(), "figures": st.dictionaries(_text, _maybe(_free), max_size=4)}
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    findings=st.lists(_finding_json, max_size=5),
    before=st.lists(_finding_json, max_size=3),
    passes=st.lists(_name, max_size=3),
    changes=st.lists(
        st.fixed_dictionaries(
            {"field": _name, "old": _maybe(_free), "new": _maybe(_free), "pass": _name, "reason": _text}
        ),
        max_size=3,
    ),
    kept=st.dictionaries(_name, st.lists(st.integers(1, 4096), min_size=1, max_size=2), min_size=1, max_size=5),
    checks=st.lists(_check_json, max_size=4),
    versions=st.tuples(_ver, _ver, _ver),
    verdict=st.sampled_from(["healthy", "repairable", "broken"]),
    healthy=st.booleans(),
)
def test_recordings_roundtrip(
    prop_reg: Registry,
    tmp_path_factory: pytest.TempPathFactory,
    findings: list,
    before: list,
    passes: list,
    changes: list,
    kept: dict,
    checks: list,
    versions: tuple,
    verdict: str,
    healthy: bool,
) -> None:
    import uuid

    tag = uuid.uuid4().hex[:10]
    ident = f"rec/{tag}"
    src_dir, out_dir = str(prop_reg.user_dir / "adapters-src" / tag), str(prop_reg.user_dir / "out" / tag)
    peft_v, tf_v, torch_v = versions
    diag = {
        "verdict": verdict,
        "findings": findings,
        "mode": "full",
        "peft": {"loaded": 3, "missing": 1, "unexpected": 0, "error": None},
        "adapter": {
            "path": src_dir,
            "repo_id": None,
            "commit": None,
            "tensors": 9,
            "peft_type": "LORA",
            "base_model": "google/gemma-4-E2B-it",
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["q_proj"],
            "exclude_modules": None,
        },
        "base": {"name": "google/gemma-4-E2B-it", "architecture": "Gemma4ForConditionalGeneration"},
        "versions": {"peft": peft_v, "transformers": tf_v, "torch": torch_v},
    }
    prop_reg.add_from_diagnosis(diag, repo_id=ident)
    report = {
        "tool": "loradoc 0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "source": {"path": src_dir, "repo_id": ident, "commit": None},
        "base": {"name": "google/gemma-4-E2B-it", "architecture": "Gemma4ForConditionalGeneration"},
        "versions": {"peft": peft_v, "transformers": tf_v},
        "passes": passes,
        "config_changes": changes,
        "dropped": [{"key": f"d{i}"} for i in range(len(passes))],
        "renamed": [],
        "kept": [{"key": k, "shape": s} for k, s in kept.items()],
        "findings_before": before,
        "verification": {
            "mode": "full",
            "verdict": "healthy" if healthy else "broken",
            "peft": {"loaded": len(kept), "missing": 0, "unexpected": 0},
            "findings": [],
        },
        "healthy": healthy,
    }
    prop_reg.record_repair(report, out_dir)
    cert = {
        "created": "2026-01-03T00:00:00+00:00",
        "tool": "loradoc 0.1.0",
        "passed": all(c["passed"] for c in checks),
        "adapter": {"path": out_dir},
        "versions": {"peft": peft_v, "transformers": tf_v, "torch": torch_v},
        "device": {"type": "cpu", "name": None},
        "checks": checks,
    }
    prop_reg.record_certificate(cert)

    m = prop_reg.show(ident)
    assert isinstance(m, AdapterManifest)
    src, out = m.revisions
    want_findings = before or findings
    assert [f.to_dict() for f in src.findings] == [{k: v for k, v in f.items() if v is not None} for f in want_findings]
    assert src.diagnosis is not None and src.diagnosis.versions == diag["versions"]
    step = m.lineage[0]
    assert (step.source, step.output, step.passes, step.dropped) == (src.label, out.label, passes, len(passes))
    assert [c.to_dict() for c in step.config_changes] == [clean_free(c) for c in changes]
    assert out.key_fingerprint == key_fingerprint(kept) and out.tensors == len(kept)
    assert out.status == ("verified" if cert["passed"] else "broken")
    (c,) = out.certificates
    assert c.checks == [CheckResult(x["name"], x["passed"], clean_free(x["figures"])) for x in checks]
    assert c.device == {"type": "cpu"} and c.versions == cert["versions"]
    # the doctor's and the certificate's version ranges are both there
    doctor_entry = [e for e in src.compat if e.peft == f"=={peft_v}"]
    assert len(doctor_entry) == 1
    assert doctor_entry[0].verdict == ("verified-clean" if verdict == "healthy" else "known-broken")
    cert_entry = [e for e in out.compat if e.torch == f"=={torch_v}"]
    assert len(cert_entry) == 1 and cert_entry[0].verdict == ("verified-clean" if cert["passed"] else "known-broken")
    # TOML file == SQLite == normalized tables
    assert load_manifest(prop_reg.locate(ident)[2]) == m
    assert prop_reg.count_records(ident, "finding") == len(src.findings) + len(out.findings)
    assert prop_reg.count_records(ident, "certificate") == 1


def test_registry_path_that_is_not_sqlite(tmp_path: Path) -> None:
    bogus = tmp_path / "registry.sqlite"
    bogus.write_text("not a database, just text " * 100)
    with pytest.raises(BadInputError, match="not a loradoc registry index"):
        Registry(bogus, user_dir=tmp_path / "user").sync()


def test_index_is_a_cache(reg: Registry) -> None:
    reg.sync()
    before = [r.to_json() for r in reg.list()]
    reg.close()
    reg.path.unlink()
    again = Registry(reg.path, user_dir=reg.user_dir)
    assert [r.to_json() for r in again.list()] == before
    again.close()


def test_duplicate_ids_in_one_directory(reg: Registry) -> None:
    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    (ad / "t--good.toml").write_text(_GOOD)
    (ad / "t--good-copy.toml").write_text(_GOOD.replace('label = "one"', 'label = "two"'))
    rep = reg.sync()
    (dup,) = rep.problems
    assert Path(dup.path).name == "t--good.toml" and "duplicate id" in dup.message  # the first path wins
    assert reg.show("t/good").current == "two"
    assert [str(p) for p in reg.sync().problems] == [str(dup)]  # reported again while it lasts
    (ad / "t--good-copy.toml").unlink()
    assert reg.sync().problems == [] and reg.show("t/good").current == "one"


def test_keys_with_a_trailing_newline_are_quoted_in_toml() -> None:
    """Found by the hypothesis round-trip: ``$`` also matches before a final newline, so "0\\n" was written bare."""
    cert = CertificateRecord(created="now", passed=True, checks=[CheckResult("n", True, {"0\n": 1, "a b": 2})])
    m = AdapterManifest(
        id="t/keys", base=BaseRef("b/x"), revisions=[Revision("one", certificates=[cert])], current="one"
    )
    text = manifest_to_toml(m)
    assert tomllib.loads(text)["revisions"][0]["certificates"][0]["checks"][0]["figures"] == {"0\n": 1, "a b": 2}
    assert parse_manifest(tomllib.loads(text)) == m


def test_pathological_manifests_are_problems_and_the_others_still_load(reg: Registry) -> None:
    """A huge file, a deeply nested one and ids that would escape or break lines: each is one problem naming
    its file, read in bounded memory, and every good manifest is still listed and shown."""
    import resource

    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    (ad / "t--good.toml").write_text(_GOOD)
    with open(ad / "t--huge.toml", "wb") as fh:  # sparse: 2 GiB on paper, nothing on disk
        fh.truncate(2 * 2**30)
    (ad / "t--nested.toml").write_text(_GOOD + "\nnotes = " + "[" * 50_000 + "]" * 50_000 + "\n")
    (ad / "t--escape.toml").write_text(_GOOD.replace('id = "t/good"', 'id = "../../x"'))
    (ad / "t--newline.toml").write_text(_GOOD.replace('id = "t/good"', 'id = "t/good\\nx"'))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep = reg.sync()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    names = {Path(p.path).name: p.message for p in rep.problems}
    assert set(names) == {"t--huge.toml", "t--nested.toml", "t--escape.toml", "t--newline.toml"}, names
    assert "over the 4 MiB limit" in names["t--huge.toml"] and "nested too deeply" in names["t--nested.toml"]
    assert "neither a Hub repo id" in names["t--escape.toml"] and "neither a Hub repo id" in names["t--newline.toml"]
    assert grown_mb < 200
    assert reg.show("t/good").id == "t/good" and "t/good" in [r.id for r in reg.list()]
    with pytest.raises(MalformedConfigError, match="over the 4 MiB limit"):
        load_manifest(ad / "t--huge.toml")


# ---------------------------------------------------------------------------------------------------------
# validation (pydantic): every error, with its file:line; invalid TOML refused; rewrites keep the data
# ---------------------------------------------------------------------------------------------------------

_MANY_ERRORS = """schema = 1
kind = "adapter"
id = "t/many"
colour = "red"

[base]
id = "google/gemma-4-E2B-it"
revision = "abc"

[[revisions]]
label = "one"
status = "sleepy"
tensors = "many"

[[revisions.certificates]]
created = "2026-01-01"
passed = "yes"

[[revisions]]
label = "ONE"
"""


def _line(text: str, needle: str, nth: int = 0) -> int:
    """The 1-based line of the nth line of ``text`` that starts with ``needle`` (computed, not hard-coded)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle)]
    return hits[nth]


def test_every_schema_error_is_reported_with_its_file_and_line(reg: Registry) -> None:
    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    f = ad / "t--many.toml"
    f.write_text(_MANY_ERRORS)
    (ad / "t--good.toml").write_text(_GOOD)
    rep = reg.sync()
    got = {p.key: p for p in rep.problems if p.path == str(f.resolve())}
    want_lines = {
        "colour": _line(_MANY_ERRORS, "colour"),  # an unknown key
        "base.revision": _line(_MANY_ERRORS, "revision = "),  # a bad commit sha
        "revisions[0].status": _line(_MANY_ERRORS, "status"),  # not one of the statuses
        "revisions[0].tensors": _line(_MANY_ERRORS, "tensors"),  # a wrong type
        "revisions[0].certificates[0].passed": _line(_MANY_ERRORS, "passed"),  # a wrong type
        "revisions[1].label": _line(_MANY_ERRORS, "label", 1),  # a duplicate label (a check across fields)
        "current": None,  # two revisions and no current: no line of its own (the file's top)
    }
    assert set(got) == set(want_lines), [str(p) for p in rep.problems]
    for key, line in want_lines.items():
        if line is not None:
            assert got[key].line == line, str(got[key])
            assert str(got[key]).startswith(f"{f.resolve()}:{line}: {key}: "), str(got[key])
    assert "unknown key (allowed here:" in got["colour"].message and "revisions" in got["colour"].message
    assert 'must be an integer or "unknown", not a string' in got["revisions[0].tensors"].message
    assert "must be true or false, not a string" in got["revisions[0].certificates[0].passed"].message
    assert "'sleepy' is not one of healthy," in got["revisions[0].status"].message
    assert "duplicate label 'ONE'" in got["revisions[1].label"].message
    # the other manifests still load; load_manifest names the first problem and counts the others
    assert "t/good" in {r.id for r in reg.list()} and "t/many" not in {r.id for r in reg.list()}
    with pytest.raises(MalformedConfigError) as ei:
        load_manifest(f)
    first = check_manifest(f, f.read_bytes())[1][0]
    assert str(ei.value).startswith(str(first)) and f"(+{len(got) - 1} more)" in str(ei.value)
    assert "loradoc registry" in (ei.value.hint or "")


@pytest.mark.parametrize("value", ["[,]", "[1,,]", "[1 2]", "{ a = 1 b = 2 }"])
def test_invalid_toml_the_old_fast_reader_accepted_is_refused_with_its_line(reg: Registry, value: str) -> None:
    text = _GOOD + f"notes = {value}\n"
    with pytest.raises(tomllib.TOMLDecodeError) as real:  # the truth: Python's own TOML reader refuses it
        tomllib.loads(text)
    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    f = ad / "t--bad.toml"
    f.write_text(text)
    (p,) = [p for p in reg.sync().problems if p.path == str(f.resolve())]
    real_line = int(re.search(r"at line (\d+)", str(real.value)).group(1))  # tomllib's own (3.11: in the text)
    assert p.line == real_line == _line(text, "notes")
    assert str(p).startswith(f"{f.resolve()}:{p.line}: invalid TOML")
    with pytest.raises(MalformedConfigError, match=rf"t--bad\.toml:{p.line}: invalid TOML"):
        load_manifest(f)


def test_models_refuse_bad_values_when_built_in_python(reg: Registry) -> None:
    with pytest.raises(SchemaError) as ei:
        HubPush(repo_id="org/x", commit="not-a-sha", pr=0)
    assert {format_path(i.path) for i in ei.value.issues} == {"commit", "pr"}  # both, not just the first
    assert BaseRef("org/x") == BaseRef(id="org/x")  # positional fields, in their declared order
    reg.put(AdapterManifest(id="t/pr", base=BaseRef("b/x"), revisions=[Revision("one")], current="one"))
    before = (reg.user_dir / "adapters" / "t--pr.toml").read_bytes()
    with pytest.raises(LoradocError, match="refusing to write .*pr: must be >= 1") as ei2:
        reg.record_hub_revision("t/pr", commit="a" * 40, pr=0)
    assert "loradoc registry show" in (ei2.value.hint or "")
    assert (reg.user_dir / "adapters" / "t--pr.toml").read_bytes() == before  # nothing written


def test_a_rewrite_keeps_every_value_and_leaves_the_shipped_file_alone(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(manifests_dir(), shipped, ignore=shutil.ignore_patterns("*.json"))
    src = shipped / "adapters" / f"{CLINICAL.replace('/', '--')}.toml"
    shipped_bytes = src.read_bytes()
    reg = Registry(tmp_path / "r.sqlite", [shipped], user_dir=tmp_path / "user")
    before = reg.show(CLINICAL)
    assert isinstance(before, AdapterManifest)
    cert = {
        "created": "2026-03-01T00:00:00+00:00",
        "tool": "loradoc test",
        "passed": True,
        "versions": {"peft": "0.21.2", "transformers": "5.23.0"},
        "device": {"type": "cpu", "name": None},
        "checks": [{"name": "bit-exact", "passed": True, "figures": {"nested": {"a": [1, 2.5, "x"]}}}],
    }
    out = reg.record_certificate(cert, adapter_id=CLINICAL)
    assert src.read_bytes() == shipped_bytes  # the input is never modified: the user's copy is written
    assert out.parent.parent == (tmp_path / "user").resolve() or out.parent.parent == tmp_path / "user"
    text = out.read_text()
    assert text.startswith("# loradoc adapter manifest (schema 1); see loradoc/registry/SCHEMA.md\n")
    comments = [line for line in shipped_bytes.decode().splitlines() if line.startswith("#")]
    assert comments and all(c in text.splitlines() for c in comments)  # the shipped file's comments are kept
    after = load_manifest(out)
    assert isinstance(after, AdapterManifest)
    # every value of the shipped manifest is still there (revisions, lineage, unknowns spelled out) ...
    old_doc, new_doc = before.to_dict(), after.to_dict()
    assert {k: v for k, v in new_doc.items() if k != "revisions"} == {
        k: v for k, v in old_doc.items() if k != "revisions"
    }
    assert [r["label"] for r in new_doc["revisions"]] == [r["label"] for r in old_doc["revisions"]]
    cur = before.current
    for old_r, new_r in zip(old_doc["revisions"], new_doc["revisions"], strict=True):
        if old_r["label"] != cur:
            assert new_r == old_r
        else:  # ... and the current revision gained the certificate, its status and its compat range
            assert new_r["certificates"][-1]["checks"][0]["figures"] == {"nested": {"a": [1, 2.5, "x"]}}
            assert new_r["status"] == "verified"
            assert {k: v for k, v in new_r.items() if k not in ("certificates", "status", "compat")} == {
                k: v for k, v in old_r.items() if k not in ("certificates", "status", "compat")
            }
            assert old_r.get("compat", []) == new_r["compat"][: len(old_r.get("compat", []))]
    assert "unknown" in text  # unknown facts are written out, never dropped or guessed
    assert tomllib.loads(text) == after.to_dict()
    reg.close()


_HOLD_LOCK = r"""
import sys, time
from pathlib import Path
from loradoc.registry.writes import exclusive_lock

lock, held, release = map(Path, sys.argv[1:])
with exclusive_lock(lock, 30):
    held.touch()
    while not release.exists():
        time.sleep(0.01)
print("released")
"""


def test_the_write_lock_holds_across_two_processes(tmp_path: Path) -> None:
    from loradoc.errors import EnvironmentProblem
    from loradoc.registry.store import LOCK_NAME

    reg = Registry(tmp_path / "r.sqlite", [], user_dir=tmp_path / "user", busy_timeout=0.5)
    reg.put(AdapterManifest(id="t/lock", base=BaseRef("b/x"), revisions=[Revision("one")], current="one"))
    held, release = tmp_path / "held", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(reg.user_dir / LOCK_NAME), str(held), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.exists(), proc.communicate()[1][-2000:]
        with pytest.raises(EnvironmentProblem, match="stayed locked") as ei:  # the other process holds it
            reg.record_hub_revision("t/lock", commit="b" * 40, pr=1)
        assert "loradoc" in (ei.value.hint or "")
        assert reg.show("t/lock").current_revision.hub == []
    finally:
        release.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "released" in out, err[-2000:]
    reg.record_hub_revision("t/lock", commit="b" * 40, pr=1)  # free again: the write goes through
    assert [h.pr for h in reg.show("t/lock").current_revision.hub] == [1]
    reg.close()


@pytest.mark.parametrize(
    "bad",
    ["k = [,]\n", "k = [1,,]\n", "a = 1\nk = [1 2]\n", "a = 1\na = 2\n", 'a = 1\n\nk = "\\q"\n', "[t]\nx = 1\n[t]\n"],
)
def test_the_manifest_reader_is_tomllib_compiled(bad: str) -> None:
    """Manifests are read by tomli (the compiled build of the parser the standard library ships as tomllib; tomli
    2.5 reads TOML 1.1, as tomllib will from Python 3.15): every shipped manifest reads the same, and TOML that is
    invalid in both versions is refused at the same line."""
    import tomllib

    from loradoc.registry import toml_io

    for f in sorted(manifests_dir().rglob("*.toml")):
        assert toml_io.loads(f.read_text()) == tomllib.loads(f.read_text()), f
    with pytest.raises(tomllib.TOMLDecodeError) as want:
        tomllib.loads(bad)
    with pytest.raises(toml_io.TOMLDecodeError) as got:
        toml_io.loads(bad)
    assert toml_io.error_line(got.value) == toml_io.error_line(want.value) is not None


_COMMENTED = """# my notes on this adapter: keep them
schema = 1
kind = "adapter"
id = "t/commented"  # the id I use
notes = \"\"\"
two lines
of notes\"\"\"

[base]
id = "google/gemma-4-E2B-it"
# the base revision is not known yet
revision = "unknown"

[[revisions]]
label = "one"
status = "broken"  # until someone checks it
"""


@pytest.mark.parametrize("dotted", [False, True])
def test_a_rewrite_keeps_the_users_comments(reg: Registry, dotted: bool) -> None:
    text = _COMMENTED
    if dotted:  # a layout tomlkit may not update in place: the data must still come out exact
        text = text.replace('[base]\nid = "google/gemma-4-E2B-it"', 'base.id = "google/gemma-4-E2B-it"\n[base]')
        text = text.replace('[base]\n# the base revision is not known yet\nrevision = "unknown"', "")
    ad = reg.user_dir / "adapters"
    ad.mkdir(parents=True)
    f = ad / "t--commented.toml"
    f.write_text(text)
    before = load_manifest(f)
    reg.record_hub_revision("t/commented", commit="c" * 40, pr=7)
    after = load_manifest(f)
    assert isinstance(before, AdapterManifest) and isinstance(after, AdapterManifest)
    (push,) = after.current_revision.hub
    assert (push.commit, push.pr, after.current_revision.revision) == ("c" * 40, 7, "c" * 40)
    want = before.to_dict()
    want["revisions"][0]["hub"] = [push.to_dict()]
    want["revisions"][0]["revision"] = "c" * 40
    assert after.to_dict() == want  # every other value as it was
    new_text = f.read_text()
    assert tomllib.loads(new_text) == after.to_dict()
    if not dotted:
        for comment in ("# my notes on this adapter", "# the id I use", "# the base revision", "# until someone"):
            assert comment in new_text, new_text
        assert "two lines\nof notes" in new_text  # the multi-line string stays readable
