"""Streaming safetensors writer: the header is computed up front from the planned tensors, the data is written
tensor by tensor (peak memory does not grow with the file), hashed on the fly, and the file is published atomically
through :mod:`loradoc.io.atomic`. Only the standard library is imported at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loradoc.errors import BadInputError, EnvironmentProblem
from loradoc.io.atomic import commit_file, env_error, new_temp_file, refuse_existing, unlink_quietly
from loradoc.io.safetensors_header import DTYPE_BITS, DTYPE_RANK, MAX_HEADER_SIZE, TensorInfo, is_int

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, BinaryIO

__all__ = ["SafetensorsWriter", "TensorSpec", "canonical_order"]


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
        if not all(is_int(d) and d >= 0 for d in self.shape):
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
    return sorted(specs, key=lambda s: (-DTYPE_RANK[s.dtype], s.name))


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
            raise refuse_existing(self.target)
        fd, self._tmp = new_temp_file(self.target)
        try:
            self._fh = os.fdopen(fd, "wb")
            self._fh.write(self.header_bytes)
        except OSError as exc:
            self.abort()
            raise env_error("writing", self.target, exc) from exc

    def abort(self) -> None:
        """Discard everything written; the target is untouched. Safe to call more than once."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        if self._tmp is not None:
            unlink_quietly(self._tmp)
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
            raise env_error("writing", self.target, exc) from exc
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
            commit_file(self._tmp, self.target, self.overwrite)
            self._tmp = None
            self.committed = True
        except OSError as exc:
            self.abort()
            raise env_error("finishing the write", self.target, exc) from exc
        except BaseException:
            self.abort()
            raise
