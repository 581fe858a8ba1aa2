"""The safetensors header: its data model and a strict parser of hostile input, without torch.

File layout (see https://github.com/huggingface/safetensors)::

    8 bytes   N, little-endian u64: the length of the JSON header
    N bytes   UTF-8 JSON object:
              {"__metadata__": {str: str}, "<name>": {"dtype", "shape", "data_offsets"}, ...}
    rest      the data section; ``data_offsets`` = [begin, end) are relative to its start (byte 8 + N)

:func:`parse_header_bytes` accepts exactly what the safetensors library accepts (its serde types and
``Metadata::validate``) and refuses the rest with a :class:`loradoc.errors.MalformedSafetensorsError` whose
one-line message names the file and what is wrong, with a hint. Only the standard library is imported.
Reading files is :mod:`loradoc.io.safetensors`; writing them :mod:`loradoc.io.safetensors_writer`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from loradoc.errors import BadInputError, MalformedSafetensorsError

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = [
    "DTYPE_BITS",
    "DTYPE_RANK",
    "MAX_HEADER_SIZE",
    "HINT_TRUNCATED",
    "SafetensorsHeader",
    "TensorInfo",
    "header_bytes_needed",
    "is_int",
    "lookup",
    "malformed",
    "parse_header_bytes",
]

#: Bits per element of every dtype safetensors 0.8 knows, in the order of its Rust ``Dtype`` enum
#: (which is also its alignment order: ``save_file`` lays tensors out by descending position here,
#: then by name).
#: Sub-byte dtypes (F4, F6_*) are packed: a tensor's total bit count must be a multiple of 8.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
DTYPE_RANK = {name: i for i, name in enumerate(DTYPE_BITS)}

#: safetensors refuses headers longer than this (``MAX_HEADER_SIZE`` in its Rust source).
MAX_HEADER_SIZE = 100_000_000

_HINT_CORRUPT = "the file is corrupt: re-download or re-export it"
HINT_TRUNCATED = "the file is truncated (an interrupted download or copy?): fetch it again"


# ----------------------------------------------------------------------------------------------------
# Header model


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header. ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits(self) -> int:
        """Bits per element (4 for F4, 6 for F6_*, ...)."""
        return DTYPE_BITS[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header. No tensor data has been read."""

    path: Path
    header_size: int  # N, the 8-byte little-endian length
    data_start: int  # 8 + N
    file_size: int
    metadata: dict[str, str]  # "__metadata__" ({} when absent or null)
    tensors: dict[str, TensorInfo]  # in the order of the JSON header
    #: Byte ranges of the data section that no tensor covers. Always empty: like the safetensors library, the
    #: parser refuses a gap, an overlap or trailing bytes (kept for callers that still read it).
    gaps: tuple[tuple[int, int], ...] = field(default=())

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start

    def ordered_by_offset(self) -> list[TensorInfo]:
        """Tensors sorted by their position in the data section (header order breaks ties)."""
        return sorted(self.tensors.values(), key=lambda t: (t.begin, t.end))

    def file_range(self, name: str) -> tuple[int, int]:
        """Absolute byte range [begin, end) of tensor ``name`` in the file (for os.pread or an HTTP Range)."""
        info = lookup(self, name)
        return self.data_start + info.begin, self.data_start + info.end

    @property
    def loadable_by_safetensors(self) -> bool:
        """Whether the safetensors library would accept this layout: tensors sorted by offset must tile the
        data section exactly, with no gap, no overlap and no trailing byte (its ``Metadata::validate``)."""
        pos = 0
        for info in self.ordered_by_offset():
            if info.begin != pos:
                return False
            pos = info.end
        return pos == self.data_size

    def notes(self) -> list[str]:
        """Human-readable remarks on things that are allowed but unusual (gaps, trailing bytes)."""
        out = []
        last_end = max((t.end for t in self.tensors.values()), default=0)
        for begin, end in self.gaps:
            where = "after the last tensor" if begin >= last_end else "between tensors"
            out.append(f"{end - begin} unused bytes {where} at data offsets [{begin}, {end})")
        if out:
            out.append("the safetensors library refuses files whose tensors do not exactly tile the data section")
        return out


