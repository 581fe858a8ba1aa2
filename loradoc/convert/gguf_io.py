"""Shared plumbing of the GGUF converters: base checkpoints, adapter LoRA pairs, chunked tensors, atomic writes.

Memory never grows with a tensor's size: base tensors are read, merged, converted and written in row chunks of at
most ``CHUNK_ELEMENTS`` elements (a 262144 x 10752 per-layer embedding is never upcast whole). numpy, torch and gguf
are imported inside functions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.errors import BadInputError, MalformedConfigError, MissingFileError, UnknownBaseError
from loradoc.io.atomic import atomic_file
from loradoc.io.safetensors import SafetensorsHeader, TensorInfo, read_header
from loradoc.model.layout import Towers, parse_key, tower_of
from loradoc.progress import Progress

if TYPE_CHECKING:
    import numpy as np

    from loradoc.io.snapshot import AdapterSnapshot

#: Elements per row chunk (32 MiB of float32): bounds the working set of every tensor conversion.
CHUNK_ELEMENTS = 8 << 20
_FLOAT_DTYPES = ("F32", "BF16", "F16")


# ----------------------------------------------------------------------------------------------------------
# base checkpoint


@dataclass
class BaseCheckpoint:
    """A local base directory: config.json (raw), safetensors headers, key -> (header, info)."""

    directory: Path
    config: dict[str, Any]
    tensors: dict[str, tuple[SafetensorsHeader, TensorInfo]]  # in file order, shards in index order

    @property
    def files(self) -> list[Path]:
        seen: dict[Path, None] = {}
        for h, _ in self.tensors.values():
            seen.setdefault(h.path, None)
        return list(seen)


def open_base(base: str | os.PathLike[str]) -> BaseCheckpoint:
    """Open a local base directory with config.json and safetensors weights (single file or sharded)."""
    d = Path(base).expanduser()
    if not d.is_dir():
        from loradoc.model.profiles import shipped_bases

        shipped = {k.lower() for k in shipped_bases()}
        if str(base).lower() in shipped:
            raise UnknownBaseError(
                f"{base} is a shipped base id: loradoc knows its config but has none of its weights",
                hint=f"download it (`loradoc pull {base}` or huggingface-cli download) and pass the directory",
            )
        raise MissingFileError(f"base directory {d} not found", hint="pass the local folder of the base checkpoint")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise MissingFileError(
            f"base directory {d} has no config.json", hint="pass the folder of a transformers checkpoint"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedConfigError(
            f"{cfg_path} is not valid JSON ({e.__class__.__name__})", hint="restore it"
        ) from None
    if not isinstance(config, dict):
        raise MalformedConfigError(f"{cfg_path} is not a JSON object", hint="restore the base's config.json")
    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    files: list[Path]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MalformedConfigError(f"{index} is not a safetensors index ({e})", hint="restore it") from None
        files = list(dict.fromkeys(d / f for f in weight_map.values()))
    elif single.is_file():
        files = [single]
    else:
        files = sorted(d.glob("*.safetensors"))
        if not files:
            has_bin = any(d.glob("*.bin")) or any(d.glob("*.pt"))
            raise MissingFileError(
                f"base directory {d} has no safetensors weights",
                hint="convert the checkpoint to safetensors first"
                if has_bin
                else "download the base's weights (model*.safetensors) into the directory",
            )
    tensors: dict[str, tuple[SafetensorsHeader, TensorInfo]] = {}
    for f in files:
        if not f.is_file():
            raise MissingFileError(f"{f}: shard listed in the index is missing", hint="download every shard")
        header = read_header(f)
        for name, info in header.tensors.items():
            tensors[name] = (header, info)
    return BaseCheckpoint(d, config, tensors)


# ----------------------------------------------------------------------------------------------------------
# reading rows as float32


def _decode_f32(raw: bytes, dtype: str) -> np.ndarray:
    import numpy as np

    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").copy()
    if dtype == "BF16":
        u32 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        u32 <<= 16
        return u32.view(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    raise AssertionError(dtype)


def check_float(name: str, info: TensorInfo, where: Path) -> None:
    if info.dtype not in _FLOAT_DTYPES:
        raise BadInputError(
            f"{where}: tensor '{name}' has dtype {info.dtype}; loradoc converts float checkpoints only (F32/BF16/F16)",
            hint="use the full-precision original of a quantized base (`loradoc repair --also full-precision-base`)",
        )


def rows_and_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return math.prod(shape[:-1]), shape[-1]


def iter_row_chunks(
    fd: int, header: SafetensorsHeader, info: TensorInfo, *, rows: int | None = None, raw: bool = False
) -> Iterator[tuple[int, Any]]:
    """(first row, chunk) over the first ``rows`` rows (default: all) of a tensor, in chunks of at most
    CHUNK_ELEMENTS elements: float32 arrays of shape (n, cols), or the raw little-endian bytes when ``raw``."""
    import numpy as np

    n_rows, cols = rows_and_cols(info.shape)
    rows = n_rows if rows is None else rows
    esize = info.bits // 8
    row_bytes = cols * esize
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    base_off = header.data_start + info.begin
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        want = n * row_bytes
        data = os.pread(fd, want, base_off + r0 * row_bytes)
        while len(data) < want:  # pread may return short reads on some filesystems
            more = os.pread(fd, want - len(data), base_off + r0 * row_bytes + len(data))
            if not more:
                raise BadInputError(
                    f"{header.path}: truncated while reading '{info.name}'", hint="re-download the base checkpoint"
                )
            data += more
        if raw:
            yield r0, data
        else:
            yield r0, _decode_f32(data, info.dtype).reshape(n, cols) if cols else np.zeros((n, 0), np.float32)


# ----------------------------------------------------------------------------------------------------------
# quantisation of chunks (gguf-py's own routines: bit-identical to llama.cpp's converter)


def qtype_enum(qtype: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[qtype]


def tensor_nbytes(shape: tuple[int, ...], qtype: str) -> int:
    import gguf

    q = qtype_enum(qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[q]
    rows, cols = rows_and_cols(shape)
    return rows * (cols // block) * type_size


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None
    return torch


def quantize_chunk(chunk_f32: np.ndarray, qtype: str) -> np.ndarray:
    """float32 rows -> the bytes of ``qtype``: exactly gguf-py's ``gguf.quants.quantize`` (what llama.cpp's
    converter uses), with F16/BF16 rounding (round to nearest even) done by torch, 6-7x faster than numpy."""
    import gguf
    import numpy as np

    chunk = np.ascontiguousarray(chunk_f32, dtype=np.float32)
    if qtype == "F32":
        return chunk
    if qtype in ("F16", "BF16") and not np.isnan(chunk).any():  # NaN payloads: leave those to gguf-py
        torch = _torch()
        if torch is not None:
            t = torch.from_numpy(chunk)
            if qtype == "F16":
                return t.to(torch.float16).numpy()
            return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
    return gguf.quants.quantize(chunk, qtype_enum(qtype))


def make_writer(arch: str) -> Any:
    """A gguf.GGUFWriter whose metadata arrays (262144-token vocabularies) are packed in bulk: the same bytes
    as gguf-py's per-element packing, a few hundred times faster."""
    import struct

    import gguf
    import numpy as np

    numeric = {
        gguf.GGUFValueType.UINT8: "<u1",
        gguf.GGUFValueType.INT8: "<i1",
        gguf.GGUFValueType.UINT16: "<u2",
        gguf.GGUFValueType.INT16: "<i2",
        gguf.GGUFValueType.UINT32: "<u4",
        gguf.GGUFValueType.INT32: "<i4",
        gguf.GGUFValueType.FLOAT32: "<f4",
        gguf.GGUFValueType.UINT64: "<u8",
        gguf.GGUFValueType.INT64: "<i8",
        gguf.GGUFValueType.FLOAT64: "<f8",
    }

    class _Writer(gguf.GGUFWriter):  # type: ignore[misc]
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if (
                vtype == gguf.GGUFValueType.ARRAY
                and isinstance(val, list | tuple)
                and len(val) > 16
                and self.endianess == gguf.GGUFEndian.LITTLE
            ):
                kinds = {type(v) for v in val}
                if len(kinds) == 1:
                    ltype = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
                    head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
                    if ltype == gguf.GGUFValueType.STRING:
                        enc = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
                        lens = np.fromiter((len(e) for e in enc), dtype="<u8", count=len(enc)).tobytes()
                        parts = [b""] * (2 * len(enc))
                        parts[0::2] = [lens[8 * i : 8 * i + 8] for i in range(len(enc))]
                        parts[1::2] = enc
                        return head + b"".join(parts)
                    if ltype in numeric and all(issubclass(k, int | float) and k is not bool for k in kinds):
                        return head + np.asarray(val, dtype=numeric[ltype]).tobytes()
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return _Writer(path=None, arch=arch)


