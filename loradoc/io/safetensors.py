"""Safetensors files without torch: the format's public face. Header reads, positional and streaming tensor
reads, decoding to numpy.

The header's model and its strict parser live in :mod:`loradoc.io.safetensors_header` (re-exported here: this is
the module to import them from); the streaming writer is :mod:`loradoc.io.safetensors_writer`; atomic writes
:mod:`loradoc.io.atomic`; file hashes :mod:`loradoc.io.hashing`.

This module imports only the standard library at import time (numpy is imported inside
:func:`tensor_to_numpy`), so header-only diagnosis starts fast. Every error it raises is a
:mod:`loradoc.errors` class with a one-line message that names the file, and a hint.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from loradoc.errors import BadInputError
from loradoc.io.files import open_regular
from loradoc.io.safetensors_header import (
    DTYPE_BITS,
    HINT_TRUNCATED,
    MAX_HEADER_SIZE,
    SafetensorsHeader,
    TensorInfo,
    header_bytes_needed,
    lookup,
    malformed,
    parse_header_bytes,
)

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, BinaryIO

    import numpy

__all__ = [
    "DATA_CHUNK_BYTES",
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorInfo",
    "header_bytes_needed",
    "iter_tensor_bytes",
    "iter_tensor_chunks_numpy",
    "parse_header_bytes",
    "pread_exact",
    "read_header",
    "read_tensor_bytes",
    "tensor_to_numpy",
]

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


def _open_for_read(path: Path) -> BinaryIO:
    found = sorted(p.name for p in path.glob("*.safetensors"))[:3] if path.is_dir() else []
    hint = (
        f"pass a file inside it, e.g. {path / found[0]}"
        if found
        else "pass the .safetensors file itself (this directory holds none)"
    )
    return open_regular(path, what="a .safetensors file", dir_hint=hint)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file. Reads no tensor data."""
    p = Path(path)
    with _open_for_read(p) as fh:
        try:
            file_size = os.fstat(fh.fileno()).st_size
            raw = fh.read(min(file_size, _FIRST_READ))
            n = header_bytes_needed(raw, file_size, p) - 8
            if len(raw) < 8 + n:
                raw += fh.read(8 + n - len(raw))
        except OSError as exc:
            raise BadInputError(f"{p}: read failed ({exc.strerror})", hint="check the file and the disk") from exc
        if len(raw) < min(8 + n, file_size):  # the file shrank under us
            raise malformed(p, f"could read only {len(raw)} of the {8 + n} header bytes", HINT_TRUNCATED)
    return parse_header_bytes(raw, file_size, p)


# ----------------------------------------------------------------------------------------------------
# Reading tensor data


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
        raise malformed(
            path,
            f"truncated: wanted {size} bytes at byte {offset} but the file ends after {got}",
            HINT_TRUNCATED,
        )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_tensor_bytes(header: SafetensorsHeader, name: str, fh: BinaryIO | None = None) -> bytes:
    """Exactly the raw (little-endian) bytes of tensor ``name``. ``fh``: an open binary file, or None."""
    info = lookup(header, name)
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
    infos = header.ordered_by_offset() if names is None else [lookup(header, n) for n in names]
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
