"""The field types of the manifest schema: each a pydantic ``Annotated`` type that validates one TOML value and, when
it is wrong, says so in one short sentence (turned into ``FILE:LINE: key.path: message`` by validate.py).

Plain types (``StrictStr``, ``Literal[...]``, a pattern-constrained str, ``list[Model]``) are checked by pydantic
itself and their errors worded in validate.py; the unions (an integer or ``"unknown"``, a list of strings or a regex
string...) are checked here by one function each, so that one wrong value is one error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainValidator, StringConstraints
from pydantic_core import PydanticCustomError

SCHEMA_VERSION: Final = 1
UNKNOWN: Final = "unknown"

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._\-]{0,95})?\Z")

# The patterns below are anchored (pydantic searches); validate.py words their errors (PATTERN_MESSAGES).
COMMIT_PATTERN: Final = r"^(unknown|[0-9a-f]{7,64})$"
SHA256_PATTERN: Final = r"^(unknown|[0-9a-f]{64})$"
FINGERPRINT_PATTERN: Final = r"^(unknown|sha256:[0-9a-f]{64})$"
LABEL_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"
LAYERS_PATTERN: Final = r"^(unknown|\d+(-\d+)?(,\d+(-\d+)?)*)$"

PATTERN_MESSAGES: Final = {
    COMMIT_PATTERN: '{v!r} is not a commit sha (7-64 lowercase hex) or "unknown"',
    SHA256_PATTERN: '{v!r} is not a sha256 (64 lowercase hex) or "unknown"',
    FINGERPRINT_PATTERN: '{v!r} is not "sha256:<64 hex>" or "unknown"',
    LABEL_PATTERN: "{v!r}: use letters, digits, '.', '_' or '-' (at most 64, starting with a letter/digit)",
    LAYERS_PATTERN: '{v!r} is not a layer range like "0-33" or "0-3,5" (or "unknown")',
}


def type_name(v: Any) -> str:
    """How a TOML value's type is named in an error."""
    return {
        str: "a string",
        int: "an integer",
        float: "a float",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _bad(message: str) -> PydanticCustomError:
    # the message goes through the context so that braces in a user's value are not read as a template
    return PydanticCustomError("loradoc", "{why}", {"why": message})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def clean_free(value: Any) -> Any:
    """Free-form data made TOML-safe: null dict values dropped (absent == null), null list items dropped,
    tuples -> lists, non-string keys -> strings. Applied when data enters a manifest, so what is kept in memory
    equals what a TOML round trip gives back."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): clean_free(v) for k, v in value.items() if v is not None}
    if kind is list or isinstance(value, list | tuple):
        return [clean_free(v) for v in value if v is not None]
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return None
    return str(value)


_SCALARS: Final = frozenset({str, int, float, bool})
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def valid_id(v: str) -> bool:
    """A Hub repo id (``org/name``), an absolute local path or "unknown"; no ``..`` step, no control character."""
    if v == UNKNOWN:
        return True
    if _CONTROL_RE.search(v):
        return False
    if ".." in v.split("/"):
        return False
    return v.startswith("/") or bool(_REPO_ID_RE.match(v))


@functools.lru_cache(maxsize=4096)
def valid_specifier(v: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(v)
    except InvalidSpecifier:
        return False
    return bool(v.strip())


# -- validators (one error per value) ---------------------------------------------------------------------


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise _bad(f"must be a string, not {type_name(v)}")
    return v


def _nonempty(v: Any) -> str:
    if not _string(v).strip():
        raise _bad("must not be empty")
    return v


def _ident(v: Any) -> str:
    if not valid_id(_nonempty(v)):
        raise _bad(f"{v!r} is neither a Hub repo id (org/name) nor an absolute local path")
    return v


def _specifier(v: Any) -> str:
    if not _string(v).strip():
        raise _bad("must not be empty")
    if not valid_specifier(v):
        raise _bad(f'{v!r} is not a version specifier (e.g. ">=0.18", "==0.19.1", ">=5.5,<5.8")')
    return v


def _specifier_or_unknown(v: Any) -> str:
    return v if v == UNKNOWN else _specifier(v)


def _int_or_unknown(minimum: int) -> Any:
    def check(v: Any) -> int | str:
        if v == UNKNOWN:
            return UNKNOWN
        if not _is_int(v):
            raise _bad(f'must be an integer or "unknown", not {type_name(v)}')
        if v < minimum:
            raise _bad(f"must be >= {minimum}")
        return v

    return check


def _num_or_unknown(v: Any) -> int | float | str:
    if v == UNKNOWN or (isinstance(v, int | float) and not isinstance(v, bool)):
        return v
    raise _bad(f'must be a number or "unknown", not {type_name(v)}')


def _int_min(minimum: int) -> Any:
    def check(v: Any) -> int:
        if not _is_int(v):
            raise _bad(f"must be an integer, not {type_name(v)}")
        if v < minimum:
            raise _bad(f"must be >= {minimum}")
        return v

    return check


def _str_list(*, allow_str: bool = False, allow_unknown: bool = False) -> Any:
    want = "a list of strings" + (" or a string" if allow_str else "") + (' or "unknown"' if allow_unknown else "")

    def check(v: Any) -> list[str] | str:
        if isinstance(v, str) and (allow_str or (allow_unknown and v == UNKNOWN)):
            return v
        if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
            return list(v)
        raise _bad(f"must be {want}")

    return check


def _layer_list_or_unknown(v: Any) -> list[int] | str:
    if v == UNKNOWN:
        return UNKNOWN
    if isinstance(v, list | tuple) and all(_is_int(x) for x in v):
        return list(v)
    raise _bad('must be a list of layer indices or "unknown"')


def _schema_version(v: Any) -> int:
    if not _is_int(v):
        raise _bad(f"must be an integer, not {type_name(v)}")
    if v > SCHEMA_VERSION:
        raise _bad(f"schema {v} is newer than this loradoc reads ({SCHEMA_VERSION}): upgrade loradoc")
    if v < 1:
        raise _bad("must be >= 1")
    return v


def _free_table(v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(f"must be a table, not {type_name(v)}")
    return clean_free(v)


def _clean_if_table(v: Any) -> Any:
    return clean_free(v) if isinstance(v, Mapping) else v


# -- the types --------------------------------------------------------------------------------------------

NonEmpty = Annotated[str, PlainValidator(_nonempty)]
Ident = Annotated[str, PlainValidator(_ident)]
Specifier = Annotated[str, PlainValidator(_specifier)]
SpecifierOrUnknown = Annotated[str, PlainValidator(_specifier_or_unknown)]
IntOrUnknown = Annotated[int | str, PlainValidator(_int_or_unknown(0))]
PositiveIntOrUnknown = Annotated[int | str, PlainValidator(_int_or_unknown(1))]
NumOrUnknown = Annotated[int | float | str, PlainValidator(_num_or_unknown)]
Count = Annotated[int, PlainValidator(_int_min(0))]
Positive = Annotated[int, PlainValidator(_int_min(1))]
StrList = Annotated[list[str], PlainValidator(_str_list())]
StrListOrStr = Annotated[list[str] | str, PlainValidator(_str_list(allow_str=True))]
StrListOrUnknown = Annotated[list[str] | str, PlainValidator(_str_list(allow_unknown=True))]
LayerListOrUnknown = Annotated[list[int] | str, PlainValidator(_layer_list_or_unknown)]
SchemaVersion = Annotated[int, PlainValidator(_schema_version)]
FreeTable = Annotated[dict[str, Any], PlainValidator(_free_table)]
StrTable = Annotated[dict[str, str], BeforeValidator(_clean_if_table)]  # a non-string value: error at its own key
FreeValue = Annotated[Any, PlainValidator(clean_free)]
Commit = Annotated[str, StringConstraints(pattern=COMMIT_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
Fingerprint = Annotated[str, StringConstraints(pattern=FINGERPRINT_PATTERN)]
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
Layers = Annotated[str, StringConstraints(pattern=LAYERS_PATTERN)]