# ----------------------------------------------------------------------------------------------------
# Header parsing


def malformed(path: Path | str, what: str, hint: str = _HINT_CORRUPT) -> MalformedSafetensorsError:
    return MalformedSafetensorsError(f"{path}: {what}", hint=hint)


def _sniff(prefix: bytes, path: Path) -> MalformedSafetensorsError | None:
    """A specific error when the bytes are recognisably something other than safetensors."""
    head = prefix[:64].lstrip()
    low = head.lower()
    if head.startswith(b"version https://git-lfs"):
        return malformed(
            path,
            "is a Git LFS pointer file, not the tensor data",
            "run `git lfs pull` in the repository, or download the file with huggingface_hub",
        )
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return malformed(
            path,
            "is an HTML/XML page (an error or login page saved in place of the weights), not safetensors",
            "re-download the file (log in or pass a token if the repository is gated)",
        )
    if prefix.startswith(b"PK\x03\x04"):
        return malformed(
            path,
            "is a zip archive (a torch.save checkpoint?), not safetensors",
            "convert the checkpoint to safetensors, or point loradoc at the original .bin file",
        )
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return malformed(
            path,
            "is a Python pickle, not safetensors",
            "convert the checkpoint to safetensors, or point loradoc at the original .bin file",
        )
    if prefix.startswith(b"GGUF"):
        return malformed(path, "is a GGUF file, not safetensors", "use `loradoc convert` for GGUF adapters")
    if head.startswith((b"{", b"[")):
        return malformed(
            path,
            "is a JSON text file, not safetensors (no 8-byte header length)",
            "check that the file is the weights and not a config or a saved error response; re-download it",
        )
    return None


def _header_length(raw: bytes, file_size: int, path: Path) -> int:
    """Validate the 8-byte prefix against the file size; return N (the JSON header length)."""
    if file_size < 8:
        if file_size == 0:
            raise malformed(path, "is empty (0 bytes)", HINT_TRUNCATED)
        raise malformed(path, f"is only {file_size} bytes, shorter than the 8-byte header length", HINT_TRUNCATED)
    if len(raw) < 8:
        raise BadInputError(
            f"{path}: only {len(raw)} bytes given, need the 8-byte header length first",
            hint="pass at least the first 8 bytes of the file",
        )
    n: int = struct.unpack("<Q", raw[:8])[0]
    if n == 0:
        raise malformed(path, "header length is 0 (no JSON header)")
    if 8 + n > file_size:
        sniffed = _sniff(raw, path)
        if sniffed is not None:
            raise sniffed
        hint = HINT_TRUNCATED if n <= MAX_HEADER_SIZE else "this is probably not a safetensors file: re-download it"
        raise malformed(path, f"header length {n} past the end of the file (size {file_size})", hint)
    if n > MAX_HEADER_SIZE:
        raise malformed(
            path,
            f"header length {n} is absurd (over the {MAX_HEADER_SIZE}-byte limit of safetensors)",
            "this is probably not a safetensors file: re-download it",
        )
    return n


def header_bytes_needed(prefix: bytes, file_size: int, path: str | os.PathLike[str]) -> int:
    """How many leading bytes (8 + N) :func:`parse_header_bytes` needs, from the first >= 8 bytes of the file.

    For HTTP-Range header reads: fetch 8 bytes (or more), call this, fetch the rest, then parse."""
    return 8 + _header_length(prefix, file_size, Path(path))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


class _Pairs(dict):  # type: ignore[type-arg]
    """A JSON object that remembers every (key, value) pair: duplicates included, in order (the last one wins, as
    in the safetensors library, whose serde maps keep the last value but still type-check every one)."""

    pairs: list[tuple[str, Any]]


def _keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _Pairs(pairs)
    out.pairs = pairs
    return out


def _parse_int(text: str) -> Any:
    # serde_json reads "-0" as the float -0.0 (so it is not an offset or a dimension); Python would give int 0
    return -0.0 if text == "-0" else int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # serde_json: "number out of range"
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_U64_MAX = (1 << 64) - 1
#: serde_json's recursion limit, as the safetensors library meets it: at most 127 nested objects/arrays.
_MAX_JSON_DEPTH = 127


