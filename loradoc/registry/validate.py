"""A parsed TOML document -> a manifest (model.py), or a :class:`SchemaError` listing EVERY problem with its key path.

pydantic checks each field (and collects all field errors); this module words pydantic's errors the way loradoc
says them ("must be a string, not an integer", "unknown key (allowed here: ...)") and adds the checks that span
several fields (duplicate revision labels, ``current`` and lineage labels that name no revision, ``repo_id``
differing from ``id``), which run on the raw document so that they are reported together with the field errors.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from loradoc.errors import BadInputError
from loradoc.registry.fields import PATTERN_MESSAGES, SCHEMA_VERSION, type_name
from loradoc.registry.keylines import KeyPath, format_path
from loradoc.registry.model import AdapterManifest, BaseManifest, Manifest


@dataclass
class SchemaIssue:
    path: KeyPath
    message: str

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.message}"


class SchemaError(BadInputError, ValueError):
    """A manifest (or a record built in Python) that does not fit the schema. ``issues`` lists every problem found;
    the message names the first five."""

    def __init__(self, issues: list[SchemaIssue]) -> None:
        self.issues = issues
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        super().__init__(
            "; ".join(str(i) for i in issues[:5]) + more,
            hint="the schema is in loradoc/registry/SCHEMA.md; `loradoc registry show ID` shows a recorded manifest",
        )


# What "required" means for the keys whose absence needs a word more.
_REQUIRED: dict[str, str] = {
    "schema": f"required (schema = {SCHEMA_VERSION})",
    "revisions": "required: at least one [[revisions]] entry",
    "passes": 'required (the repair passes, e.g. ["drop-tower-loras"])',
}


def parse_manifest(data: Any) -> Manifest:
    """Validate a parsed TOML document and build the manifest. Raises :class:`SchemaError` with every issue."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in ("adapter", "base"):
        why = 'required: "adapter" or "base"' if kind is None else f'{kind!r} is not "adapter" or "base"'
        raise SchemaError([SchemaIssue(("kind",), why)])
    cls: type[AdapterManifest] | type[BaseManifest] = AdapterManifest if kind == "adapter" else BaseManifest
    issues: list[SchemaIssue] = []
    if "schema" not in data:
        issues.append(SchemaIssue(("schema",), _REQUIRED["schema"]))
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
# pydantic's errors, in loradoc's words
# ---------------------------------------------------------------------------------------------------------


def issues_from(root: type[BaseModel], err: ValidationError) -> list[SchemaIssue]:
    return [SchemaIssue(tuple(e["loc"]), _message(root, e)) for e in err.errors(include_url=False)]


def _message(root: type[BaseModel], e: Any) -> str:
    kind, loc, v, ctx = e["type"], tuple(e["loc"]), e.get("input"), e.get("ctx") or {}
    key = loc[-1] if loc else None
    if kind == "loradoc":
        return str(ctx.get("why", e["msg"]))
    if kind == "missing":
        return _REQUIRED.get(str(key), "required")
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        return f"unknown key (allowed here: {', '.join(allowed)})"
    if kind == "string_type":
        return f"must be a string, not {type_name(v)}"
    if kind == "bool_type":
        return f"must be true or false, not {type_name(v)}"
    if kind in ("int_type", "int_parsing"):
        return f"must be an integer, not {type_name(v)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, not {type_name(v)}"
    if kind == "list_type":
        return f"must be an array of tables ([[{key}]]), not {type_name(v)}"
    if kind == "literal_error":
        choices = _literal_choices(_annotation_at(root, loc))
        return f"{v!r} is not one of {', '.join(choices)}" if choices else e["msg"]
    if kind == "string_pattern_mismatch":
        return PATTERN_MESSAGES.get(ctx.get("pattern", ""), "{v!r} is not valid here").format(v=v)
    return str(e["msg"])


def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or n): f for n, f in model.model_fields.items()}


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``Model``, ``Model | None``, ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


@functools.lru_cache(maxsize=512)
def _model_at(root: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        f = _fields_by_key(model).get(part)
        model = _inner_model(f.annotation) if f is not None else None
    return model


def _annotation_at(root: type[BaseModel], loc: KeyPath) -> Any:
    model = _model_at(root, tuple(p for p in loc[:-1]))
    f = _fields_by_key(model).get(str(loc[-1])) if model is not None and loc else None
    return f.annotation if f is not None else None


def _literal_choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(annotation) for c in _literal_choices(a)]
    return []


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
