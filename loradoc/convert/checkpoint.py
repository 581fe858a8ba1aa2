"""Base checkpoints on disk, for streaming converters: find the (sharded) safetensors files, look tensors up by
layout-independent address, read them in bounded chunks, convert dtypes with numpy, hash on a side thread.

A checkpoint is ``model.safetensors``, or ``model.safetensors.index.json`` + the shards it names. Only headers are
read when it is opened. Tensor names on disk may follow another layout than the module paths of the model class
(a Gemma 3 checkpoint saved by transformers stores ``language_model.model.layers.N...`` while the modules are
``model.language_model.layers.N...``; Gemma4ClippableLinear keeps its weight at ``...q_proj.linear.weight``), so
lookups go through :func:`loradoc.model.layout.address_of` and break ties by the longest common path suffix.

numpy is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.errors import BadInputError, LoradocError, MalformedConfigError, MissingFileError, PickleRefusedError
from loradoc.io.atomic import write_file_atomic
from loradoc.io.hashing import HashThread, sha256_fd
from loradoc.io.safetensors import SafetensorsHeader, TensorInfo, read_header
from loradoc.io.safetensors import pread_exact as _pread_exact
from loradoc.model.layout import Address, address_of

if TYPE_CHECKING:
    import numpy as np

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")

#: Float dtypes that can be read into float32 and written from it.
FLOAT_DTYPES = frozenset({"F32", "BF16", "F16", "F64"})
#: Dtypes that only quantized checkpoints use for weights.
QUANT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2"})

_NP_FLOAT = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Checkpoint:
    """The safetensors files of a base directory, by header. No tensor data has been read."""

    directory: Path
    files: list[Path]
    headers: dict[Path, SafetensorsHeader]
    where: dict[str, Path]  # tensor name -> file
    index_path: Path | None = None
    _by_address: dict[tuple[Address, str], list[str]] = field(default_factory=dict, repr=False)

    def info(self, name: str) -> TensorInfo:
        return self.headers[self.where[name]].tensors[name]

    def ordered(self) -> list[tuple[Path, TensorInfo]]:
        """Every tensor, file by file, in data-section order (a sequential read of each file)."""
        return [(f, t) for f in self.files for t in self.headers[f].ordered_by_offset()]

    @property
    def total_bytes(self) -> int:
        return sum(h.data_size for h in self.headers.values())

    def _index(self) -> dict[tuple[Address, str], list[str]]:
        if not self._by_address:
            for name in self.where:
                module, _, param = name.rpartition(".")
                self._by_address.setdefault((address_of(module), param), []).append(name)
        return self._by_address

    def find(self, module: str, param: str = "weight") -> str | None:
        """The tensor holding ``module``'s ``param`` (any layout; a ClippableLinear's inner ``.linear`` included).

        An exact name wins; otherwise the tensors at the same address, and among several the one whose module path
        shares the longest suffix with ``module``. A tie is an error (the key is ambiguous)."""
        exact = f"{module}.{param}"
        if exact in self.where:
            return exact
        cands = self._index().get((address_of(module), param), [])
        if len(cands) <= 1:
            return cands[0] if cands else None
        want = _components(module)
        scored = sorted(((_common_suffix(want, _components(c.rpartition(".")[0])), c) for c in cands), reverse=True)
        if scored[0][0] == scored[1][0]:
            raise BadInputError(
                f"{module}.{param} matches several base tensors ({scored[0][1]}, {scored[1][1]})",
                hint="save the adapter with the module paths of this base (loradoc repair reroots keys)",
            )
        return scored[0][1]


def _components(module: str) -> list[str]:
    parts = module.removeprefix("base_model.model.").split(".")
    return parts[:-1] if parts and parts[-1] == "linear" else parts


def _common_suffix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def open_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    """Open a base directory's safetensors checkpoint (single file or index + shards), headers only."""
    d = Path(directory)
    index = d / INDEX_NAME
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map is not an object of file names")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MalformedConfigError(
                f"{index} is not a valid safetensors index ({e.__class__.__name__}: {e})",
                hint="restore the index file from the base's source",
            ) from None
        names = sorted(set(weight_map.values()))
        for n in names:
            if "/" in n or "\\" in n or n.startswith("."):
                raise MalformedConfigError(f"{index} names a shard outside the directory: {n!r}", hint="fix the index")
        files = [d / n for n in names]
        for f in files:
            if not f.is_file():
                raise MissingFileError(
                    f"shard {f.name} named by {index.name} is missing from {d}",
                    hint="download the missing shard (the base is incomplete)",
                )
    elif (d / SINGLE_NAME).is_file():
        files, weight_map, index = [d / SINGLE_NAME], None, None
    else:
        pickles = [n for n in _PICKLE_NAMES if (d / n).is_file()]
        if pickles:
            raise PickleRefusedError(
                f"base {d} has only pickle weights ({pickles[0]}); loradoc merges safetensors checkpoints only",
                hint="re-save the base with transformers save_pretrained(safe_serialization=True) "
                "or download its safetensors files",
            )
        raise MissingFileError(
            f"base {d} has no {SINGLE_NAME} or {INDEX_NAME}",
            hint="pass the directory of a full checkpoint (config.json + safetensors weights)",
        )
    headers = {f: read_header(f) for f in files}
    where: dict[str, Path] = {}
    for f, h in headers.items():
        for name in h.tensors:
            if name in where:
                raise BadInputError(
                    f"tensor {name} is stored twice ({where[name].name} and {f.name})",
                    hint="the base checkpoint is inconsistent: re-download it",
                )
            where[name] = f
    if weight_map is not None:
        for name, fname in weight_map.items():
            if where.get(name) != d / fname:
                raise BadInputError(
                    f"{INDEX_NAME} puts {name} in {fname} but that shard does not hold it",
                    hint="the base checkpoint is inconsistent: re-download it",
                )
    return Checkpoint(d, files, headers, where, index)


