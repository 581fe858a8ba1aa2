"""Understand any ``adapter_config.json``: PEFT configs of every era, and the look-alikes that are not PEFT.

This module is on the fast, header-only path: it imports the standard library, ``packaging`` and ``pydantic``
(never peft, torch or transformers). The jobs are split:

* :mod:`loradoc.io.config_kinds`: what a file without ``peft_type`` is (an old LoRA, MLX-LM, AdapterHub, ...);
* :mod:`loradoc.io.config_model`: the typed fields (one pydantic model) and :class:`AdapterConfig`;
* :mod:`loradoc.io.config_problems`: every wrongly typed or oversized field, with its key path and line;
* :mod:`loradoc.io.peft_facts` / :mod:`loradoc.io.peft_compat`: what each peft release knows, and what it makes
  of a config;
* :mod:`loradoc.io.base_ref`: whether ``base_model_name_or_path`` is a Hub id or a local folder;
* here: decoding the file and putting the parsed config together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import ValidationError

from loradoc.errors import MalformedConfigError, MissingFileError, NotPeftConfigError
from loradoc.io.base_ref import CANONICAL_BARE_IDS, is_local_path
from loradoc.io.config_kinds import PEFT_SIGNS, describe_non_peft, is_legacy_lora, lookalike
from loradoc.io.config_model import MAX_LIST_ENTRIES, MAX_STRING_CHARS, AdapterConfig, PeftFields
from loradoc.io.config_problems import ConfigFieldsError, Problem, problems_from, shown, with_lines
from loradoc.io.peft_compat import (
    era_from_keys,
    fields_unsupported_by,
    required_peft_specifier,
    unknown_field_behaviour,
)
from loradoc.io.peft_facts import (
    FIELD_INTRODUCED,
    FIELDS_REMOVED,
    KNOWN_PEFT_TYPES,
    PEFT_TYPE_INTRODUCED,
    PEFT_TYPE_REMOVED,
    PEFT_VERSION_KNOWN,
    field_table,
)

__all__ = [
    "CONFIG_NAME",
    "FIELD_INTRODUCED",
    "KNOWN_PEFT_TYPES",
    "MAX_LIST_ENTRIES",
    "MAX_STRING_CHARS",
    "PEFT_TYPE_INTRODUCED",
    "PEFT_VERSION_KNOWN",
    "AdapterConfig",
    "ConfigFieldsError",
    "era_from_keys",
    "fields_unsupported_by",
    "is_local_path",
    "load_adapter_config",
    "parse_adapter_config",
    "required_peft_specifier",
    "unknown_field_behaviour",
]

CONFIG_NAME = "adapter_config.json"

_V0_3 = Version("0.3.0")
_LFS_PREFIX = "version https://git-lfs.github.com/spec/v1"
_JSON_KINDS: dict[type, str] = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean"}


def _lfs_error(source: str) -> MalformedConfigError:
    return MalformedConfigError(
        f"{source}: is a Git LFS pointer file, not the JSON config",
        hint="run `git lfs pull` in the repo (or download the real file from the Hub) and try again",
    )


def parse_adapter_config(data: object, source: str = CONFIG_NAME, *, text: str | None = None) -> AdapterConfig:
    """Parse an already-decoded ``adapter_config.json`` (normally a dict).

    Raises :class:`NotPeftConfigError` for look-alikes (MLX-LM, AdapterHub, JAX/Tunix, a model config, a stub,
    a JSON value that is not an object) and :class:`ConfigFieldsError` (a :class:`MalformedConfigError`) for a
    PEFT config with wrongly typed or oversized fields, naming every one (with its line when ``text``, the JSON
    the value was decoded from, is given).
    """
    if isinstance(data, str) and data.lstrip("\ufeff").startswith(_LFS_PREFIX):
        raise _lfs_error(source)
    if not isinstance(data, dict):
        kind = "JSON null" if data is None else _JSON_KINDS.get(type(data))
        if kind is None:
            kind = "a JSON number" if isinstance(data, int | float) else type(data).__name__
        raise NotPeftConfigError(
            f"{source}: not a PEFT adapter config ({kind}, not an object)",
            hint="restore the real adapter_config.json written by peft's save_pretrained",
        )
    d: dict[str, Any] = data
    notes: list[str] = []
    problems: list[Problem] = []
    peft_type = _peft_type(d, source, notes, problems)
    fields: PeftFields | None = None
    try:
        fields = PeftFields.model_validate(d, context={"peft_type": peft_type})
    except ValidationError as exc:
        problems += problems_from(exc, d, PeftFields.wants())
    if problems or peft_type is None or fields is None:
        raise ConfigFieldsError(source, with_lines(problems, text))
    return _assemble(d, source, peft_type, fields, notes)


def _peft_type(d: dict[str, Any], source: str, notes: list[str], problems: list[Problem]) -> str | None:
    """The config's peft type, normalised (``"lora"`` -> ``"LORA"``, with a note); None when it is malformed
    (a problem is added). Raises :class:`NotPeftConfigError` when the file is not a PEFT config at all."""
    if "peft_type" in d:
        pt_raw = d["peft_type"]
        if not isinstance(pt_raw, str) or not pt_raw.strip():
            problems.append(Problem(("peft_type",), f'must be a non-empty string such as "LORA", got {shown(pt_raw)}'))
            return None
        peft_type = pt_raw.strip()
        if peft_type.startswith("PeftType."):
            peft_type = peft_type[len("PeftType.") :]
            notes.append(f"peft_type {pt_raw!r} is an enum repr; peft expects {peft_type.upper()!r}")
        if peft_type != peft_type.upper():
            notes.append(
                f"peft_type {pt_raw!r} is not upper-case; peft looks it up case-sensitively (KeyError): "
                f"write {peft_type.upper()!r}"
            )
        return peft_type.upper()
    look = lookalike(d)
    if look is not None:
        what, hint = look
        raise NotPeftConfigError(f"{source}: not a PEFT adapter config (looks like {what})", hint=hint)
    if is_legacy_lora(d):
        notes.append(
            "no peft_type field; read as LORA because it has r, lora_alpha and target_modules "
            '(peft itself fails with KeyError: \'peft_type\'; add "peft_type": "LORA")'
        )
        return "LORA"
    what, hint = describe_non_peft(d)
    if what == "no peft_type field" and not (set(d) & PEFT_SIGNS):
        what = "no peft_type and no LoRA fields"
    shown_what = what if what.startswith("no ") else f"looks like {what}"
    raise NotPeftConfigError(f"{source}: not a PEFT adapter config ({shown_what})", hint=hint)


def _assemble(d: dict[str, Any], source: str, peft_type: str, fields: PeftFields, notes: list[str]) -> AdapterConfig:
    """The parsed config: the validated fields, normalised, and what the version tables say about the file."""
    known = peft_type in KNOWN_PEFT_TYPES
    if not known:
        if peft_type in PEFT_TYPE_REMOVED:
            notes.append(
                f"peft_type {peft_type} was removed in peft {PEFT_TYPE_REMOVED[peft_type]}; newer peft cannot load it"
            )
        else:
            notes.append(
                f"peft_type {peft_type} is unknown to peft <= {PEFT_VERSION_KNOWN} "
                "(a fork, an unmerged branch or a typo); released peft cannot load it"
            )

    base = fields.base_model
    if base is not None and not base.strip():
        notes.append("base_model_name_or_path is an empty string (treated as absent)")
        base = None
    base_is_local = is_local_path(base) if base is not None else False
    if base is not None and not base_is_local and "/" not in base and base not in CANONICAL_BARE_IDS:
        notes.append(
            f"base_model_name_or_path {base!r} has no organisation: unless the Hub knows it as a legacy "
            "bare id, it is a local folder name"
        )

    # --- versions ------------------------------------------------------------------------------------------
    table, complete = field_table(peft_type)
    keys = set(d)
    field_versions: dict[str, str] = {}
    lower = Version(PEFT_TYPE_INTRODUCED.get(peft_type, "0.2.0"))
    for k in d:
        if k in table:
            v = table[k]
            if Version(v) > _V0_3:
                field_versions[k] = v
            lower = max(lower, Version(v))
    removed = {k: v for k, v in FIELDS_REMOVED.get(peft_type, {}).items() if k in keys}
    unknown: tuple[str, ...] = ()
    if complete:
        unknown = tuple(k for k in d if k not in table)
        if unknown:
            notes.append(
                f"fields unknown to peft {PEFT_VERSION_KNOWN}'s {peft_type} config: {', '.join(unknown)} "
                "(peft >= 0.14 drops them with a warning; 0.6-0.13 raise TypeError)"
            )
    if removed:
        notes.append("fields removed from peft: " + ", ".join(f"{k} (gone in {v})" for k, v in removed.items()))
    if peft_type == "OFT" and "oft_block_size" not in d:
        notes.append("OFT config without oft_block_size: written by peft < 0.14; peft >= 0.14 refuses it")

    recorded = fields.peft_version_recorded
    era = era_from_keys(keys, peft_type)
    if recorded is not None:
        rec = recorded.strip().partition("@")[0]
        try:
            Version(rec)
            era = rec
        except InvalidVersion:
            notes.append(f"peft_version {recorded!r} is not a valid version")

    values = {name: getattr(fields, name) for name in PeftFields.model_fields}
    values.update(base_model=base)
    return AdapterConfig.model_construct(
        **values,
        raw=d,
        source=source,
        peft_type=peft_type,
        known_peft_type=known,
        base_model_is_local_path=base_is_local,
        min_peft_version=str(lower),
        era=era,
        field_versions=field_versions,
        removed_fields=removed,
        unknown_fields=unknown,
        extras={k: v for k, v in (fields.model_extra or {}).items() if k != "peft_type"},
        notes=tuple(notes),
    )


def _decode_text(blob: bytes, source: str, notes: list[str]) -> tuple[object, str]:
    """The JSON value of a file's bytes, and its text (for the lines of problems)."""
    if not blob.strip():
        raise MalformedConfigError(
            f"{source}: is empty", hint="restore the adapter_config.json written by peft's save_pretrained"
        )
    if blob.lstrip(b"\xef\xbb\xbf").startswith(_LFS_PREFIX.encode()):
        raise _lfs_error(source)
    if blob.startswith(b"\xef\xbb\xbf"):
        notes.append(
            "file starts with a UTF-8 BOM: peft's json.load fails on it "
            "(JSONDecodeError: Unexpected UTF-8 BOM); re-save it without the BOM"
        )
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedConfigError(
            f"{source}: is not UTF-8 text (byte {exc.start})",
            hint="restore the adapter_config.json written by peft's save_pretrained",
        ) from None
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        raise MalformedConfigError(
            f"{source}: is an HTML page, not JSON",
            hint="download the raw file (the Hub's /resolve/ URL, not /blob/) and try again",
        )
    dupes: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                dupes.append(k)
            out[k] = v
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise MalformedConfigError(
            f"{source}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            hint="fix the JSON syntax, or restore the file written by peft's save_pretrained",
        ) from None
    except RecursionError:
        raise MalformedConfigError(
            f"{source}: JSON is nested too deeply", hint="restore the file written by peft's save_pretrained"
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise MalformedConfigError(
            f"{source}: is not a usable JSON document ({' '.join(str(exc).split())[:120]})",
            hint="restore the file written by peft's save_pretrained",
        ) from None
    if dupes:
        notes.append(f"duplicate keys (the last one wins): {', '.join(sorted(set(dupes)))}")
    return value, text


def decode_config_json(blob: bytes, source: str, notes: list[str]) -> object:
    return _decode_text(blob, source, notes)[0]


def load_adapter_config(path: str | os.PathLike[str]) -> AdapterConfig:
    """Read ``adapter_config.json`` from a file path or from the adapter directory that contains it."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_NAME
        if not p.is_file():
            raise MissingFileError(
                f"{p}: not found",
                hint="pass the folder that holds adapter_config.json (peft's save_pretrained writes it)",
            )
    elif not p.is_file():
        raise MissingFileError(
            f"{p}: not found",
            hint="check the path, or pass the adapter directory that contains adapter_config.json",
        )
    source = str(p)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise MissingFileError(
            f"{source}: cannot be read ({exc.strerror or exc})", hint="check the file's permissions"
        ) from None
    notes: list[str] = []
    value, text = _decode_text(blob, source, notes)
    cfg = parse_adapter_config(value, source=source, text=text)
    if notes:
        cfg = with_notes(cfg, notes)
    return cfg


def with_notes(cfg: AdapterConfig, extra: list[str]) -> AdapterConfig:
    return cfg.model_copy(update={"notes": tuple(extra) + cfg.notes})