# ----------------------------------------------------------------------------------------------------------
# adapter LoRA pairs


@dataclass
class LoraPair:
    """One adapted module: its A/B tensors in the adapter file and the scale peft applies."""

    module: str  # module path as written in the adapter (no base_model.model. prefix)
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scale: float  # what peft multiplies B @ A by (alpha / r, or alpha / sqrt(r) with rslora)
    embedding: bool = False  # lora_embedding_A/B (A: r x num_embeddings, B: dim x r)
    gguf_name: str | None = None  # the base tensor it adapts (blk.N.attn_q.weight ...)


@dataclass
class AdapterLoras:
    pairs: list[LoraPair]
    tower_keys: list[str] = field(default_factory=list)  # LoRA tensors on vision/audio/projector modules
    #: module -> key of a full weight peft saved with the adapter (``<module>.base_layer.weight``: embedding
    #: layers in target_modules make peft save them, and loading the adapter puts them into the model)
    full_weights: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tower_pairs: list[LoraPair] = field(default_factory=list)  # with collect_loras(towers=True)


def collect_loras(
    snapshot: AdapterSnapshot, *, towers: bool = False, base_towers: Towers | None = None
) -> AdapterLoras:
    """Group the adapter's tensors into LoRA pairs with peft's scaling; refuse what a GGUF cannot carry.
    ``towers``: also group the vision / audio / projector LoRAs (``tower_pairs``, for an mmproj GGUF).
    ``base_towers``: the base profile's towers (module prefix -> kind), which decide which keys are tower keys
    (without them, tower names only: :func:`loradoc.convert.gguf_names.base_towers`)."""
    cfg = snapshot.config
    if cfg.peft_type != "LORA":
        raise BadInputError(
            f"{snapshot.label} is a {cfg.peft_type} adapter; GGUF conversion supports LoRA only",
            hint="merge it with peft (merge_and_unload) and convert the merged checkpoint with llama.cpp",
        )
    if cfg.use_dora:
        raise BadInputError(
            f"{snapshot.label} is a DoRA adapter (use_dora); loradoc's GGUF converters do not implement DoRA yet",
            hint="merge it with peft (merge_and_unload + save_pretrained) and convert the merged checkpoint",
        )
    by_module: dict[str, dict[str, str]] = {}
    tower_modules: dict[str, dict[str, str]] = {}
    tower_keys: list[str] = []
    extra: list[str] = []
    full_weights: dict[str, str] = {}
    for key in snapshot.tensors:
        p = parse_key(key)
        if tower_of(p.module, base_towers) != "language":
            tower_keys.append(key)
            if towers and p.kind in ("lora_A", "lora_B"):
                tower_modules.setdefault(p.module, {})[p.kind] = key
            continue
        if p.kind in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            by_module.setdefault(p.module, {})[p.kind] = key
        elif p.kind == "lora_B_bias":
            raise BadInputError(
                f"{snapshot.label} has LoRA biases (lora_bias=True, e.g. {key}); GGUF conversion does not support them",
                hint="merge it with peft and convert the merged checkpoint",
            )
        elif key.endswith(".base_layer.weight"):
            full_weights[p.module.removesuffix(".base_layer")] = key
        else:
            extra.append(key)
    if extra:
        raise BadInputError(
            f"{snapshot.label} carries {len(extra)} full (non-LoRA) tensors, e.g. {extra[0]} "
            "(modules_to_save / trainable tokens); GGUF conversion supports LoRA pairs only",
            hint="merge it with peft (merge_and_unload) and convert the merged checkpoint",
        )
    pairs = _pairs(snapshot, by_module)
    return AdapterLoras(pairs, tower_keys, full_weights, tower_pairs=_pairs(snapshot, tower_modules))