# ----------------------------------------------------------------------------------------------------------
# reading


class SourceFile:
    """Positional reads from one safetensors file. With ``hash_file``, the file's sha256 is computed from the
    *primary* reads (which must come in file order; gaps are read and hashed too) on a side thread; a file read
    out of order is hashed separately at the end."""

    def __init__(self, header: SafetensorsHeader, *, hash_file: bool) -> None:
        self.header = header
        self.path = header.path
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise MissingFileError(f"{self.path}: cannot open ({exc.strerror})", hint="check the base files") from exc
        size = os.fstat(self.fd).st_size
        if size != header.file_size:
            os.close(self.fd)
            raise BadInputError(
                f"{self.path}: file size changed from {header.file_size} to {size} since its header was read",
                hint="something else is writing the base: wait for it, then run again",
            )
        self._hasher: HashThread | None = HashThread() if hash_file else None
        self._hashed = 0
        self._out_of_order = False

    @property
    def hashing(self) -> bool:
        return self._hasher is not None and not self._out_of_order

    def read(self, offset: int, size: int, *, primary: bool = False) -> bytes:
        """Exactly ``size`` bytes at absolute ``offset``."""
        data = _pread_exact(self.fd, offset, size, self.path)
        if primary and self._hasher is not None and not self._out_of_order:
            if offset < self._hashed:
                self._out_of_order = True
            else:
                self._feed_to(offset)
                self._hasher.update(data)
                self._hashed = offset + size
        return data

    def _feed_to(self, end: int) -> None:
        """Hash the bytes no primary read covered, from where hashing stopped up to ``end`` (in chunks)."""
        assert self._hasher is not None
        while self._hashed < end:
            n = min(16 << 20, end - self._hashed)
            self._hasher.update(_pread_exact(self.fd, self._hashed, n, self.path))
            self._hashed += n

    def chunks(self, info: TensorInfo, chunk_size: int, *, primary: bool = False) -> Iterator[bytes]:
        start = self.header.data_start + info.begin
        pos = 0
        while pos < info.nbytes:
            n = min(chunk_size, info.nbytes - pos)
            yield self.read(start + pos, n, primary=primary)
            pos += n

    def sha256(self) -> str | None:
        """The whole file's sha256 (finishing the side thread); None if hashing was off."""
        if self._hasher is None:
            return None
        if self._out_of_order:
            self._hasher.hexdigest()
            size = os.fstat(self.fd).st_size
            if size != self.header.file_size:
                raise BadInputError(
                    f"{self.path}: file size changed from {self.header.file_size} to {size} while it was read",
                    hint="something else is writing the base: wait for it, then run again",
                )
            return sha256_fd(self.fd, self.path)
        self._feed_to(self.header.file_size)
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def known_sha256(path: Path) -> str | None:
    """The sha256 a Hugging Face cache already names a file by (snapshots/<rev>/x -> blobs/<sha256>), if any."""
    try:
        if not path.is_symlink():
            return None
        real = path.resolve()
    except OSError:
        return None
    if real.parent.name == "blobs" and _HEX64.match(real.name):
        return real.name
    return None