def _json_depth_ok(value: Any, depth: int) -> str | None:
    """None when ``value`` (nested ``depth`` containers deep) is within serde_json's limits and has no lone
    surrogate; else what is wrong."""
    stack = [(value, depth)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            if _has_lone_surrogate(v):
                return "a string with a lone UTF-16 surrogate escape"
        elif isinstance(v, dict | list):
            if d + 1 > _MAX_JSON_DEPTH:
                return f"JSON nested more than {_MAX_JSON_DEPTH} levels deep"
            items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
            for k, x in items:
                if k is not None and _has_lone_surrogate(k):
                    return "a key with a lone UTF-16 surrogate escape"
                stack.append((x, d + 1))
    return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _parse_tensor(path: Path, name: str, entry: Any) -> TensorInfo:
    """Type checks (those of the safetensors library's serde types) and the size rules of its validation."""
    where = f"tensor '{name}'"
    if not isinstance(entry, dict):
        raise malformed(path, f"{where}: entry is a JSON {_json_type(entry)}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise malformed(path, f"{where}: entry has no '{key}'")
    fields = [k for k, _ in getattr(entry, "pairs", ()) if k in ("dtype", "shape", "data_offsets")]
    if len(fields) != len(set(fields)):
        raise malformed(path, f"{where}: entry has a field twice")
    for k, v in entry.items():
        if k not in ("dtype", "shape", "data_offsets"):
            wrong = _has_lone_surrogate(k) and "a key with a lone UTF-16 surrogate escape" or _json_depth_ok(v, 2)
            if wrong:
                raise malformed(path, f"{where}: extra field '{k.encode('utf-8', 'replace').decode()}' has {wrong}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str):
        raise malformed(path, f"{where}: dtype is a JSON {_json_type(dtype)}, not a string")
    if dtype not in DTYPE_BITS:
        raise malformed(
            path,
            f"{where}: unknown dtype '{dtype}'",
            "the file uses a dtype this loradoc does not know: upgrade loradoc, or re-export the adapter "
            "in F32/BF16/F16",
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(is_int(d) for d in shape):
        raise malformed(path, f"{where}: shape must be a list of integers, got {json.dumps(shape)[:80]}")
    if any(d < 0 for d in shape):
        raise malformed(path, f"{where}: shape {shape} has a negative dimension")
    if any(d > _U64_MAX for d in shape):
        raise malformed(path, f"{where}: shape {json.dumps(shape)[:80]} has a dimension past 2**64")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
        raise malformed(path, f"{where}: data_offsets must be [begin, end], got {json.dumps(offsets)[:80]}")
    if any(o > _U64_MAX for o in offsets):
        raise malformed(path, f"{where}: data_offsets {json.dumps(offsets)[:80]} are past 2**64")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise malformed(path, f"{where}: data_offsets [{begin}, {end}] are not 0 <= begin <= end")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tensor_size(path: Path, info: TensorInfo) -> None:
    where = f"tensor '{info.name}'"
    dtype, shape, begin, end = info.dtype, list(info.shape), info.begin, info.end
    acc = 1
    for d in shape:  # the library multiplies with overflow checks, left to right, in 64 bits
        acc *= d
        if acc > _U64_MAX:
            raise malformed(path, f"{where}: shape {shape} overflows 64 bits")
    if acc * DTYPE_BITS[dtype] > _U64_MAX:
        raise malformed(path, f"{where}: shape {shape} overflows 64 bits")
    numel = acc
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        raise malformed(
            path,
            f"{where}: {numel} x {DTYPE_BITS[dtype]}-bit {dtype} elements are not a whole number of bytes",
        )
    if end - begin != bits // 8:
        raise malformed(
            path,
            f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but {dtype} shape "
            f"{list(shape)} needs {bits // 8}",
        )


def parse_header_bytes(raw: bytes, file_size: int, path: Path) -> SafetensorsHeader:
    """Parse and validate a header from ``raw`` = the first 8 + N bytes of a file of ``file_size`` bytes.

    ``raw`` may be longer (extra bytes are ignored). Also used for HTTP-Range reads of remote files."""
    path = Path(path)
    n = _header_length(raw, file_size, path)
    if len(raw) < 8 + n:
        raise BadInputError(
            f"{path}: only {len(raw)} of the {8 + n} header bytes given",
            hint=f"read the first {8 + n} bytes of the file (see header_bytes_needed)",
        )
    blob = bytes(raw[8 : 8 + n])
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        sniffed = _sniff(raw, path)
        if sniffed is not None:
            raise sniffed from exc
        raise malformed(path, f"header is not valid UTF-8 (bad byte at position {exc.start})") from exc
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_keep_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        raise malformed(path, f"header is not valid JSON: {exc.msg} (position {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:
        raise malformed(path, f"header is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise malformed(path, f"header is a JSON {_json_type(obj)}, not an object")

    # The safetensors library's rules (serde + Metadata::validate): every entry is type-checked, a repeated
    # tensor name keeps its last entry, "__metadata__" may appear once.
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    seen_metadata = False
    for key, value in getattr(obj, "pairs", list(obj.items())):
        if _has_lone_surrogate(key):
            raise malformed(path, "header has a key with a lone UTF-16 surrogate escape (not valid Unicode)")
        if key == "__metadata__":
            if seen_metadata:
                raise malformed(path, "header has '__metadata__' twice")
            seen_metadata = True
            if value is None:  # the safetensors library accepts null
                continue
            if not isinstance(value, dict):
                raise malformed(path, f"__metadata__ is a JSON {_json_type(value)}, not an object")
            for mk, mv in value.items():
                if not isinstance(mv, str):
                    raise malformed(
                        path,
                        f"__metadata__['{mk}'] is a JSON {_json_type(mv)}; metadata values must be strings",
                    )
                if _has_lone_surrogate(mk) or _has_lone_surrogate(mv):
                    raise malformed(path, "__metadata__ has a string with a lone UTF-16 surrogate escape")
            metadata = dict(value)
        else:
            tensors.pop(key, None)  # the last entry wins, in the position of the last one
            tensors[key] = _parse_tensor(path, key, value)
    for info in tensors.values():
        _check_tensor_size(path, info)

    data_size = file_size - 8 - n
    ordered = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
    past = [t for t in ordered if t.end > data_size]
    if past:
        need = max(t.end for t in past)
        raise malformed(
            path,
            f"truncated: tensor '{past[0].name}' data ends at byte {8 + n + past[0].end} but the file "
            f"has only {file_size} bytes ({len(past)} tensor(s) past the end, "
            f"{need - data_size} bytes missing)",
            HINT_TRUNCATED,
        )

    # Sorted by offsets, the tensors must tile the data section exactly (zero-size ones included): no gap, no
    # overlap, no trailing byte. The safetensors library refuses anything else, and so peft cannot load it.
    pos = 0
    prev: TensorInfo | None = None
    for info in ordered:
        if info.begin > pos:
            raise malformed(
                path,
                f"{info.begin - pos} unused bytes at data offsets [{pos}, {info.begin}) before tensor "
                f"'{info.name}': the safetensors library refuses a gap between tensors",
            )
        if info.begin < pos:
            other = f"'{prev.name}' [{prev.begin}, {prev.end}) and " if prev is not None else ""
            raise malformed(
                path,
                f"tensors {other}'{info.name}' [{info.begin}, {info.end}) overlap in the data section",
            )
        pos = info.end
        prev = info
    if data_size > pos:
        raise malformed(
            path,
            f"{data_size - pos} trailing bytes after the last tensor (data offsets [{pos}, {data_size})): the "
            "safetensors library refuses them",
        )

    return SafetensorsHeader(
        path=path,
        header_size=n,
        data_start=8 + n,
        file_size=file_size,
        metadata=metadata,
        tensors=tensors,
    )


def lookup(header: SafetensorsHeader, name: str) -> TensorInfo:
    info = header.tensors.get(name)
    if info is None:
        raise BadInputError(
            f"{header.path}: no tensor named '{name}' (the file has {len(header.tensors)} tensors)",
            hint="use one of the tensor names in the file's header",
        )
    return info
