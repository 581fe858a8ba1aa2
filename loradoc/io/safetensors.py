"""Safetensors I/O without torch: strict header parsing, streaming reads and atomic streaming writes.

File layout (see https://github.com/huggingface/safetensors)::

    8 bytes   N, little-endian u64: the length of the JSON header
    N bytes   UTF-8 JSON object:
              {"__metadata__": {str: str}, "<name>": {"dtype", "shape", "data_offsets"}, ...}
    rest      the data section; ``data_offsets`` = [begin, end) are relative to its start (byte 8 + N)

This module imports only the standard library at import time (numpy is imported inside
:func:`tensor_to_numpy`), so header-only diagnosis starts fast. Every error it raises is a
:mod:`loradoc.errors` class with a one-line message that names the file, and a hint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loradoc.errors import BadInputError, EnvironmentProblem, MalformedSafetensorsError, MissingFileError
from loradoc.io.outputs import dir_aside_prefix, dir_temp_prefix, file_temp_prefix

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, BinaryIO

    import numpy

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "SafetensorsWriter",
    "TensorInfo",
    "TensorSpec",
    "atomic_directory",
    "HashThread",
    "canonical_order",
    "fault_write_delay",
    "fsync_dir",
    "header_bytes_needed",
    "iter_tensor_bytes",
    "iter_tensor_chunks_numpy",
    "parse_header_bytes",
    "pread_exact",
    "read_header",
    "read_tensor_bytes",
    "sha256_file",
    "tensor_to_numpy",
    "write_file_atomic",
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
_DTYPE_RANK = {name: i for i, name in enumerate(DTYPE_BITS)}

#: safetensors refuses headers longer than this (``MAX_HEADER_SIZE`` in its Rust source).
MAX_HEADER_SIZE = 100_000_000

# numpy type strings for the dtypes numpy can hold directly (explicitly little-endian, as on disk).
_NUMPY_DTYPES = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "C64": "<c8",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
}

_FIRST_READ = 64 << 10  # one read usually covers a LoRA adapter's whole header

_HINT_CORRUPT = "the file is corrupt: re-download or re-export it"
_HINT_TRUNCATED = "the file is truncated (an interrupted download or copy?): fetch it again"


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
        info = _lookup(self, name)
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


def _malformed(path: Path | str, what: str, hint: str = _HINT_CORRUPT) -> MalformedSafetensorsError:
    return MalformedSafetensorsError(f"{path}: {what}", hint=hint)


def _sniff(prefix: bytes, path: Path) -> MalformedSafetensorsError | None:
    """A specific error when the bytes are recognisably something other than safetensors."""
    head = prefix[:64].lstrip()
    low = head.lower()
    if head.startswith(b"version https://git-lfs"):
        return _malformed(
            path,
            "is a Git LFS pointer file, not the tensor data",
            "run `git lfs pull` in the repository, or download the file with huggingface_hub",
        )
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return _malformed(
            path,
            "is an HTML/XML page (an error or login page saved in place of the weights), not safetensors",
            "re-download the file (log in or pass a token if the repository is gated)",
        )
    if prefix.startswith(b"PK\x03\x04"):
        return _malformed(
            path,
            "is a zip archive (a torch.save checkpoint?), not safetensors",
            "convert the checkpoint to safetensors, or point loradoc at the original .bin file",
        )
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return _malformed(
            path,
            "is a Python pickle, not safetensors",
            "convert the checkpoint to safetensors, or point loradoc at the original .bin file",
        )
    if prefix.startswith(b"GGUF"):
        return _malformed(path, "is a GGUF file, not safetensors", "use `loradoc convert` for GGUF adapters")
    if head.startswith((b"{", b"[")):
        return _malformed(
            path,
            "is a JSON text file, not safetensors (no 8-byte header length)",
            "check that the file is the weights and not a config or a saved error response; re-download it",
        )
    return None


def _header_length(raw: bytes, file_size: int, path: Path) -> int:
    """Validate the 8-byte prefix against the file size; return N (the JSON header length)."""
    if file_size < 8:
        if file_size == 0:
            raise _malformed(path, "is empty (0 bytes)", _HINT_TRUNCATED)
        raise _malformed(path, f"is only {file_size} bytes, shorter than the 8-byte header length", _HINT_TRUNCATED)
    if len(raw) < 8:
        raise BadInputError(
            f"{path}: only {len(raw)} bytes given, need the 8-byte header length first",
            hint="pass at least the first 8 bytes of the file",
        )
    n: int = struct.unpack("<Q", raw[:8])[0]
    if n == 0:
        raise _malformed(path, "header length is 0 (no JSON header)")
    if 8 + n > file_size:
        sniffed = _sniff(raw, path)
        if sniffed is not None:
            raise sniffed
        hint = _HINT_TRUNCATED if n <= MAX_HEADER_SIZE else "this is probably not a safetensors file: re-download it"
        raise _malformed(path, f"header length {n} past the end of the file (size {file_size})", hint)
    if n > MAX_HEADER_SIZE:
        raise _malformed(
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _parse_tensor(path: Path, name: str, entry: Any) -> TensorInfo:
    """Type checks (those of the safetensors library's serde types) and the size rules of its validation."""
    where = f"tensor '{name}'"
    if not isinstance(entry, dict):
        raise _malformed(path, f"{where}: entry is a JSON {_json_type(entry)}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _malformed(path, f"{where}: entry has no '{key}'")
    fields = [k for k, _ in getattr(entry, "pairs", ()) if k in ("dtype", "shape", "data_offsets")]
    if len(fields) != len(set(fields)):
        raise _malformed(path, f"{where}: entry has a field twice")
    for k, v in entry.items():
        if k not in ("dtype", "shape", "data_offsets"):
            wrong = _has_lone_surrogate(k) and "a key with a lone UTF-16 surrogate escape" or _json_depth_ok(v, 2)
            if wrong:
                raise _malformed(path, f"{where}: extra field '{k.encode('utf-8', 'replace').decode()}' has {wrong}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str):
        raise _malformed(path, f"{where}: dtype is a JSON {_json_type(dtype)}, not a string")
    if dtype not in DTYPE_BITS:
        raise _malformed(
            path,
            f"{where}: unknown dtype '{dtype}'",
            "the file uses a dtype this loradoc does not know: upgrade loradoc, or re-export the adapter "
            "in F32/BF16/F16",
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _malformed(path, f"{where}: shape must be a list of integers, got {json.dumps(shape)[:80]}")
    if any(d < 0 for d in shape):
        raise _malformed(path, f"{where}: shape {shape} has a negative dimension")
    if any(d > _U64_MAX for d in shape):
        raise _malformed(path, f"{where}: shape {json.dumps(shape)[:80]} has a dimension past 2**64")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _malformed(path, f"{where}: data_offsets must be [begin, end], got {json.dumps(offsets)[:80]}")
    if any(o > _U64_MAX for o in offsets):
        raise _malformed(path, f"{where}: data_offsets {json.dumps(offsets)[:80]} are past 2**64")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise _malformed(path, f"{where}: data_offsets [{begin}, {end}] are not 0 <= begin <= end")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tensor_size(path: Path, info: TensorInfo) -> None:
    where = f"tensor '{info.name}'"
    dtype, shape, begin, end = info.dtype, list(info.shape), info.begin, info.end
    acc = 1
    for d in shape:  # the library multiplies with overflow checks, left to right, in 64 bits
        acc *= d
        if acc > _U64_MAX:
            raise _malformed(path, f"{where}: shape {shape} overflows 64 bits")
    if acc * DTYPE_BITS[dtype] > _U64_MAX:
        raise _malformed(path, f"{where}: shape {shape} overflows 64 bits")
    numel = acc
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        raise _malformed(
            path,
            f"{where}: {numel} x {DTYPE_BITS[dtype]}-bit {dtype} elements are not a whole number of bytes",
        )
    if end - begin != bits // 8:
        raise _malformed(
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
        raise _malformed(path, f"header is not valid UTF-8 (bad byte at position {exc.start})") from exc
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_keep_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        raise _malformed(path, f"header is not valid JSON: {exc.msg} (position {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:
        raise _malformed(path, f"header is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise _malformed(path, f"header is a JSON {_json_type(obj)}, not an object")

    # The safetensors library's rules (serde + Metadata::validate): every entry is type-checked, a repeated
    # tensor name keeps its last entry, "__metadata__" may appear once.
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    seen_metadata = False
    for key, value in getattr(obj, "pairs", list(obj.items())):
        if _has_lone_surrogate(key):
            raise _malformed(path, "header has a key with a lone UTF-16 surrogate escape (not valid Unicode)")
        if key == "__metadata__":
            if seen_metadata:
                raise _malformed(path, "header has '__metadata__' twice")
            seen_metadata = True
            if value is None:  # the safetensors library accepts null
                continue
            if not isinstance(value, dict):
                raise _malformed(path, f"__metadata__ is a JSON {_json_type(value)}, not an object")
            for mk, mv in value.items():
                if not isinstance(mv, str):
                    raise _malformed(
                        path,
                        f"__metadata__['{mk}'] is a JSON {_json_type(mv)}; metadata values must be strings",
                    )
                if _has_lone_surrogate(mk) or _has_lone_surrogate(mv):
                    raise _malformed(path, "__metadata__ has a string with a lone UTF-16 surrogate escape")
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
        raise _malformed(
            path,
            f"truncated: tensor '{past[0].name}' data ends at byte {8 + n + past[0].end} but the file "
            f"has only {file_size} bytes ({len(past)} tensor(s) past the end, "
            f"{need - data_size} bytes missing)",
            _HINT_TRUNCATED,
        )

    # Sorted by offsets, the tensors must tile the data section exactly (zero-size ones included): no gap, no
    # overlap, no trailing byte. The safetensors library refuses anything else, and so peft cannot load it.
    pos = 0
    prev: TensorInfo | None = None
    for info in ordered:
        if info.begin > pos:
            raise _malformed(
                path,
                f"{info.begin - pos} unused bytes at data offsets [{pos}, {info.begin}) before tensor "
                f"'{info.name}': the safetensors library refuses a gap between tensors",
            )
        if info.begin < pos:
            other = f"'{prev.name}' [{prev.begin}, {prev.end}) and " if prev is not None else ""
            raise _malformed(
                path,
                f"tensors {other}'{info.name}' [{info.begin}, {info.end}) overlap in the data section",
            )
        pos = info.end
        prev = info
    if data_size > pos:
        raise _malformed(
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


def _open_for_read(path: Path) -> BinaryIO:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: no such file", hint="check the path (or download the adapter first)") from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot stat ({exc.strerror})", hint="check the path and permissions") from exc
    if stat.S_ISDIR(st.st_mode):
        found = sorted(p.name for p in path.glob("*.safetensors"))[:3]
        hint = (
            f"pass a file inside it, e.g. {path / found[0]}"
            if found
            else "pass the .safetensors file itself (this directory holds none)"
        )
        raise BadInputError(f"{path}: is a directory, not a .safetensors file", hint=hint)
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(f"{path}: is not a regular file", hint="pass the .safetensors file itself")
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: no such file", hint="check the path") from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot open ({exc.strerror})", hint="check the file's permissions") from exc


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file. Reads no tensor data."""
    p = Path(path)
    with _open_for_read(p) as fh:
        try:
            file_size = os.fstat(fh.fileno()).st_size
            raw = fh.read(min(file_size, _FIRST_READ))
            n = _header_length(raw, file_size, p)
            if len(raw) < 8 + n:
                raw += fh.read(8 + n - len(raw))
        except OSError as exc:
            raise BadInputError(f"{p}: read failed ({exc.strerror})", hint="check the file and the disk") from exc
        if len(raw) < min(8 + n, file_size):  # the file shrank under us
            raise _malformed(p, f"could read only {len(raw)} of the {8 + n} header bytes", _HINT_TRUNCATED)
    return parse_header_bytes(raw, file_size, p)


# ----------------------------------------------------------------------------------------------------
# Reading tensor data


def _lookup(header: SafetensorsHeader, name: str) -> TensorInfo:
    info = header.tensors.get(name)
    if info is None:
        raise BadInputError(
            f"{header.path}: no tensor named '{name}' (the file has {len(header.tensors)} tensors)",
            hint="use one of the tensor names in the file's header",
        )
    return info


def _fileno(fh: Any) -> int | None:
    if not hasattr(os, "pread"):
        return None
    try:
        return int(fh.fileno())
    except (AttributeError, io.UnsupportedOperation, OSError, ValueError):
        return None


def pread_exact(fd: int, offset: int, size: int, path: Path) -> bytes:
    """Exactly ``size`` bytes at absolute ``offset`` of an open descriptor (a short file is a clear error)."""
    return _read_exact(None, offset, size, path, fd=fd)


def _read_exact(fh: Any, offset: int, size: int, path: Path, *, fd: int | None = None) -> bytes:
    """Exactly ``size`` bytes at absolute ``offset`` (os.pread if there is a descriptor, else seek + read)."""
    if fd is None:
        fd = _fileno(fh)
    parts: list[bytes] = []
    got = 0
    try:
        if fd is None:
            fh.seek(offset)
        while got < size:
            part = os.pread(fd, size - got, offset + got) if fd is not None else fh.read(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    except OSError as exc:
        raise BadInputError(f"{path}: read failed ({exc.strerror})", hint="check the file and the disk") from exc
    if got < size:
        raise _malformed(
            path,
            f"truncated: wanted {size} bytes at byte {offset} but the file ends after {got}",
            _HINT_TRUNCATED,
        )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_tensor_bytes(header: SafetensorsHeader, name: str, fh: BinaryIO | None = None) -> bytes:
    """Exactly the raw (little-endian) bytes of tensor ``name``. ``fh``: an open binary file, or None."""
    info = _lookup(header, name)
    if info.nbytes == 0:
        return b""
    if fh is not None:
        return _read_exact(fh, header.data_start + info.begin, info.nbytes, header.path)
    with _open_for_read(header.path) as own:
        return _read_exact(own, header.data_start + info.begin, info.nbytes, header.path)


def _chunks(fh: BinaryIO, offset: int, size: int, chunk_size: int, path: Path) -> Iterator[bytes]:
    pos = 0
    while pos < size:
        n = min(chunk_size, size - pos)
        yield _read_exact(fh, offset + pos, n, path)
        pos += n


def iter_tensor_bytes(
    header: SafetensorsHeader, names: Iterable[str] | None = None, chunk_size: int = 16 << 20
) -> Iterator[tuple[TensorInfo, Iterator[bytes]]]:
    """Stream tensors as (info, chunks): each chunk at most ``chunk_size`` bytes, read on demand.

    ``names`` None: every tensor, in file order (a sequential read). Consume (or drop) each tensor's chunk
    iterator before advancing to the next tensor; the file is closed when this generator finishes.
    A zero-size tensor yields no chunk."""
    if chunk_size <= 0:
        raise BadInputError(f"chunk_size must be positive, got {chunk_size}", hint="pass a chunk size in bytes")
    infos = header.ordered_by_offset() if names is None else [_lookup(header, n) for n in names]
    with _open_for_read(header.path) as fh:
        size_now = os.fstat(fh.fileno()).st_size
        if size_now != header.file_size:
            raise BadInputError(
                f"{header.path}: file size changed from {header.file_size} to {size_now} since its header was read",
                hint="something else is writing the file: wait for it, then run again",
            )
        for info in infos:
            yield info, _chunks(fh, header.data_start + info.begin, info.nbytes, chunk_size, header.path)


#: The data check's read size: whatever a header declares, no read (and no decoded array) is larger.
DATA_CHUNK_BYTES = 16 << 20


def iter_tensor_chunks_numpy(
    header: SafetensorsHeader, chunk_size: int = DATA_CHUNK_BYTES
) -> Iterator[tuple[TensorInfo, Iterator[numpy.ndarray]]]:
    """Every tensor (file order) as flat numpy chunks of at most ``chunk_size`` bytes read each (BF16 is decoded
    to float32). Dtypes numpy cannot hold raise BadInputError, as :func:`tensor_to_numpy` does."""
    import numpy as np

    for info, chunks in iter_tensor_bytes(header, chunk_size=chunk_size - chunk_size % 8 or 8):
        if info.dtype != "BF16" and info.dtype not in _NUMPY_DTYPES:
            raise BadInputError(
                f"tensor '{info.name}' has dtype {info.dtype}, which numpy cannot hold",
                hint="load this tensor with torch (safetensors.torch) instead",
            )
        np_dtype = _NUMPY_DTYPES.get(info.dtype, "<u2")

        def decode(chunks: Iterator[bytes] = chunks, bf16: bool = info.dtype == "BF16", dt: str = np_dtype):
            for data in chunks:
                if bf16:
                    yield (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
                else:
                    yield np.frombuffer(data, dtype=dt)

        yield info, decode()


def tensor_to_numpy(info: TensorInfo, data: bytes) -> numpy.ndarray:
    """Decode a tensor's raw bytes. F32/F16/F64/C64/ints/BOOL: a (read-only) view of ``data``;
    BF16: a new float32 array (exact: bf16 is the top half of an f32).
    Other dtypes (F8_*, F6_*, F4): BadInputError."""
    import numpy as np

    if len(data) != info.nbytes:
        raise BadInputError(
            f"tensor '{info.name}': got {len(data)} bytes, its header says {info.nbytes}",
            hint="pass exactly the bytes from read_tensor_bytes",
        )
    if info.dtype == "BF16":
        u16 = np.frombuffer(data, dtype="<u2")
        return (u16.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    np_dtype = _NUMPY_DTYPES.get(info.dtype)
    if np_dtype is None:
        raise BadInputError(
            f"tensor '{info.name}' has dtype {info.dtype}, which numpy cannot hold",
            hint="load this tensor with torch (safetensors.torch) instead",
        )
    return np.frombuffer(data, dtype=np_dtype).reshape(info.shape)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 4 << 20) -> str:
    """Hex SHA-256 of a whole file, read in chunks."""
    p = Path(path)
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with _open_for_read(p) as fh:
        try:
            while True:
                n = fh.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    break
                digest.update(view[:n])
        except OSError as exc:
            raise BadInputError(f"{p}: read failed ({exc.strerror})", hint="check the file and the disk") from exc
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class TensorSpec:
    """A tensor planned for :class:`SafetensorsWriter`."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.dtype not in DTYPE_BITS:
            raise BadInputError(
                f"tensor '{self.name}': unknown safetensors dtype '{self.dtype}'",
                hint=f"use one of {', '.join(DTYPE_BITS)}",
            )
        if not all(_is_int(d) and d >= 0 for d in self.shape):
            raise BadInputError(
                f"tensor '{self.name}': shape {self.shape} must be non-negative integers",
                hint="fix the shape",
            )
        if self.numel * DTYPE_BITS[self.dtype] % 8:
            raise BadInputError(
                f"tensor '{self.name}': {self.numel} {self.dtype} elements are not a whole number of bytes",
                hint="sub-byte dtypes need a total bit count divisible by 8",
            )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BITS[self.dtype] // 8

    @classmethod
    def from_info(cls, info: TensorInfo) -> TensorSpec:
        return cls(info.name, info.dtype, info.shape)


def canonical_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The order the safetensors library itself writes: by descending dtype alignment, then by name.
    A plan in this order (and no metadata) gives a file byte-identical to ``safetensors.*.save_file``."""
    return sorted(specs, key=lambda s: (-_DTYPE_RANK[s.dtype], s.name))


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def _env_error(action: str, path: Path, exc: OSError) -> EnvironmentProblem:
    hint = "free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check disk space and permissions"
    return EnvironmentProblem(f"{path}: {action} failed ({exc.strerror or exc})", hint=f"{hint} in {path.parent}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames/creations inside it survive a crash (no-op where unsupported)."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open directories
        return
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise _env_error("opening the directory for fsync", p, exc) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise _env_error("fsync of the directory", p, exc) from exc
    finally:
        os.close(fd)


def _refuse_existing(target: Path) -> BadInputError:
    return BadInputError(
        f"{target}: already exists; refusing to overwrite it",
        hint="choose another output path or pass overwrite",
    )


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # pragma: no cover - best effort cleanup
        pass


def _new_temp_file(target: Path) -> tuple[int, Path]:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # imported here: keeps `import loradoc.io.safetensors` light

        fd, name = tempfile.mkstemp(prefix=file_temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _env_error("creating a temporary file", target, exc) from exc
    with contextlib.suppress(OSError, AttributeError):  # no fchmod on Windows
        os.fchmod(fd, 0o666 & ~_current_umask())
    return fd, Path(name)


def _commit_file(tmp: Path, target: Path, overwrite: bool) -> None:
    if not overwrite and os.path.lexists(target):
        raise _refuse_existing(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_file_atomic(target: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to a temp file beside ``target``, fsync it, then rename it into place.
    Readers see the old file or the new one, never a partial one."""
    target = Path(target)
    if not overwrite and os.path.lexists(target):
        raise _refuse_existing(target)
    fd, tmp = _new_temp_file(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _commit_file(tmp, target, overwrite)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _env_error("atomic write", target, exc) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor; the header is computed up front from the planned tensors.

    Usage::

        plan = [TensorSpec(name, dtype, shape), ...]
        with SafetensorsWriter(target_path, plan, metadata={...}) as w:
            for spec in plan:                     # plan order is required
                w.write(spec.name, chunk)         # any number of calls per tensor; little-endian bytes
        w.sha256[name]                            # hex digest of each tensor's bytes, computed on the fly

    Tensors are laid out contiguously in plan order (pass ``canonical_order(plan)`` to get exactly the layout
    ``safetensors.save_file`` uses). Zero-size tensors need no ``write``. Writing out of order, more or
    fewer bytes than planned, or an unknown name raises BadInputError. Data goes to a temp file beside the
    target; on success it is fsync'd and renamed into place, on any exception it is removed and the target
    is untouched. Peak memory does not grow with the file size.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        plan: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        overwrite: bool = True,
        hash_tensors: bool = True,
    ) -> None:
        self.target = Path(target)
        self.plan: tuple[TensorSpec, ...] = tuple(plan)
        self.overwrite = overwrite
        # hash_tensors=False: no per-tensor sha256 (``sha256`` stays empty), for callers that hash the whole
        # file instead and would otherwise pay for two passes of sha256 over the same bytes
        self.hash_tensors = hash_tensors
        self.sha256: dict[str, str] = {}
        self._index: dict[str, int] = {}
        for i, spec in enumerate(self.plan):
            if not isinstance(spec, TensorSpec):
                raise BadInputError(f"{self.target}: plan entry {i} is not a TensorSpec", hint="build TensorSpecs")
            if spec.name == "__metadata__":
                raise BadInputError(f"{self.target}: '__metadata__' cannot be a tensor name", hint="rename the tensor")
            if spec.name in self._index:
                raise BadInputError(
                    f"{self.target}: tensor '{spec.name}' appears twice in the plan",
                    hint="deduplicate the plan",
                )
            self._index[spec.name] = i
        header: dict[str, Any] = {}
        if metadata is not None:
            bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
            if bad:
                raise BadInputError(
                    f"{self.target}: metadata entry '{bad[0]}' is not str -> str",
                    hint="convert metadata keys and values to strings",
                )
            header["__metadata__"] = dict(metadata)
        offset = 0
        for spec in self.plan:
            header[spec.name] = {
                "dtype": spec.dtype,
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        # The JSON style of the safetensors library (serde_json): compact, raw UTF-8, space-padded to 8 bytes.
        blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        if len(blob) > MAX_HEADER_SIZE:
            raise BadInputError(
                f"{self.target}: header would be {len(blob)} bytes, over the safetensors limit",
                hint="split the tensors across several files",
            )
        self.header_bytes: bytes = struct.pack("<Q", len(blob)) + blob
        self.data_size = offset
        self.total_size = len(self.header_bytes) + offset
        self.committed = False
        self._fh: BinaryIO | None = None
        self._tmp: Path | None = None
        self._cur = 0
        self._written = 0
        self._hasher = hashlib.sha256()
        self._broken = False

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> SafetensorsWriter:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if self._fh is not None or self.committed:
            raise BadInputError(f"{self.target}: writer already opened", hint="use a new SafetensorsWriter")
        if not self.overwrite and os.path.lexists(self.target):
            raise _refuse_existing(self.target)
        fd, self._tmp = _new_temp_file(self.target)
        try:
            self._fh = os.fdopen(fd, "wb")
            self._fh.write(self.header_bytes)
        except OSError as exc:
            self.abort()
            raise _env_error("writing", self.target, exc) from exc

    def abort(self) -> None:
        """Discard everything written; the target is untouched. Safe to call more than once."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        if self._tmp is not None:
            _unlink_quietly(self._tmp)
            self._tmp = None

    def _fail(self, message: str, hint: str) -> BadInputError:
        self._broken = True
        return BadInputError(f"{self.target}: {message}", hint=hint)

    def _finish_current(self) -> None:
        spec = self.plan[self._cur]
        if self.hash_tensors and spec.name not in self.sha256:
            self.sha256[spec.name] = self._hasher.hexdigest()

    def _advance_to(self, idx: int) -> None:
        spec = self.plan[self._cur]
        if self._written != spec.nbytes:
            raise self._fail(
                f"tensor '{self.plan[idx].name}' written before '{spec.name}' was complete "
                f"({self._written} of {spec.nbytes} bytes)",
                "write every tensor completely, in plan order",
            )
        self._finish_current()
        for skipped in self.plan[self._cur + 1 : idx]:
            if skipped.nbytes:
                raise self._fail(
                    f"tensor '{self.plan[idx].name}' written before '{skipped.name}' (out of plan order)",
                    "write the tensors in plan order",
                )
            if self.hash_tensors:
                self.sha256[skipped.name] = hashlib.sha256().hexdigest()
        self._cur = idx
        self._written = 0
        self._hasher = hashlib.sha256()

    def write(self, name: str, data: Any) -> None:
        """Append ``data`` (bytes, bytearray, memoryview or a C-contiguous numpy array) to tensor ``name``."""
        if self._fh is None:
            raise BadInputError(f"{self.target}: writer is not open", hint="use it as a context manager")
        if self._broken:
            raise BadInputError(f"{self.target}: writer failed earlier", hint="start a new SafetensorsWriter")
        idx = self._index.get(name)
        if idx is None:
            raise self._fail(f"tensor '{name}' is not in the plan", "add it to the plan")
        if idx < self._cur:
            raise self._fail(
                f"tensor '{name}' written after '{self.plan[self._cur].name}' (out of plan order)",
                "write the tensors in plan order",
            )
        try:
            view = memoryview(data).cast("B")
        except (TypeError, ValueError) as exc:
            raise self._fail(
                f"tensor '{name}': data is not a contiguous bytes-like object ({exc})",
                "pass bytes, or a C-contiguous numpy array",
            ) from exc
        if idx > self._cur:
            self._advance_to(idx)
        spec = self.plan[idx]
        if self._written + len(view) > spec.nbytes:
            raise self._fail(
                f"tensor '{name}' got {self._written + len(view)} bytes, more than the {spec.nbytes} planned "
                f"for {spec.dtype} {list(spec.shape)}",
                "the data does not match the planned dtype/shape",
            )
        try:
            self._fh.write(view)
        except OSError as exc:
            self._broken = True
            raise _env_error("writing", self.target, exc) from exc
        if self.hash_tensors:
            self._hasher.update(view)
        self._written += len(view)
        if self._written == spec.nbytes:
            self._finish_current()

    def close(self) -> None:
        """Check that every tensor is complete, fsync, rename into place. On error nothing is left behind."""
        if self.committed:
            return
        if self._fh is None:
            raise BadInputError(f"{self.target}: writer is not open", hint="use it as a context manager")
        try:
            if self._broken:
                raise BadInputError(f"{self.target}: writer failed earlier", hint="start a new SafetensorsWriter")
            if self.plan:
                spec = self.plan[self._cur]
                missing = [s for s in self.plan[self._cur + 1 :] if s.nbytes]
                if self._written != spec.nbytes or missing:
                    first = spec if self._written != spec.nbytes else missing[0]
                    done = self._written if first is spec else 0
                    raise BadInputError(
                        f"{self.target}: tensor '{first.name}' incomplete ({done} of {first.nbytes} bytes) "
                        "when the writer closed",
                        hint="write every planned tensor completely",
                    )
                self._finish_current()
                for s in self.plan[self._cur + 1 :]:
                    if self.hash_tensors:
                        self.sha256[s.name] = hashlib.sha256().hexdigest()
            fh = self._fh
            fh.flush()
            os.fsync(fh.fileno())
            size = os.fstat(fh.fileno()).st_size
            fh.close()
            self._fh = None
            if size != self.total_size:  # pragma: no cover - would be a bug here
                raise EnvironmentProblem(
                    f"{self.target}: wrote {size} bytes, expected {self.total_size}", hint="check the disk"
                )
            assert self._tmp is not None
            _commit_file(self._tmp, self.target, self.overwrite)
            self._tmp = None
            self.committed = True
        except OSError as exc:
            self.abort()
            raise _env_error("finishing the write", self.target, exc) from exc
        except BaseException:
            self.abort()
            raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for fname in filenames:
            fpath = os.path.join(dirpath, fname)
            if os.path.islink(fpath):
                continue
            fd = os.open(fpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink_quietly(path)


@contextmanager
def atomic_directory(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target`` (``.<name>.tmp-p<pid>-XXXX``) to fill; on normal exit fsync every
    file and directory in it and rename it to ``target``; on an exception delete it.

    An existing ``target`` is refused (BadInputError) unless ``overwrite``: then the old one is renamed aside
    (``.<name>.old-p<pid>-XXXX``), the new one renamed in, and the old one deleted. A crash leaves only dot-prefixed
    temp dirs, never a half-written ``target`` (a crash between the two renames of an overwrite leaves the
    complete old copy under ``.<name>.old-p<pid>-XXXX``)."""
    import shutil
    import tempfile

    target = Path(target)
    if not overwrite and os.path.lexists(target):
        raise _refuse_existing(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=dir_temp_prefix(target), dir=target.parent))
    except OSError as exc:
        raise _env_error("creating a temporary directory", target, exc) from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())
        _fsync_tree(tmp)
        if os.path.lexists(target):
            if not overwrite:
                raise _refuse_existing(target)
            aside = Path(tempfile.mkdtemp(prefix=dir_aside_prefix(target), dir=target.parent))
            os.rmdir(aside)  # reserve a unique name, then move the old target there
            os.rename(target, aside)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(aside, target)
                raise
            fsync_dir(target.parent)
            _remove(aside)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _env_error("publishing the directory", target, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fault_write_delay() -> float:
    """Seconds to sleep after each tensor written (``LORADOC_FAULT_SLOW_WRITE``): the crash tests' hook for
    killing a writer mid-way. 0 unless set."""
    try:
        return float(os.environ.get("LORADOC_FAULT_SLOW_WRITE", "0"))
    except ValueError:
        return 0.0


class HashThread:
    """sha256 of a byte stream on a worker thread (hashlib releases the GIL), fed through a bounded queue."""

    def __init__(self) -> None:
        import queue
        import threading

        self._q: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=3)
        self._h = hashlib.sha256()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: Any) -> None:
        self._q.put(chunk)

    def hexdigest(self) -> str:
        if self._digest is None:
            self._q.put(None)
            self._t.join()
            self._digest = self._h.hexdigest()
        return self._digest

    def close(self) -> None:
        if self._digest is None and self._t.is_alive():
            self._q.put(None)
            self._t.join()
            self._digest = self._h.hexdigest()
