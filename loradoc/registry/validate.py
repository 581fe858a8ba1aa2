"""A parsed TOML document -> a manifest (model.py), or a :class:`SchemaError` listing EVERY problem with its key path.

pydantic checks each field (and collects all field errors); this module words pydantic's errors the way loradoc
says them ("must be a string, not an integer", "unknown key (allowed here: ...)") and adds the checks that span
several fields (duplicate revision labels, ``current`` and lineage labels that name no revision, ``repo_id``
differing from ``id``), which run on the raw document so that they are reported together with the field errors.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from loradoc.registry.issues import REQUIRED_MEANS, SchemaError, SchemaIssue, issues_from
from loradoc.registry.keylines import KeyPath
from loradoc.registry.model import AdapterManifest, BaseManifest, Manifest


def parse_manifest(data: Any) -> Manifest:
    """Validate a parsed TOML document and build the manifest. Raises :class:`SchemaError` with every issue."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in ("adapter", "base"):
        why = 'required: "adapter" or "base"' if kind is None else f'{kind!r} is not "adapter" or "base"'
        raise SchemaError([SchemaIssue(("kind",), why)])
    cls: type[AdapterManifest] | type[BaseManifest] = AdapterManifest if kind == "adapter" else BaseManifest
    issues: list[SchemaIssue] = []
    if "schema" not in data:
        issues.append(SchemaIssue(("schema",), REQUIRED_MEANS["schema"]))
    try:
        m: Manifest | None = cls.model_validate(data)
    except ValidationError as e:
        m = None
        issues += issues_from(cls, e)
    if kind == "adapter":
        issues += adapter_cross_checks(data)
    if issues:
        raise SchemaError(_unique(issues))
    assert m is not None
    return m


def manifest_from_json(d: dict[str, Any]) -> Manifest:
    """Rebuild a manifest from :meth:`to_dict` output (the index stores that JSON)."""
    return parse_manifest(d)


def _unique(issues: list[SchemaIssue]) -> list[SchemaIssue]:
    seen: set[tuple[KeyPath, str]] = set()
    out = []
    for i in issues:
        if (i.path, i.message) not in seen:
            seen.add((i.path, i.message))
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------------------------
# checks across fields (on the raw document: reported together with the field errors)
# ---------------------------------------------------------------------------------------------------------


def adapter_cross_checks(data: dict[str, Any]) -> list[SchemaIssue]:
    issues: list[SchemaIssue] = []
    ident, repo_id = data.get("id"), data.get("repo_id")
    if isinstance(ident, str) and isinstance(repo_id, str) and ident.lower() != repo_id.lower():
        issues.append(
            SchemaIssue(("repo_id",), f"{repo_id!r} differs from id {ident!r} (a Hub adapter's id is its repo id)")
        )
    revs = data.get("revisions")
    revs = revs if isinstance(revs, list) else []
    labels: list[str] = []
    seen: dict[str, int] = {}
    for i, rev in enumerate(revs):
        label = rev.get("label") if isinstance(rev, dict) else None
        if not isinstance(label, str):
            continue
        labels.append(label)
        low = label.lower()
        if low in seen:
            issues.append(
                SchemaIssue(("revisions", i, "label"), f"duplicate label {label!r} (also revisions[{seen[low]}])")
            )
        seen.setdefault(low, i)
        compat = rev.get("compat")
        for j, entry in enumerate(compat if isinstance(compat, list) else []):
            if isinstance(entry, dict) and "peft" not in entry and "transformers" not in entry:
                issues.append(
                    SchemaIssue(("revisions", i, "compat", j), "names neither a peft nor a transformers range")
                )
    current = data.get("current")
    if current is None:
        if len(revs) > 1:
            issues.append(
                SchemaIssue(
                    ("current",), "required when there is more than one revision (the label of the current one)"
                )
            )
    elif isinstance(current, str) and revs and current.lower() not in seen:
        issues.append(SchemaIssue(("current",), f"{current!r} is not the label of a revision ({', '.join(labels)})"))
    lineage = data.get("lineage")
    for i, step in enumerate(lineage if isinstance(lineage, list) else []):
        if not isinstance(step, dict):
            continue
        for key in ("from", "to"):
            lab = step.get(key)
            if isinstance(lab, str) and lab.strip() and lab.lower() not in seen:
                issues.append(SchemaIssue(("lineage", i, key), f"{lab!r} is not the label of a revision"))
    return issues
