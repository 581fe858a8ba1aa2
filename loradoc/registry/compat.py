"""Does this adapter revision load cleanly with these peft / transformers versions?

Rules (in order):

1. a ``known-broken`` entry whose ranges contain the versions wins: the answer is False, even where a
   ``verified-clean`` entry also covers them (the reasons say so);
2. the peft requirement of the adapter config (``peft.requires``, else derived from the config fields the manifest
   knows with :func:`loradoc.io.adapter_config.required_peft_specifier`, e.g. ``exclude_modules`` needs >= 0.14): a
   peft outside it answers False;
3. a ``verified-clean`` entry whose ranges contain the versions: True;
4. nothing covers the versions: None ("unknown"), with the nearest verified-clean range (this revision's, else
   another revision's) as a hint.

An entry covers a query when every package it names (peft, transformers) has a queried version inside its range;
``torch`` ranges are recorded evidence only. The base relation (a 4-bit repack or a mirror of some original) is
reported beside the answer; it does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loradoc.errors import BadInputError, LoradocError
from loradoc.registry.model import UNKNOWN, AdapterManifest, CompatEntry, Relation, Revision


@dataclass
class CompatAnswer:
    adapter: str
    revision: str  # label
    commit: str  # sha or "unknown"
    status: str
    base: str
    peft: str | None
    transformers: str | None
    loads_cleanly: bool | None
    reasons: list[str] = field(default_factory=list)
    evidence: list[CompatEntry] = field(default_factory=list)  # the entries that cover the queried versions
    hint: str | None = None
    requires_peft: str | None = None
    base_relation: Relation | None = None

    @property
    def verdict(self) -> str:
        return {True: "clean", False: "broken", None: "unknown"}[self.loads_cleanly]

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "revision": self.revision,
            "commit": self.commit,
            "status": self.status,
            "base": self.base,
            "versions": {"peft": self.peft, "transformers": self.transformers},
            "loads_cleanly": self.loads_cleanly,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "evidence": [e.to_dict() for e in self.evidence],
            "hint": self.hint,
            "requires_peft": self.requires_peft,
            "base_relation": (
                {**self.base_relation.to_dict(), "base": self.base} if self.base_relation is not None else None
            ),
        }


def parse_version(pkg: str, v: str | None) -> Any:
    if v is None:
        return None
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v)
    except InvalidVersion:
        raise BadInputError(
            f"{pkg} version {v!r} is not a version number", hint=f"pass a release such as 0.19.1 for --{pkg}"
        ) from None


def covers(entry: CompatEntry, versions: dict[str, Any]) -> bool:
    from packaging.specifiers import SpecifierSet

    specs = entry.specs()
    if not specs:
        return False
    for pkg, spec in specs.items():
        v = versions.get(pkg)
        if v is None or not SpecifierSet(spec).contains(v, prereleases=True):
            return False
    return True


def _distance(entry: CompatEntry, versions: dict[str, Any]) -> float:
    """How far the queried versions are from an entry's ranges (0 inside), for the 'nearest' hint."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    def num(v: Any) -> float:
        rel = (list(v.release) + [0, 0, 0])[:3]
        return rel[0] * 1e6 + rel[1] * 1e3 + rel[2]

    total = 0.0
    for pkg, spec in entry.specs().items():
        v = versions.get(pkg)
        if v is None:
            total += 1e9
            continue
        ss = SpecifierSet(spec)
        if ss.contains(v, prereleases=True):
            continue
        best = 1e9
        for s in ss:
            try:
                best = min(best, abs(num(Version(s.version.rstrip(".*"))) - num(v)))
            except InvalidVersion:
                continue
        total += best
    return total