def _cache_file(path: Path) -> Path:
    from loradoc.model.profiles import cache_dir

    key = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()  # noqa: S324 - a file name, not security
    return cache_dir() / "file-sha256" / f"{key}.json"


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def cached_sha256(path: Path) -> str | None:
    """A sha256 loradoc computed earlier for this very file (same path, size, mtime and inode), if any."""
    try:
        data = json.loads(_cache_file(path).read_text(encoding="utf-8"))
        if data.get("stat") == _stat_key(path) and _HEX64.match(str(data.get("sha256", ""))):
            return str(data["sha256"])
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return None


def remember_sha256(path: Path, digest: str) -> None:
    """Cache a computed sha256 keyed by the file's path, size, mtime and inode (best effort)."""
    try:
        data = json.dumps({"stat": _stat_key(path), "sha256": digest}).encode("utf-8")
        write_file_atomic(_cache_file(path), data)
    except (OSError, LoradocError):
        pass


# ----------------------------------------------------------------------------------------------------------
# BLAS threads


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS (OpenBLAS, MKL, BLIS) on one thread inside the block; restored afterwards.

    The merge multiplies thin matrices (rank-r LoRA factors) in cache-sized blocks; OpenBLAS' default of one
    thread per core spends more time synchronising its threads than computing there (measured 4x slower on 2
    cores), and the other cores are busy hashing. threadpoolctl finds the BLAS libraries loaded in the process
    (OpenBLAS under any of its symbol prefixes/suffixes, MKL, BLIS); where none is loaded, nothing happens."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ----------------------------------------------------------------------------------------------------------
# dtype conversion (numpy)


def decode_f32(
    dtype: str, data: bytes | memoryview, shape: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Raw little-endian bytes of a float tensor (or a run of whole rows of one) -> a float32 array.

    With ``out`` (a float32 buffer of at least that many elements) the result is written there and is writable;
    without it, an F32 result is a read-only view of ``data``."""
    import numpy as np

    n = math.prod(shape)
    dst = out.reshape(-1)[:n] if out is not None else None
    if dtype == "BF16":
        u16 = np.frombuffer(data, dtype="<u2")
        u32 = dst.view(np.uint32) if dst is not None else np.empty(u16.shape, dtype=np.uint32)
        np.left_shift(u16, 16, out=u32, dtype=np.uint32)
        return u32.view(np.float32).reshape(shape)
    if dtype in _NP_FLOAT:
        src = np.frombuffer(data, dtype=_NP_FLOAT[dtype])
        if dst is None:
            return (src if dtype == "F32" else src.astype(np.float32)).reshape(shape)
        np.copyto(dst, src, casting="unsafe" if dtype == "F64" else "same_kind")
        return dst.reshape(shape)
    raise BadInputError(f"cannot read a {dtype} tensor as float", hint="only F32/BF16/F16/F64 tensors can be merged")


def encode_f32(
    arr: np.ndarray, dtype: str, scratch: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """A float32 array -> a C-contiguous little-endian array of ``dtype`` (a new one, or ``out``; never ``arr``).

    BF16: round to nearest even, bit for bit what torch's ``.to(torch.bfloat16)`` gives for every non-NaN value
    (NaN -> the quiet NaN 0x7FC0); F16: numpy's IEEE round to nearest even, as torch. ``scratch``: an optional
    uint32 buffer of at least ``arr.size`` elements for the intermediate; ``out``: a flat or same-shape
    destination of the output dtype with ``arr.size`` elements."""
    import numpy as np

    a = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype not in ("BF16", "F16", "F32", "F64"):
        raise BadInputError(f"cannot write {dtype}", hint="use bf16, f16 or f32")
    if dtype != "BF16":
        np_dtype = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]
        if out is None:
            return a.copy() if dtype == "F32" else a.astype(np_dtype)
        with np.errstate(over="ignore"):
            np.copyto(out.reshape(a.shape), a, casting="same_kind")
        return out
    # round to nearest even on the bit pattern: add 0x7FFF + (bit 16), keep the high half
    u = a.view(np.uint32)
    t = scratch.reshape(-1)[: u.size].reshape(u.shape) if scratch is not None else np.empty_like(u)
    np.right_shift(u, 16, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, 0x7FFF, out=t)
    np.add(t, u, out=t)
    res = np.empty(a.shape, dtype="<u2") if out is None else out.reshape(a.shape)
    if sys.byteorder == "little":
        np.copyto(res, t.view("<u2")[..., 1::2])
    else:  # pragma: no cover - big-endian hosts
        np.copyto(res, t >> 16, casting="unsafe")
    if a.size and np.isnan(a.max()):  # max propagates NaN: one cheap pass instead of a mask
        res[np.isnan(a)] = 0x7FC0
    return res if out is None else out