def _pairs(snapshot: AdapterSnapshot, by_module: dict[str, dict[str, str]]) -> list[LoraPair]:
    from loradoc.model.peft_patterns import alpha_for, rank_for

    cfg = snapshot.config
    pairs: list[LoraPair] = []
    for module, kinds in by_module.items():
        emb = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
        a_key = kinds.get("lora_embedding_A" if emb else "lora_A")
        b_key = kinds.get("lora_embedding_B" if emb else "lora_B")
        if a_key is None or b_key is None:
            raise BadInputError(
                f"{snapshot.label}: module {module} has only one of lora_A / lora_B",
                hint="the adapter file is incomplete: re-export it",
            )
        a_shape = snapshot.tensors[a_key].shape
        b_shape = snapshot.tensors[b_key].shape
        r_file = a_shape[0]
        if len(a_shape) != 2 or len(b_shape) != 2 or b_shape[1] != r_file:
            raise BadInputError(
                f"{snapshot.label}: {module} has LoRA shapes A {list(a_shape)} / B {list(b_shape)} that do not chain",
                hint="run `loradoc doctor` on the adapter",
            )
        r = rank_for(cfg, module)
        alpha = alpha_for(cfg, module)
        if r != r_file:
            raise BadInputError(
                f"{snapshot.label}: {module} has rank {r_file} in the file but {r} in adapter_config.json",
                hint="run `loradoc repair ADAPTER --base BASE --out DIR` (rank-pattern pass) and convert DIR",
            )
        scale = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        pairs.append(LoraPair(module, a_key, b_key, r, alpha, scale, embedding=emb))
    return pairs


