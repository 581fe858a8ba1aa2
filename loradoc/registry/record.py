"""Turning doctor / repair / check-load results into manifest records (pure functions over the models).

Status rule: the latest evidence wins. A doctor verdict sets ``healthy`` / ``repairable`` / ``broken`` (a healthy
verdict keeps an earlier ``verified`` or ``repaired``); a certificate sets ``verified`` (passed) or ``broken``;
a repair sets its output to ``repaired`` (or ``broken`` when the output is not healthy). Version-specific truth
lives in ``compat``: every full doctor run, verified repair and certificate adds a range ``==<version>`` for the
peft / transformers it ran with (replacing an entry with the same ranges).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loradoc.registry.fields import UNKNOWN, clean_free
from loradoc.registry.model import (
    RUNTIMES,
    AdapterManifest,
    Artifact,
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
    Revision,
    RuntimeRecord,
    TargetSummary,
    key_fingerprint,
    now_iso,
)

_COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}\Z")


def _commit_or_unknown(v: Any) -> str:
    return v.lower() if isinstance(v, str) and _COMMIT_RE.match(v.lower()) else UNKNOWN


def _short_hash(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:8]  # noqa: S324 - a label, not security


def unique_label(m: AdapterManifest, want: str) -> str:
    taken = {r.label.lower() for r in m.revisions}
    want = re.sub(r"[^A-Za-z0-9._\-]", "-", want).strip("-._")[:56] or "rev"
    if not want[0].isalnum():
        want = "r" + want
    if want.lower() not in taken:
        return want
    n = 2
    while f"{want}-{n}".lower() in taken:
        n += 1
    return f"{want}-{n}"


def ensure_revision(
    m: AdapterManifest,
    *,
    ref: str | None = None,
    commit: str | None = None,
    path: str | None = None,
    label: str | None = None,
    make_current: bool = True,
    label_prefix: str = "local",
) -> Revision:
    """Find the revision named by ``ref`` / label / commit / path, or add a new one. Nothing named: the current
    revision."""
    if not (ref or label or path or _commit_or_unknown(commit) != UNKNOWN) and m.revisions:
        return m.find_revision(None) or m.revisions[-1]
    for key in (ref, label):
        if key:
            hit = m.find_revision(key)
            if hit is not None:
                return hit
    c = _commit_or_unknown(commit)
    if c != UNKNOWN:
        hit = next((r for r in m.revisions if r.revision != UNKNOWN and r.revision == c), None)
        if hit is not None:
            return hit
    if path:
        hit = next((r for r in m.revisions if r.path == path), None)
        if hit is not None:
            if c != UNKNOWN and hit.revision == UNKNOWN:
                hit.revision = c
            return hit
    if label:
        new_label = unique_label(m, label)
    elif c != UNKNOWN:
        new_label = unique_label(m, c[:12])
    elif path:
        new_label = unique_label(m, f"{label_prefix}-{_short_hash(path)}")
    elif ref:
        new_label = unique_label(m, ref)
    else:
        new_label = unique_label(m, label_prefix)
    rev = Revision(label=new_label, revision=c, path=path)
    m.revisions.append(rev)
    if make_current or len(m.revisions) == 1:
        m.current = rev.label
    return rev


def add_compat(rev: Revision, entry: CompatEntry) -> None:
    """Add a compat entry; one with the same ranges (peft, transformers, torch) is replaced."""
    same = (entry.peft, entry.transformers, entry.torch)
    rev.compat = [e for e in rev.compat if (e.peft, e.transformers, e.torch) != same]
    rev.compat.append(entry)


# ---------------------------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------------------------


def _ranges(spans: Iterable[int]) -> str:
    xs = sorted(set(spans))
    if not xs:
        return UNKNOWN
    out: list[str] = []
    start = prev = xs[0]
    for x in xs[1:]:
        if x == prev + 1:
            prev = x
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = x
    out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


def targets_from_keys(keys: Iterable[str]) -> list[TargetSummary]:
    """Per tower: module names, layer range and tensor count, from the file keys (pure, no base needed)."""
    from loradoc.model.layout import address_of, parse_key

    towers: dict[str, dict[str, Any]] = {}
    for k in keys:
        pk = parse_key(k)
        a = address_of(pk.module)
        t = towers.setdefault(a.tower, {"modules": set(), "layers": set(), "tensors": 0})
        t["tensors"] += 1
        if pk.is_lora:
            t["modules"].add(a.local.rsplit(".", 1)[-1] or pk.module.rsplit(".", 1)[-1])
        if a.layer is not None:
            t["layers"].add(a.layer)
    order = {"language": 0, "vision": 1, "audio": 2, "projector": 3}
    return [
        TargetSummary(
            tower=name,
            modules=sorted(t["modules"]),
            layers=_ranges(t["layers"]),
            tensors=t["tensors"],
        )
        for name, t in sorted(towers.items(), key=lambda kv: order.get(kv[0], 9))
    ]


def peft_info_from_json(a: Mapping[str, Any], requires: str | None = None) -> PeftInfo:
    """From ``Diagnosis.to_json()["adapter"]`` (or a similar dict of config fields)."""
    tm = a.get("target_modules")
    em = a.get("exclude_modules")

    def num(v: Any) -> Any:
        return v if isinstance(v, int | float) and not isinstance(v, bool) else UNKNOWN

    return PeftInfo(
        type=a.get("peft_type") or UNKNOWN,
        method=a.get("method") or UNKNOWN,
        r=a["r"] if isinstance(a.get("r"), int) and not isinstance(a.get("r"), bool) and a["r"] > 0 else UNKNOWN,
        alpha=num(a.get("lora_alpha")),
        dropout=num(a.get("lora_dropout")),
        target_modules=list(tm) if isinstance(tm, list | tuple) else (tm if isinstance(tm, str) else "default"),
        exclude_modules=list(em) if isinstance(em, list | tuple) else (em if isinstance(em, str) else []),
        peft_version=a.get("peft_version") or UNKNOWN,
        requires=requires or UNKNOWN,
    )


def finding_records(findings: Iterable[Mapping[str, Any]]) -> list[FindingRecord]:
    out = []
    for f in findings:
        count = f.get("count")
        out.append(
            FindingRecord(
                code=str(f.get("code") or UNKNOWN),
                severity=f.get("severity") if f.get("severity") in ("error", "warning", "info") else "error",
                count=count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else UNKNOWN,
                message=str(f.get("message") or ""),
                repair=_opt_str(f.get("repair")),
                tower=_opt_str(f.get("tower")),
            )
        )
    return out


def _versions(v: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(x) for k, x in (v or {}).items() if x is not None}


def apply_diagnosis(
    m: AdapterManifest,
    rev: Revision,
    d: Mapping[str, Any],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    requires: str | None = None,
    created: str | None = None,
) -> None:
    """Record a doctor result (``Diagnosis.to_json()``; ``shapes``: the header's key -> shape, when at hand)."""
    created = created or now_iso()
    a = d.get("adapter", {}) or {}
    base = d.get("base", {}) or {}
    verdict = d.get("verdict")
    if verdict not in ("healthy", "repairable", "broken"):
        verdict = "broken"
    if shapes is not None:
        rev.key_fingerprint = key_fingerprint(shapes)
        rev.tensors = len(shapes)
        rev.targets = targets_from_keys(shapes)
    elif isinstance(a.get("tensors"), int):
        rev.tensors = a["tensors"]
    new_peft = peft_info_from_json(a, requires)
    for name in PeftInfo.model_fields:  # keep what was known and this run cannot tell (e.g. "qlora")
        if getattr(new_peft, name) == UNKNOWN and getattr(rev.peft, name) != UNKNOWN:
            setattr(new_peft, name, getattr(rev.peft, name))
    rev.peft = new_peft
    rev.findings = finding_records(d.get("findings", []))
    peft_counts = d.get("peft", {}) or {}
    versions = _versions(d.get("versions"))
    mode = d.get("mode") if d.get("mode") in ("full", "static") else "static"
    rev.diagnosis = DiagnosisRecord(
        mode=mode,
        verdict=verdict,
        created=created,
        loaded=_nonneg(peft_counts.get("loaded")),
        missing=_nonneg(peft_counts.get("missing")),
        unexpected=_nonneg(peft_counts.get("unexpected")),
        error=_opt_str(peft_counts.get("error")),
        versions=versions,
        base=_opt_str(base.get("name")),
    )
    if verdict == "healthy":
        if rev.status not in ("verified", "repaired"):
            rev.status = "healthy"
    else:
        rev.status = verdict
    if m.architecture == UNKNOWN and base.get("architecture"):
        m.architecture = str(base["architecture"])
    if mode == "full" and versions.get("peft") and versions.get("transformers"):
        errors = [f for f in rev.findings if f.severity == "error"]
        against = base.get("name") or "its base"
        if verdict == "healthy":
            entry = CompatEntry(
                "verified-clean",
                peft=f"=={versions['peft']}",
                transformers=f"=={versions['transformers']}",
                evidence=f"loradoc doctor against {against}: real peft dry load, loaded {rev.diagnosis.loaded}, "
                "missing 0, unexpected 0, no error finding",
                source=f"loradoc doctor {created}",
                recorded=created,
            )
        else:
            what = ", ".join(f"{f.code} ({f.count})" for f in errors) or (
                f"missing {rev.diagnosis.missing}, unexpected {rev.diagnosis.unexpected}, error {rev.diagnosis.error}"
            )
            entry = CompatEntry(
                "known-broken",
                peft=f"=={versions['peft']}",
                transformers=f"=={versions['transformers']}",
                evidence=f"loradoc doctor against {against}: verdict {verdict}: {what}",
                source=f"loradoc doctor {created}",
                recorded=created,
            )
        add_compat(rev, entry)


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else (None if v is None else str(v))


def _nonneg(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


# ---------------------------------------------------------------------------------------------------------
# repair
# ---------------------------------------------------------------------------------------------------------


def apply_repair(
    m: AdapterManifest,
    report: Mapping[str, Any],
    out_path: str,
    *,
    label: str | None = None,
    commit: str | None = None,
    make_current: bool = True,
    report_path: str | None = None,
) -> tuple[Revision, Revision, LineageStep]:
    """Record a ``loradoc-repair.json`` report: the source revision's findings, a new output revision, and the
    lineage step source -> passes -> output."""
    created = str(report.get("created") or now_iso())
    src = report.get("source", {}) or {}
    source = ensure_revision(
        m,
        commit=src.get("commit"),
        path=local_id(Path(src["path"])) if src.get("path") else None,
        make_current=False,
    )
    before = finding_records(report.get("findings_before", []))
    if before:
        source.findings = before
    healthy = report.get("healthy")
    if any(f.severity == "error" for f in before) and source.status in (UNKNOWN, "healthy", "repairable", "broken"):
        source.status = "repairable" if healthy else "broken"
    out = ensure_revision(
        m, label=label, commit=commit, path=out_path, make_current=make_current, label_prefix="repaired"
    )
    if make_current:
        m.current = out.label
    kept = report.get("kept", []) or []
    if kept:
        out.key_fingerprint = key_fingerprint({r["key"]: r.get("shape", []) for r in kept})
        out.tensors = len(kept)
        out.targets = targets_from_keys(r["key"] for r in kept)
    out.status = "repaired" if healthy else "broken"
    # the output's config: the source's, with the recorded config changes applied
    peft = PeftInfo(**{**source.peft.to_dict()})
    changes = [
        ConfigChange(
            str(c.get("field")),
            clean_free(c.get("old")),
            clean_free(c.get("new")),
            _opt_str(c.get("pass")),
            _opt_str(c.get("reason")),
        )
        for c in report.get("config_changes", []) or []
    ]
    for c in changes:
        if c.field == "exclude_modules":
            peft.exclude_modules = c.new if isinstance(c.new, list | str) else []
        elif c.field == "target_modules":
            peft.target_modules = c.new if isinstance(c.new, list | str) else "default"
        elif c.field == "r" and isinstance(c.new, int):
            peft.r = c.new
        elif c.field == "lora_alpha" and isinstance(c.new, int | float):
            peft.alpha = c.new
        elif c.field == "base_model_name_or_path" and isinstance(c.new, str):
            out.base = BaseRef(c.new)
    if changes:
        peft.requires = UNKNOWN  # the config changed: derive again (or record a doctor run on the output)
    out.peft = peft
    verification = report.get("verification") or {}
    out.findings = finding_records(verification.get("findings", []))
    versions = _versions(report.get("versions"))
    if verification:
        v = verification.get("verdict")
        counts = verification.get("peft", {}) or {}
        out.diagnosis = DiagnosisRecord(
            mode=verification.get("mode") if verification.get("mode") in ("full", "static") else "static",
            verdict=v if v in ("healthy", "repairable", "broken") else "broken",
            created=created,
            loaded=_nonneg(counts.get("loaded")),
            missing=_nonneg(counts.get("missing")),
            unexpected=_nonneg(counts.get("unexpected")),
            error=_opt_str(counts.get("error")),
            versions=versions,
            base=(report.get("base") or {}).get("name"),
        )
        if verification.get("mode") == "full" and versions.get("peft") and versions.get("transformers"):
            ok = v == "healthy"
            add_compat(
                out,
                CompatEntry(
                    "verified-clean" if ok else "known-broken",
                    peft=f"=={versions['peft']}",
                    transformers=f"=={versions['transformers']}",
                    evidence=f"loradoc repair verification (real peft dry load of the output): verdict {v}",
                    source=f"{report.get('tool') or 'loradoc'} repair {created}",
                    recorded=created,
                ),
            )
    step = LineageStep(
        source=source.label,
        passes=[str(p) for p in report.get("passes", []) or []],
        output=out.label,
        path=out_path,
        created=created,
        tool=str(report.get("tool") or UNKNOWN),
        dropped=len(report.get("dropped", []) or []),
        renamed=len(report.get("renamed", []) or []),
        config_changes=changes,
        report=report_path,
    )
    m.lineage = [s for s in m.lineage if not (s.source == step.source and s.output == step.output)]
    m.lineage.append(step)
    return source, out, step


# ---------------------------------------------------------------------------------------------------------
# check-load certificate
# ---------------------------------------------------------------------------------------------------------


def certificate_record(
    cert: Mapping[str, Any], *, path: str | None = None, sha256: str | None = None
) -> CertificateRecord:
    checks = [
        CheckResult(str(c.get("name") or UNKNOWN), bool(c.get("passed")), clean_free(c.get("figures") or {}))
        for c in cert.get("checks", []) or []
    ]
    return CertificateRecord(
        created=str(cert.get("created") or now_iso()),
        passed=bool(cert.get("passed")),
        tool=str(cert.get("tool") or UNKNOWN),
        versions=_versions(cert.get("versions")),
        device=clean_free(cert.get("device") or {}),
        checks=checks,
        path=path,
        sha256=sha256,
    )


def apply_certificate(rev: Revision, rec: CertificateRecord) -> None:
    if any(c.to_dict() == rec.to_dict() for c in rev.certificates):
        return
    rev.certificates.append(rec)
    rev.status = "verified" if rec.passed else "broken"
    v = rec.versions
    if v.get("peft") and v.get("transformers"):
        failed = [c.name for c in rec.checks if not c.passed]
        dev = rec.device.get("type", UNKNOWN)
        evidence = (
            f"loradoc check-load on {dev}: all {len(rec.checks)} checks passed (bit-exact, effect, merged-match)"
            if rec.passed
            else f"loradoc check-load on {dev}: failed {', '.join(failed) or 'the certificate'}"
        )
        add_compat(
            rev,
            CompatEntry(
                "verified-clean" if rec.passed else "known-broken",
                peft=f"=={v['peft']}",
                transformers=f"=={v['transformers']}",
                torch=f"=={v['torch']}" if v.get("torch") else None,
                evidence=evidence,
                source=f"{rec.tool} certificate {rec.created}" + (f" ({rec.path})" if rec.path else ""),
                recorded=rec.created,
            ),
        )


def apply_artifact(rev: Revision, art: Artifact) -> None:
    rev.artifacts = [a for a in rev.artifacts if not (a.kind == art.kind and a.path == art.path and a.path != UNKNOWN)]
    rev.artifacts.append(art)


def apply_hub_push(m: AdapterManifest, rev: Revision, push: HubPush) -> None:
    same = {k: v for k, v in push.to_dict().items() if k != "created"}
    if any({k: v for k, v in h.to_dict().items() if k != "created"} == same for h in rev.hub):
        return
    rev.hub.append(push)
    own_repo = m.repo_id is None or push.repo_id.lower() == m.repo_id.lower()
    if own_repo and rev.revision == UNKNOWN and push.commit != UNKNOWN:
        rev.revision = push.commit


def local_id(path: Path) -> str:
    return str(Path(path).expanduser().resolve())


def runtime_records(report: Mapping[str, Any], *, checked: str | None = None) -> list[RuntimeRecord]:
    """RuntimeRecords from a ``loradoc.runtimes.RuntimeReport.to_json()`` dict."""
    when = checked or now_iso()
    out = []
    for rt, r in (report.get("runtimes") or {}).items():
        reason = next((h["message"] for h in r.get("hits", []) if h.get("effect") in ("refuse", "convert")), None)
        if reason is None and r.get("verdict") in ("unknown", "loads-with-flags"):
            reason = next((h["message"] for h in r.get("hits", []) if h.get("effect") in ("unknown", "flag")), None)
        out.append(
            RuntimeRecord(
                runtime=rt,
                verdict=r["verdict"],
                version=r.get("version") or UNKNOWN,
                flags=list(r.get("flags") or []),
                reason=reason,
                fix=r.get("fix"),
                rules=list(dict.fromkeys(h["rule"] for h in r.get("hits", []))),
                base=report.get("base"),
                checked=when,
            )
        )
    return out


def apply_runtimes(rev: Revision, records: Iterable[RuntimeRecord]) -> None:
    """The latest check of a runtime replaces that runtime's earlier one."""
    new = list(records)
    done = {r.runtime for r in new}
    rev.runtimes = [r for r in rev.runtimes if r.runtime not in done] + new
    rev.runtimes.sort(key=lambda r: RUNTIMES.index(r.runtime) if r.runtime in RUNTIMES else len(RUNTIMES))
