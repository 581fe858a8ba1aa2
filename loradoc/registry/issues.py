"""Schema problems: :class:`SchemaIssue` (a key path and what is wrong there), :class:`SchemaError` (every issue of
a document or a record), and pydantic's validation errors worded the way loradoc says them."""

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
REQUIRED_MEANS: dict[str, str] = {
    "schema": f"required (schema = {SCHEMA_VERSION})",
    "revisions": "required: at least one [[revisions]] entry",
    "passes": 'required (the repair passes, e.g. ["drop-tower-loras"])',
}


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
        return REQUIRED_MEANS.get(str(key), "required")
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