def derived_peft_requirement(rev: Revision) -> tuple[str | None, str]:
    """(specifier, how it was found) for the revision's config: recorded, or derived from known fields."""
    p = rev.peft
    if p.requires != UNKNOWN:
        return p.requires, "recorded from the adapter config"
    raw: dict[str, Any] = {}
    if p.type != UNKNOWN:
        raw["peft_type"] = p.type
    if isinstance(p.r, int):
        raw["r"] = p.r
    if isinstance(p.alpha, int | float) and not isinstance(p.alpha, bool):
        raw["lora_alpha"] = p.alpha
    if p.target_modules not in (UNKNOWN, "default"):
        raw["target_modules"] = p.target_modules
    if p.exclude_modules not in (UNKNOWN, []):
        raw["exclude_modules"] = p.exclude_modules
    if not raw or "peft_type" not in raw:
        return None, ""
    from loradoc.io.adapter_config import parse_adapter_config, required_peft_specifier

    try:
        cfg = parse_adapter_config(raw, source="manifest")
    except LoradocError:
        return None, ""
    fields = [k for k in ("exclude_modules", "target_modules") if k in raw and cfg.field_versions.get(k)]
    why = "derived from the config fields in the manifest" + (f" ({', '.join(fields)})" if fields else "")
    return required_peft_specifier(cfg), why


def evaluate(
    manifest: AdapterManifest,
    rev: Revision,
    *,
    peft: str | None,
    transformers: str | None,
    relation: Relation | None = None,
) -> CompatAnswer:
    versions = {"peft": parse_version("peft", peft), "transformers": parse_version("transformers", transformers)}
    base = manifest.base_of(rev).id
    ans = CompatAnswer(
        adapter=manifest.id,
        revision=rev.label,
        commit=rev.revision,
        status=rev.status,
        base=base,
        peft=peft,
        transformers=transformers,
        loads_cleanly=None,
        base_relation=relation,
    )
    query = ", ".join(f"{k} {v}" for k, v in (("peft", peft), ("transformers", transformers)) if v) or "no versions"
    broken = [e for e in rev.compat if e.verdict == "known-broken" and covers(e, versions)]
    clean = [e for e in rev.compat if e.verdict == "verified-clean" and covers(e, versions)]
    spec, how = derived_peft_requirement(rev)
    ans.requires_peft = spec
    req_fails = False
    if spec and versions["peft"] is not None:
        from packaging.specifiers import SpecifierSet

        req_fails = not SpecifierSet(spec).contains(versions["peft"], prereleases=True)

    if broken:
        ans.loads_cleanly = False
        ans.evidence = broken + clean
        for e in broken:
            ans.reasons.append(
                f"known-broken for {e.describe()} (contains {query}): {e.evidence or 'no details recorded'}"
                + (f" [source: {e.source}]" if e.source != UNKNOWN else "")
            )
        for e in clean:
            ans.reasons.append(f"a verified-clean entry ({e.describe()}) also covers {query}; known-broken wins")
    if req_fails:
        ans.loads_cleanly = False
        ans.reasons.append(f"the adapter config needs peft {spec} ({how}); peft {peft} is outside it")
    if ans.loads_cleanly is None and clean:
        ans.loads_cleanly = True
        ans.evidence = clean
        for e in clean:
            ans.reasons.append(
                f"verified-clean for {e.describe()} (contains {query}): {e.evidence or 'no details recorded'}"
                + (f" [source: {e.source}]" if e.source != UNKNOWN else "")
            )
    if ans.loads_cleanly is None:
        if versions["peft"] is None and peft is None:
            ans.reasons.append("peft is not installed and no --peft version was given")
        if rev.compat:
            ans.reasons.append(f"no recorded range for revision {rev.label!r} contains {query}")
        else:
            ans.reasons.append(f"no compatibility evidence is recorded for revision {rev.label!r}")
        ans.hint = _nearest_hint(manifest, rev, versions)
    if rev.status != UNKNOWN:
        ans.reasons.append(f"revision {rev.label!r} (commit {rev.revision}) has status {rev.status}")
    if relation is not None:
        ans.reasons.append(relation.describe(base))
    return ans


def _nearest_hint(manifest: AdapterManifest, rev: Revision, versions: dict[str, Any]) -> str:
    own = [e for e in rev.compat if e.verdict == "verified-clean"]
    if own:
        best = min(own, key=lambda e: _distance(e, versions))
        return f"nearest verified-clean range: {best.describe()}" + (f" ({best.evidence})" if best.evidence else "")
    others = [(r, e) for r in manifest.revisions if r is not rev for e in r.compat if e.verdict == "verified-clean"]
    if others:
        r, best = min(others, key=lambda x: _distance(x[1], versions))
        return f"revision {r.label!r} (commit {r.revision}) is verified-clean on {best.describe()}; use that revision"
    return "check it with these versions (loradoc doctor, or check-load for a real load) and record the result"