def read_adapter_f32(snapshot: AdapterSnapshot, key: str, fh: Any) -> np.ndarray:
    """One adapter tensor as a float32 numpy array."""
    import numpy as np

    from loradoc.io.safetensors import read_tensor_bytes, tensor_to_numpy

    if snapshot.weights_format != "safetensors":
        assert snapshot._pickle_state is not None
        return snapshot._pickle_state[key].detach().float().cpu().numpy()
    assert snapshot.header is not None
    arr = tensor_to_numpy(snapshot.header.tensors[key], read_tensor_bytes(snapshot.header, key, fh))
    return np.require(arr, dtype=np.float32, requirements=["C", "W"])


def require_healthy(adapter: str, base: str) -> Any:
    """Run ``loradoc doctor --fast`` on the pair; refuse anything but a healthy verdict. Returns the Diagnosis."""
    from loradoc.diagnose.doctor import HEALTHY, diagnose
    from loradoc.model.profiles import get_profile

    get_profile(base)  # builds + caches the base profile (needs torch/transformers once) so --fast can run
    d = diagnose(adapter, base, fast=True)
    if d.verdict != HEALTHY:
        errors = [f for f in d.findings if f.severity == "error"]
        what = "; ".join(f"{f.code} ({f.count})" for f in errors[:3]) or "peft would not load it cleanly"
        raise BadInputError(
            f"adapter {d.adapter} is {d.verdict} against {base}: {what}; a GGUF would bake the defect in",
            hint=f"run `loradoc repair {adapter} --base {base} --out FIXED` and convert FIXED",
        )
    return d


# ----------------------------------------------------------------------------------------------------------
# atomic GGUF output


@contextlib.contextmanager
def atomic_output(target: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A temp path beside ``target``; on success fsync + rename it into place (an existing ``target`` only with
    ``overwrite``: it is replaced, never written in place), on failure delete it. The GGUF is made 0644."""
    with atomic_file(target, overwrite=overwrite, mode=0o644) as tmp:
        yield tmp


@dataclass
class PlannedTensor:
    """One output tensor: its GGUF name, numpy-order shape, qtype and a producer of its data chunks (bytes or
    numpy arrays, in order)."""

    name: str
    shape: tuple[int, ...]
    qtype: str
    chunks: Callable[[], Iterator[Any]]
    source: str = ""

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)


def write_gguf(writer: Any, path: Path, plan: list[PlannedTensor], progress: Progress | None = None) -> int:
    """Write header + KV + tensor infos with gguf.GGUFWriter, then stream every tensor's chunks. Returns bytes."""
    import numpy as np

    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=qtype_enum(t.qtype))
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    align = writer.data_alignment
    fout.write(b"\0" * (-fout.tell() % align))
    for i, t in enumerate(plan):
        written = 0
        for chunk in t.chunks():
            view = memoryview(chunk if isinstance(chunk, bytes | bytearray) else np.ascontiguousarray(chunk)).cast("B")
            fout.write(view)
            written += len(view)
        if written != t.nbytes:  # pragma: no cover - a bug in the plan
            raise AssertionError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")
        fout.write(b"\0" * (-written % align))
        if progress is not None:
            progress(i + 1, len(plan), t.name)
    fout.flush()
    size = fout.tell()
    writer.close()
    return size
