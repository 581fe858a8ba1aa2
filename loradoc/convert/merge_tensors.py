"""The numerics of one merged tensor: read, merge, round, check and hand over in chunks.

- :class:`AdapterTensors`: adapter tensors by key, small ones whole as float32, full replacements as a chunked
  source;
- :func:`emit`: one output tensor as chunks: a copy, a cast, a replacement, a bias addition or a LoRA / DoRA
  merge, ``W + scale * (B @ A)`` computed in float32 in peft's order with ``B @ A`` exactly rounded
  (:class:`~loradoc.convert.delta.ExactDelta`), then rounded once to the output dtype;
- :func:`finite_only`: refuses a chunk holding NaN.

Tensors are read in chunks of :data:`COPY_CHUNK` bytes and computed on in cache-sized row blocks
(``_BLOCK_BYTES`` of float32) with reused scratch buffers: peak memory is a constant plus the LoRA factors of one
module, whatever the tensor's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from loradoc.convert.checkpoint import FLOAT_DTYPES, SourceFile, decode_f32, encode_f32
from loradoc.convert.delta import ExactDelta
from loradoc.errors import BadInputError
from loradoc.io.safetensors import DTYPE_BITS, TensorInfo
from loradoc.io.snapshot import AdapterSnapshot

if TYPE_CHECKING:
    import numpy as np

    from loradoc.convert.merge_plan import Lora, Op

__all__ = ["COPY_CHUNK", "AdapterTensors", "emit", "finite_only"]

COPY_CHUNK = 8 << 20  # bytes per read / per write of a streamed tensor
_BLOCK_BYTES = 512 << 10  # float32 bytes per compute block (cache-sized)


class AdapterTensors:
    """Adapter tensors by key: small ones whole (as float32), big ones (full replacements) as a chunked source."""

    def __init__(self, snap: AdapterSnapshot) -> None:
        self.snap = snap
        self._fd: int | None = None
        self._source: SourceFile | None = None

    def info(self, key: str) -> TensorInfo:
        if self.snap.header is not None:
            return self.snap.header.tensors[key]
        rec = self.snap.tensors[key]
        return TensorInfo(key, rec.dtype, tuple(rec.shape), 0, math.prod(rec.shape) * DTYPE_BITS[rec.dtype] // 8)

    def array(self, key: str) -> np.ndarray:
        """The tensor as a float32 numpy array (a copy)."""
        import numpy as np

        info = self.info(key)
        if info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"adapter tensor {key} is {info.dtype}, not a float", hint="re-export the adapter")
        if self.snap.weights_format == "safetensors":
            src = self.source()
            data = src.read(src.header.data_start + info.begin, info.nbytes)
            return np.array(decode_f32(info.dtype, data, info.shape), dtype=np.float32)
        t = (self.snap._pickle_state or {})[key]
        return t.detach().float().cpu().numpy().astype(np.float32)

    def source(self) -> SourceFile:
        if self._source is None:
            assert self.snap.header is not None
            self._source = SourceFile(self.snap.header, hash_file=False)
        return self._source

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


#: float dtype -> (unsigned view, exponent mask, mantissa mask): an all-ones exponent with a non-zero mantissa is NaN
#: (Inf is legitimate in some bases: Gemma 4's clipping bounds default to +/-inf)
_EXPONENT = {"BF16": ("<u2", 0x7F80, 0x007F), "F16": ("<u2", 0x7C00, 0x03FF), "F32": ("<u4", 0x7F800000, 0x007FFFFF)}


def finite_only(name: str, dtype: str, put: Callable[[Any], None]) -> Callable[[Any], None]:
    """``put`` that refuses a chunk holding NaN: a merged model that computes NaN is no output."""
    import numpy as np

    spec = _EXPONENT.get(dtype)
    if spec is None:
        return put
    view, mask, mantissa = np.dtype(spec[0]), spec[1], spec[2]

    def checked(data: Any) -> None:
        raw = np.frombuffer(data if isinstance(data, bytes | bytearray) else memoryview(data).cast("B"), dtype=view)
        if np.any(((raw & mask) == mask) & ((raw & mantissa) != 0)):
            raise BadInputError(
                f"{name}: the merged tensor holds NaN (from the base weights or the adapter); nothing was written",
                hint="check the base checkpoint (re-download it) and run `loradoc doctor` on the adapter",
            )
        put(data)

    return checked


def emit(op: Op, src: SourceFile, reader: AdapterTensors, put: Callable[[Any], None]) -> None:
    """Produce one output tensor, in order, as chunks handed to ``put``: copy, cast, replace or merge."""
    import numpy as np

    e = op.effect

    if op.src.nbytes == 0:
        return
    if e.empty and op.src.dtype == op.dtype:
        for chunk in src.chunks(op.src, COPY_CHUNK, primary=op.primary):
            put(chunk)
        return
    if e.replace is not None and op.primary and src.hashing:
        # the base bytes are not used, but the base file's hash stream must stay in order
        for _ in src.chunks(op.src, COPY_CHUNK, primary=True):
            pass
    # where the values start from: the base tensor, or the adapter's full replacement
    if e.replace is None:
        start: Any = src
        start_info = op.src
    elif reader.snap.weights_format == "safetensors":
        start, start_info = reader.source(), reader.info(e.replace)
    else:
        start, start_info = _ArraySource.of(e.replace, reader.array(e.replace))
    primary = op.primary and e.replace is None
    if e.lora is None:
        biases = [(reader.array(k).reshape(-1), np.float32(s)) for k, s in e.bias_add]

        def add_biases(rows: slice, block: Any) -> Any:
            for b, scale in biases:
                block += scale * b[rows].reshape(block.shape)
            return block

        _transform(start, start_info, op.dtype, add_biases if biases else None, put, primary=primary)
        return
    _emit_lora(op, e.lora, start, start_info, primary, reader, put)


def _emit_lora(
    op: Op,
    lora: Lora,
    start: Any,
    info: TensorInfo,
    primary: bool,
    reader: AdapterTensors,
    put: Callable[[Any], None],
) -> None:
    import numpy as np

    a = reader.array(lora.a)
    b = reader.array(lora.b)
    s = np.float32(lora.scale)
    row_major = not (lora.embedding or lora.transpose)
    if row_major:  # W (out, in): delta rows = B[rows] @ A
        left, right = b, a
    else:  # embedding W (vocab, dim) / Conv1D W (in, out): delta = (B @ A).T, rows = A[:, rows].T @ B.T
        left, right = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    mag = reader.array(lora.magnitude).reshape(-1) if lora.magnitude else None
    scratch = _Scratch()
    product = ExactDelta(left, right)

    def merge(rows: slice, w: Any) -> Any:
        delta = scratch.like("delta", w)
        product.rows(rows, out=delta)  # in peft's order: (B @ A) * scale, then added; B @ A exactly rounded
        np.multiply(delta, s, out=delta)
        np.add(w, delta, out=w)
        return w

    if mag is None:
        _transform(start, info, op.dtype, merge, put, primary=primary)
    elif row_major:  # DoRA on a linear layer: the norm of each output row

        def dora_rows(rows: slice, w: Any) -> Any:
            w = merge(rows, w)
            norm = np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64))
            w *= (mag[rows] / norm).astype(np.float32)[:, None]
            return w

        _transform(start, info, op.dtype, dora_rows, put, primary=primary)
    else:  # DoRA on an embedding: the norm of each embedding dimension over the whole vocabulary (two passes)
        sq = np.zeros(int(info.shape[1]), dtype=np.float64)

        def col_norms(rows: slice, w: Any) -> Any:
            w = merge(rows, w)
            sq.__iadd__(np.einsum("ij,ij->j", w, w, dtype=np.float64))
            return w

        _transform(start, info, None, col_norms, None, primary=primary)
        factor = (mag.astype(np.float64) / np.sqrt(sq)).astype(np.float32)

        def dora_cols(rows: slice, w: Any) -> Any:
            w = merge(rows, w)
            w *= factor[None, :]
            return w

        _transform(start, info, op.dtype, dora_cols, put, primary=False)


def _transform(
    src: Any,
    info: TensorInfo,
    out_dtype: str | None,
    fn: Callable[[slice, Any], Any] | None,
    put: Callable[[Any], None] | None,
    *,
    primary: bool,
) -> None:
    """Stream a float tensor through ``fn(rows, block) -> block`` (float32, whole rows of dim 0, may work in place)
    and encode the result to ``out_dtype`` (None: results are dropped, for a first pass).

    Two levels: the file is read in chunks of ~COPY_CHUNK bytes (one output buffer each, handed to ``put``);
    inside a chunk, rows are converted and transformed in cache-sized blocks (~_BLOCK_BYTES of float32) with
    reused scratch buffers, so the ~10 elementwise passes of decode / add / round run in cache, not RAM."""
    import numpy as np

    if info.dtype not in FLOAT_DTYPES:
        raise BadInputError(f"tensor {info.name} is {info.dtype}, not a float", hint="check the checkpoint")
    shape = tuple(info.shape) or (1,)
    rows, inner = shape[0], math.prod(shape[1:])
    per_row = inner * DTYPE_BITS[info.dtype] // 8
    chunk_rows = max(1, COPY_CHUNK // max(1, per_row))
    block_rows = max(1, min(chunk_rows, _BLOCK_BYTES // max(1, inner * 4)))
    scratch = _Scratch()
    wbuf = scratch.get("w", block_rows * inner)
    tbuf = scratch.get("t", block_rows * inner, "uint32")
    base = src.header.data_start + info.begin
    for c0 in range(0, rows, chunk_rows):
        c1 = min(rows, c0 + chunk_rows)
        data = memoryview(src.read(base + c0 * per_row, (c1 - c0) * per_row, primary=primary))
        out = np.empty((c1 - c0) * inner, dtype=_NP_OUT[out_dtype]) if out_dtype else None
        for b0 in range(c0, c1, block_rows):
            b1 = min(c1, b0 + block_rows)
            raw = data[(b0 - c0) * per_row : (b1 - c0) * per_row]
            block = decode_f32(info.dtype, raw, (b1 - b0, *shape[1:]), out=wbuf)
            if fn is not None:
                block = fn(slice(b0, b1), block)
            if out is not None:
                encode_f32(block, out_dtype, tbuf, out=out[(b0 - c0) * inner : (b1 - c0) * inner])  # type: ignore[arg-type]
        if out is not None and put is not None:
            put(out)


_NP_OUT = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}


class _ArraySource:
    """An in-memory float32 tensor (an adapter loaded from a pickle) behind SourceFile's read interface."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.header = SimpleNamespace(data_start=0)
        self.hashing = False

    @classmethod
    def of(cls, key: str, arr: Any) -> tuple[_ArraySource, TensorInfo]:
        data = arr.astype("<f4", copy=False).tobytes()
        return cls(data), TensorInfo(key, "F32", tuple(arr.shape), 0, len(data))

    def read(self, offset: int, size: int, *, primary: bool = False) -> bytes:
        return self._data[offset : offset + size]


class _Scratch:
    """Reusable float32 / uint32 work buffers (fresh multi-MB arrays per block cost page faults)."""

    def __init__(self) -> None:
        self._bufs: dict[str, Any] = {}

    def get(self, name: str, n: int, dtype: str = "float32") -> Any:
        import numpy as np

        buf = self._bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
            buf = self._bufs[name] = np.empty(max(n, 1), dtype=dtype)
        return buf[:n]

    def like(self, name: str, arr: Any, dtype: str = "float32") -> Any:
        return self.get(name, arr.size, dtype).reshape(arr.shape)
