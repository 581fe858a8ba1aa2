"""``loradoc convert merged``: bake a LoRA adapter into its base checkpoint, streaming tensor by tensor.

What the output holds is what the *PeftModel* computes (peft loading the adapter onto the base), not what
``merge_and_unload`` happens to produce where the two differ (tied embeddings, see below):

- every base weight an adapter LoRA targets becomes ``W + scale * (B @ A)`` computed in float32 and rounded once to
  the output dtype, in peft's order, with ``B @ A`` itself rounded once from its exact value
  (:class:`~loradoc.convert.delta.ExactDelta`: a float32 BLAS matmul rounds differently per library, kernel and
  machine, which would make a bf16 output machine-dependent); ``scale`` is ``alpha / r`` (``alpha / sqrt(r)``
  with rslora), with ``rank_pattern`` / ``alpha_pattern`` resolved on the model's module name exactly as peft
  does; Conv1D targets are transposed (fan_in_fan_out; peft ignores the flag on nn.Linear and so does this);
  embedding LoRAs add ``(B @ A).T``;
- DoRA is merged with peft's formula: ``m / ||W + dW|| * (W + dW)``, the norm per output row for linear layers
  and per embedding dimension (over the whole vocabulary, two passes) for embeddings;
- ``lora_B.bias`` (lora_bias) is added, scaled, to the base bias; full tensors in the adapter (modules_to_save,
  ``bias="all"``, peft's saved ``base_layer.weight`` of targeted embeddings) replace the base tensor;
- tied input/output embeddings: if the adapter changes one of them (or both differently), the output is *untied*
  (``tie_word_embeddings: false`` and a separate ``lm_head.weight``), because the PeftModel applies the LoRA to one
  module only. peft's own ``merge_and_unload`` adds the delta to the shared tensor instead (changing the other
  module too); the result notes this. Identical changes to both (peft ``ensure_weight_tying``) stay tied;
- everything else, vision/audio towers included, is copied (cast when the dtype changes); tower LoRAs are merged
  into the tower weights (the merged model keeps its towers).

The adapter must be healthy (``loradoc doctor --fast`` verdict), the base a full-precision safetensors
checkpoint. Base tensor names may be in another layout than the adapter's keys: both are mapped to
layout-independent addresses (:mod:`loradoc.model.layout`), Gemma4ClippableLinear's ``.linear`` included.

Memory: tensors are read and written in chunks of ``_COPY_CHUNK`` bytes and computed on in cache-sized row
blocks; peak memory is a constant plus the LoRA factors of one module, whatever the model size.

Output: ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` + index, config/tokenizer/processor files,
``loradoc-merge.json``; all written into a temp directory beside ``out``, fsync'd and renamed (a crash never leaves
a complete-looking ``out``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from loradoc import __version__
from loradoc.convert.checkpoint import (
    FLOAT_DTYPES,
    INDEX_NAME,
    QUANT_DTYPES,
    Checkpoint,
    HashThread,
    SourceFile,
    cached_sha256,
    decode_f32,
    encode_f32,
    known_sha256,
    open_checkpoint,
    remember_sha256,
    single_threaded_blas,
)
from loradoc.convert.delta import ExactDelta
from loradoc.errors import BadInputError
from loradoc.io.atomic import atomic_directory, fault_write_delay
from loradoc.io.hashing import sha256_file
from loradoc.io.safetensors import TensorInfo
from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec
from loradoc.io.snapshot import AdapterSnapshot, open_snapshot
from loradoc.model.layout import address_of, parse_key
from loradoc.model.profiles import BaseProfile, BaseSource, get_profile, installed_version, read_config, resolve_base
from loradoc.model.repacks import full_precision_original

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MANIFEST_NAME", "MergeResult", "merge_adapter"]

MANIFEST_NAME = "loradoc-merge.json"
DTYPES = {"bf16": "BF16", "bfloat16": "BF16", "f16": "F16", "fp16": "F16", "float16": "F16",
          "f32": "F32", "fp32": "F32", "float32": "F32"}  # fmt: skip
_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_COPY_CHUNK = 8 << 20  # bytes per read / per write of a streamed tensor
_BLOCK_BYTES = 512 << 10  # float32 bytes per compute block (cache-sized)

#: Files of a base (or adapter) directory that make up the tokenizer; an adapter shipping tokenizer.json,
#: tokenizer_config.json or tokenizer.model replaces the whole set.
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
})  # fmt: skip
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_CHAT_TEMPLATES = ("chat_template.jinja", "chat_template.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5", ".onnx", ".npz")
_NOT_COPIED = {"README.md", INDEX_NAME, "pytorch_model.bin.index.json", MANIFEST_NAME, "loradoc-repair.json"}

#: adapter_config fields that change what a LoRA computes in ways this merge does not reproduce.
_UNSUPPORTED_FIELDS = {
    "use_qalora": "QA-LoRA pools the input before lora_A",
    "use_bdlora": "block-diagonal LoRA",
    "layer_replication": "layer replication changes the model's structure",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "trainable_token_indices": "trainable tokens",
    "alora_invocation_tokens": "activated LoRA applies only after its invocation tokens",
    "arrow_config": "Arrow routing",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
}


# ----------------------------------------------------------------------------------------------------------
# result


@dataclass
class MergeResult:
    out: Path
    dtype: str  # safetensors dtype of the floats written: BF16 | F16 | F32
    adapter: str
    base: str
    merged: list[dict[str, Any]]  # one row per merged LoRA module
    replaced: list[dict[str, Any]]  # base tensors replaced by full adapter tensors
    tensors: list[dict[str, Any]]  # one row per output tensor
    files: list[dict[str, Any]]  # every file written
    untied: bool
    tokenizer_source: str  # "base" | "adapter" | "base+adapter-chat-template" | "none"
    notes: list[str]
    timings: dict[str, float]
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "dtype": self.dtype,
            "adapter": self.adapter,
            "base": self.base,
            "merged": self.merged,
            "replaced": self.replaced,
            "untied": self.untied,
            "tokenizer_source": self.tokenizer_source,
            "notes": self.notes,
            "files": self.files,
            "tensors": self.tensors,
            "timings": self.timings,
        }


# ----------------------------------------------------------------------------------------------------------
# the plan: what happens to every output tensor


@dataclass
class _Lora:
    module: str  # the model's module name (peft's target name)
    key_module: str  # the module path as saved in the adapter
    embedding: bool
    a: str
    b: str
    bias: str | None
    magnitude: str | None
    r: int
    alpha: float
    scale: float
    transpose: bool  # Conv1D (fan_in_fan_out)


@dataclass
class _Effect:
    replace: str | None = None  # adapter key whose tensor replaces the base tensor
    lora: _Lora | None = None
    bias_add: list[tuple[str, float]] = field(default_factory=list)
    replace_via: str = ""  # "modules_to_save" | "base_layer" | "bias"

    @property
    def empty(self) -> bool:
        return self.replace is None and self.lora is None and not self.bias_add


@dataclass
class _Op:
    name: str  # output tensor name
    src_file: Path
    src: TensorInfo
    dtype: str  # output dtype
    effect: _Effect
    primary: bool = True  # the first (hashed) read of src
    shard: int = 0

    @property
    def nbytes(self) -> int:
        return self.src.numel * _bits(self.dtype) // 8

    @property
    def kind(self) -> str:
        e = self.effect
        if e.lora is not None:
            return "dora" if e.lora.magnitude else "merge"
        if e.replace is not None:
            return "replace"
        if e.bias_add:
            return "bias"
        return "copy" if self.src.dtype == self.dtype else "cast"


@dataclass
class _Plan:
    ops: list[_Op]
    merged: list[dict[str, Any]]
    replaced: list[dict[str, Any]]
    untied: bool
    notes: list[str]


def _bits(dtype: str) -> int:
    from loradoc.io.safetensors import DTYPE_BITS

    return DTYPE_BITS[dtype]


# ----------------------------------------------------------------------------------------------------------
# entry point


def merge_adapter(
    adapter: str,
    base: str,
    out: Path,
    *,
    dtype: str = "bf16",
    shard_size: int = 5 * 2**30,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    require_healthy: bool = True,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    hash_base: bool = True,
) -> MergeResult:
    """Merge ``adapter`` into the base checkpoint in directory ``base`` and write a full model to ``out``.

    ``dtype``: bf16 | f16 | f32, the dtype of every float tensor written (integer tensors are copied).
    ``shard_size``: bytes of tensor data per output shard (one ``model.safetensors`` when everything fits).
    ``progress(done_bytes, total_bytes, tensor_name)`` is called after each tensor is produced.
    ``require_healthy=False`` skips the doctor gate (every adapter tensor must still land on a base tensor).
    ``hash_base=False`` leaves the base weight files' sha256 out of ``loradoc-merge.json``. Otherwise they are
    taken from the same sequential read (on a side thread) unless already known: files in a Hugging Face cache are
    named by their sha256, and loradoc caches the digests it computed (keyed by path, size, mtime and inode), so
    only the first merge against a base pays for hashing it.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    out_dtype = _parse_dtype(dtype)
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise BadInputError(f"shard size must be a positive number of bytes, got {shard_size!r}", hint="e.g. 5GB")
    original = full_precision_original(str(base))
    if original and not Path(base).expanduser().exists():
        raise BadInputError(
            f"base {base} is a quantized repack; a merge needs the full-precision weights",
            hint=f"download the original {original} and pass its directory as --base",
        )
    source = resolve_base(str(base))
    if source.shipped:
        raise BadInputError(
            f"base {source.name} is a shipped base profile without weights; a merge needs the checkpoint",
            hint=f"download it (e.g. `hf download {source.name} --local-dir DIR`) and pass DIR as --base",
        )
    base_cfg, _ = read_config(source.config_path)
    snap = open_snapshot(adapter, endpoint=endpoint, allow_pickle=allow_pickle)
    _check_out(out, snap.directory, source.directory, overwrite)
    notes: list[str] = []
    _refuse_quantized(base_cfg, source, snap, notes)
    ckpt = open_checkpoint(source.directory)
    quant = sorted({i.dtype for f in ckpt.files for i in ckpt.headers[f].tensors.values()} & QUANT_DTYPES)
    if quant:
        raise BadInputError(
            f"base {source.directory} holds {quant[0]} weights (a quantized checkpoint)",
            hint=_original_hint(base_cfg, snap),
        )
    timings["open_s"] = time.perf_counter() - t_start

    t = time.perf_counter()
    from loradoc.diagnose.doctor import spec_of

    profile = get_profile(source, spec=spec_of(snap))
    if require_healthy:
        _require_healthy(snap, source, adapter, base)
    timings["doctor_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _refuse_unsupported(snap)
    reader = _AdapterTensors(snap)
    plan = _build_plan(snap, reader, profile, ckpt, base_cfg, out_dtype, notes)
    shards = _assign_shards(plan.ops, shard_size)
    timings["plan_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        try:
            with single_threaded_blas():
                rows, files, base_hashes, hash_sources = _write_shards(tmp, ckpt, reader, shards, progress, hash_base)
        finally:
            reader.close()
        timings["write_s"] = time.perf_counter() - t

        t = time.perf_counter()
        total = sum(op.nbytes for op in plan.ops)
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": total, "total_parameters": sum(op.src.numel for op in plan.ops)},
                "weight_map": {op.name: _shard_name(op.shard, len(shards)) for op in sorted(plan.ops, key=_by_name)},
            }
            files.append(_write_text(tmp / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n"))
        new_cfg = _output_config(base_cfg, out_dtype, plan.untied)
        if profile.task is not None and new_cfg.get("architectures") != [profile.architecture]:
            # the merged model is the class the adapter's task type implies (e.g. a sequence classifier)
            notes.append(f"config architectures set to {profile.architecture} (task type {profile.task})")
            new_cfg["architectures"] = [profile.architecture]
            if profile.num_labels:
                new_cfg.pop("id2label", None)
                new_cfg.pop("label2id", None)
                new_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(profile.num_labels)}
                new_cfg["label2id"] = {f"LABEL_{i}": i for i in range(profile.num_labels)}
        files.append(_write_text(tmp / "config.json", json.dumps(new_cfg, indent=2, sort_keys=True) + "\n"))
        copied, tok_source = _copy_side_files(source.directory, snap.directory, tmp, notes)
        files.extend(copied)
        base_files = {f["name"]: f["sha256"] for f in copied if f["from"] == "base"}
        base_files.update(base_hashes)
        base_files["config.json"] = sha256_file(source.config_path)
        manifest = _manifest(snap, source, profile, out_dtype, plan, files, base_files, tok_source, hash_sources)
        files.append(_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n"))
        timings["files_s"] = time.perf_counter() - t
        t = time.perf_counter()
    timings["publish_s"] = time.perf_counter() - t  # fsync of the tree + rename into place
    timings["total_s"] = time.perf_counter() - t_start
    return MergeResult(
        out=out,
        dtype=out_dtype,
        adapter=snap.label,
        base=str(source.directory),
        merged=plan.merged,
        replaced=plan.replaced,
        tensors=rows,
        files=files,
        untied=plan.untied,
        tokenizer_source=tok_source,
        notes=plan.notes,
        timings={k: round(v, 4) for k, v in timings.items()},
        manifest=manifest,
    )


def _write_shards(
    tmp: Path,
    ckpt: Checkpoint,
    reader: _AdapterTensors,
    shards: list[list[_Op]],
    progress: Callable[[int, int, str], None] | None,
    hash_base: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """Stream every planned tensor into its shard. Returns the tensor rows, the shard files and the base files'
    sha256 (taken from the same sequential read)."""
    delay = fault_write_delay()
    total = sum(op.nbytes for ops in shards for op in ops)
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    base_hashes: dict[str, str] = {}
    sources: dict[Path, SourceFile] = {}
    known: dict[Path, tuple[str, str] | None] = {}
    hash_sources: dict[str, str] = {}
    try:
        for f in ckpt.files:
            known[f] = _known_hash(f)
            sources[f] = SourceFile(ckpt.headers[f], hash_file=hash_base and known[f] is None)
        done = 0
        for i, ops in enumerate(shards):
            fname = _shard_name(i, len(shards))
            specs = [TensorSpec(op.name, op.dtype, op.src.shape) for op in ops]
            file_hash = HashThread()
            try:
                # one sha256 pass over the output: the whole file's (on a thread), not each tensor's as well
                with SafetensorsWriter(
                    tmp / fname, specs, metadata={"format": "pt"}, overwrite=False, hash_tensors=False
                ) as w:
                    file_hash.update(w.header_bytes)
                    sink = _WriterThread(w, file_hash)
                    try:
                        for op in ops:
                            _emit(op, sources[op.src_file], reader, _finite_only(op.name, op.dtype, sink.bind(op.name)))
                            done += op.nbytes
                            if progress is not None:
                                progress(done, total, op.name)
                            if delay:
                                time.sleep(delay)
                    except BaseException:
                        sink.finish(raise_error=False)
                        raise
                    sink.finish()  # waits for the writes; re-raises the writer's error, if any
            finally:
                digest = file_hash.hexdigest()
            files.append({"name": fname, "bytes": (tmp / fname).stat().st_size, "sha256": digest, "from": "merge"})
            rows.extend(_tensor_row(op, fname, w.sha256.get(op.name)) for op in ops)
        for f, s in sources.items():
            if known[f] is not None:
                base_hashes[f.name] = known[f][0]
                hash_sources[f.name] = known[f][1]
            elif hash_base:
                digest = s.sha256()
                if digest:
                    base_hashes[f.name] = digest
                    hash_sources[f.name] = "computed"
                    remember_sha256(f, digest)
    finally:
        for s in sources.values():
            s.close()
    return rows, files, base_hashes, hash_sources


class _WriterThread:
    """Hands each output chunk to the SafetensorsWriter (which hashes every tensor) and to the file's hash on a
    worker thread, so that computing the next chunk overlaps with hashing and writing this one. Chunks are never
    modified after they are handed over. An error in the worker is raised in the caller at its next put."""

    def __init__(self, writer: SafetensorsWriter, file_hash: HashThread) -> None:
        import queue
        import threading

        self._w = writer
        self._hash = file_hash
        self._q: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self._error is not None:
                continue  # drain after a failure
            name, data = item
            try:
                self._w.write(name, data)
                self._hash.update(data if isinstance(data, bytes) else memoryview(data).cast("B"))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self._error = exc

    def put(self, name: str, data: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((name, data))

    def bind(self, name: str) -> Callable[[Any], None]:
        return lambda data: self.put(name, data)

    def finish(self, *, raise_error: bool = True) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()
        if raise_error and self._error is not None:
            raise self._error


def _known_hash(path: Path) -> tuple[str, str] | None:
    """(sha256, how it is known) without reading the file: a Hugging Face cache blob name, or loradoc's cache."""
    h = known_sha256(path)
    if h:
        return h, "hf-cache-blob-name"
    h = cached_sha256(path)
    return (h, "loradoc-cache") if h else None


# ----------------------------------------------------------------------------------------------------------
# checks


def _parse_dtype(dtype: str) -> str:
    d = DTYPES.get(str(dtype).lower())
    if d is None:
        raise BadInputError(f"unknown output dtype {dtype!r}", hint="use bf16, f16 or f32")
    return d


def _check_out(out: Path, adapter_dir: Path, base_dir: Path, overwrite: bool) -> None:
    """--out must not be, contain or lie inside an input; an existing --out only with ``overwrite``."""
    from loradoc.io.outputs import guard_outputs

    guard_outputs([("--out", out)], adapter=adapter_dir, base=base_dir, overwrite=overwrite)


def _original_hint(base_cfg: dict[str, Any], snap: AdapterSnapshot) -> str:
    candidates = [snap.config.base_model, base_cfg.get("_name_or_path")]
    for c in candidates:
        if isinstance(c, str) and c:
            orig = full_precision_original(c)
            if orig:
                return f"download the full-precision original {orig} and pass its directory as --base"
    for c in candidates:
        if isinstance(c, str) and c and not Path(c).is_absolute():
            return f"download the full-precision original ({c}, bf16) and pass its directory as --base"
    return "pass the directory of the full-precision (bf16) original of this base as --base"


def _refuse_quantized(base_cfg: dict[str, Any], source: BaseSource, snap: AdapterSnapshot, notes: list[str]) -> None:
    q = base_cfg.get("quantization_config")
    if q is None:
        for sub in ("text_config",):
            sc = base_cfg.get(sub)
            if isinstance(sc, dict) and sc.get("quantization_config") is not None:
                q = sc["quantization_config"]
    if q is not None:
        method = q.get("quant_method", "quantized") if isinstance(q, dict) else "quantized"
        raise BadInputError(
            f"base {source.directory} is a {method} checkpoint; merging into quantized weights is not supported",
            hint=_original_hint(base_cfg, snap),
        )
    trained_on = snap.config.base_model
    if isinstance(trained_on, str) and trained_on:
        orig = full_precision_original(trained_on)
        if orig:
            notes.append(
                f"the adapter was trained on the quantized repack {trained_on}; it is merged into the "
                f"full-precision base given ({source.directory}), which should be {orig}"
            )


def _require_healthy(snap: AdapterSnapshot, source: BaseSource, adapter: str, base: str) -> None:
    from loradoc.diagnose.doctor import HEALTHY, REPAIRABLE, diagnose

    d = diagnose(str(snap.directory), source, fast=True, snapshot=snap)
    if d.verdict == HEALTHY:
        return
    codes = ", ".join(sorted({f.code for f in d.findings if f.severity == "error"})) or "peft load problems"
    if d.verdict == REPAIRABLE:
        hint = f"run `loradoc repair {adapter} --base {base} --out FIXED`, then merge FIXED"
    else:
        hint = f"run `loradoc doctor {adapter} --base {base}` to see why; `loradoc repair` fixes what it can"
    raise BadInputError(
        f"adapter {snap.label} is not healthy (doctor: {d.verdict}; {codes}); merging would bake that into the weights",
        hint=hint,
    )


def _refuse_unsupported(snap: AdapterSnapshot) -> None:
    cfg = snap.config
    if cfg.peft_type != "LORA":
        raise BadInputError(
            f"adapter {snap.label} is a {cfg.peft_type} adapter; merge supports LoRA (and DoRA)",
            hint="merge it with peft's merge_and_unload",
        )
    for name, what in _UNSUPPORTED_FIELDS.items():
        value = cfg.raw.get(name)
        if value not in (None, False, [], {}, "", 0):
            raise BadInputError(
                f"adapter {snap.label} uses {name} ({what}), which loradoc does not merge",
                hint="merge it with peft's merge_and_unload",
            )


# ----------------------------------------------------------------------------------------------------------
# adapter tensors


class _AdapterTensors:
    """Adapter tensors by key: small ones whole (as float32), big ones (full replacements) as a chunked source."""

    def __init__(self, snap: AdapterSnapshot) -> None:
        self.snap = snap
        self._fd: int | None = None
        self._source: SourceFile | None = None

    def info(self, key: str) -> TensorInfo:
        if self.snap.header is not None:
            return self.snap.header.tensors[key]
        rec = self.snap.tensors[key]
        return TensorInfo(key, rec.dtype, tuple(rec.shape), 0, math.prod(rec.shape) * _bits(rec.dtype) // 8)

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


# ----------------------------------------------------------------------------------------------------------
# planning


_WRAPPER_INFIX = re.compile(r"\.(?:modules_to_save|original_module)\.[^.]+$")


def _build_plan(
    snap: AdapterSnapshot,
    reader: _AdapterTensors,
    profile: BaseProfile,
    ckpt: Checkpoint,
    base_cfg: dict[str, Any],
    out_dtype: str,
    notes: list[str],
) -> _Plan:
    from loradoc.model.peft_rules import alpha_for, rank_for

    cfg = snap.config
    index = profile.address_index()
    lora_parts: dict[str, dict[str, str]] = {}
    full: list[tuple[str, str, str, str]] = []  # (key, module, param, via)
    for key in snap.tensors:
        p = parse_key(key)
        module = p.module
        if p.kind == "other":
            via = "modules_to_save"
            if _WRAPPER_INFIX.search(module):
                if ".original_module." in module:
                    raise BadInputError(f"adapter tensor {key} is an original_module copy", hint="re-save the adapter")
                module = _WRAPPER_INFIX.sub("", module)
            if module.endswith(".base_layer"):
                module, via = module[: -len(".base_layer")], "base_layer"
            elif p.param == "bias":
                via = "bias"
            if p.param not in ("weight", "bias"):
                raise BadInputError(
                    f"adapter tensor {key} is neither a LoRA factor nor a module weight/bias",
                    hint="check it with `loradoc doctor`; merge knows LoRA, DoRA and full module tensors",
                )
            full.append((key, module, p.param, via))
        else:
            lora_parts.setdefault(module, {})[p.kind] = key

    effects: dict[str, _Effect] = {}
    extra: dict[str, _Effect] = {}  # effects on the (absent) output embedding of a tied base
    merged: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []

    out_emb = profile.output_embedding
    out_emb_addr = address_of(out_emb) if out_emb else None
    tie_flag = _tie_flag(base_cfg)
    in_emb_tensor = _input_embedding_tensor(profile, ckpt)
    tied = bool(tie_flag and out_emb and in_emb_tensor and ckpt.find(out_emb, "weight") is None)

    def target_tensor(key: str, module: str, param: str) -> tuple[str, dict[str, _Effect]]:
        name = ckpt.find(module, param)
        if name is not None:
            return name, effects
        if tied and param == "weight" and out_emb_addr is not None and address_of(module) == out_emb_addr:
            assert in_emb_tensor is not None
            return in_emb_tensor, extra
        raise BadInputError(
            f"adapter tensor {key} maps to no tensor of the base checkpoint (no {param} at {module})",
            hint="run `loradoc doctor ADAPTER --base BASE`; `loradoc repair` drops or reroots such keys",
        )

    for module, parts in sorted(lora_parts.items()):
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_kind, b_kind = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        anchor = next(iter(parts.values()))
        if a_kind not in parts or b_kind not in parts:
            missing = a_kind if a_kind not in parts else b_kind
            raise BadInputError(
                f"adapter module {module} has no {missing} (found {', '.join(sorted(parts))})",
                hint="the adapter is incomplete: re-export it",
            )
        name, table = target_tensor(anchor, module, "weight")
        model_name, info = _model_module(module, index, profile)
        if info is not None and info.kind == "conv":
            raise BadInputError(
                f"adapter module {module} is a LoRA on a convolution ({info.cls}); merge handles linear and "
                "embedding layers",
                hint="merge it with peft's merge_and_unload",
            )
        transpose = bool(info is not None and info.cls == "Conv1D" and not emb)
        if cfg.fan_in_fan_out and not transpose and not emb and "fan_in_fan_out" not in " ".join(notes):
            notes.append("fan_in_fan_out is set but the targets are nn.Linear: ignored, as peft does")
        r = rank_for(cfg, model_name)
        alpha = alpha_for(cfg, model_name)
        a_info, b_info = reader.info(parts[a_kind]), reader.info(parts[b_kind])
        w = ckpt.info(name)
        _check_lora_shapes(module, emb, transpose, a_info, b_info, w, r)
        scale = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        lora = _Lora(
            module=model_name,
            key_module=module,
            embedding=emb,
            a=parts[a_kind],
            b=parts[b_kind],
            bias=parts.get("lora_B_bias"),
            magnitude=parts.get("magnitude"),
            r=r,
            alpha=alpha,
            scale=scale,
            transpose=transpose,
        )
        if lora.magnitude is not None and lora.bias is not None:
            raise BadInputError(
                f"adapter module {module}: DoRA with lora_bias is not supported by merge (the PeftModel scales the "
                "LoRA bias by the DoRA factor; peft's own merge_and_unload does not)",
                hint="merge it with peft's merge_and_unload if its result is what you want",
            )
        if lora.magnitude is not None:
            m_info = reader.info(lora.magnitude)
            want = w.shape[1] if emb else w.shape[0]
            if transpose:
                raise BadInputError(
                    f"adapter module {module}: DoRA on a Conv1D layer is not supported by merge",
                    hint="merge it with peft's merge_and_unload",
                )
            if m_info.numel != want:
                raise BadInputError(
                    f"adapter tensor {lora.magnitude} has {m_info.numel} values, {name} needs {want}",
                    hint="the adapter does not fit this base: check it with `loradoc doctor`",
                )
        eff = table.setdefault(name, _Effect())
        if eff.lora is not None:
            raise BadInputError(
                f"adapter modules {eff.lora.key_module} and {module} both map to {name}",
                hint="run `loradoc doctor`; the adapter mixes two layouts of the same module",
            )
        eff.lora = lora
        if lora.bias is not None:
            bias_name = ckpt.find(module, "bias")
            if bias_name is None or table is extra:
                raise BadInputError(
                    f"adapter module {module} has a lora_B bias but the base layer has no bias",
                    hint="peft cannot merge it either (lora_bias=True needs a base bias)",
                )
            effects.setdefault(bias_name, _Effect()).bias_add.append((lora.bias, scale))
        merged.append(
            {
                "module": model_name,
                "tensor": name if table is effects else (out_emb or "lm_head") + ".weight",
                "kind": "embedding" if emb else ("conv1d" if transpose else "linear"),
                "r": r,
                "alpha": alpha,
                "scale": scale,
                "rslora": bool(cfg.use_rslora),
                "dora": lora.magnitude is not None,
                "lora_bias": lora.bias is not None,
                "keys": sorted(parts.values()),
            }
        )

    # a task head saved whole with the adapter (modules_to_save of a SEQ_CLS / TOKEN_CLS / QA adapter) that the
    # pretrained base checkpoint does not have (e.g. an MLM checkpoint): the merged model gets the adapter's head
    from loradoc.diagnose.analysis import wrapped_modules

    heads = wrapped_modules(cfg, profile)
    added: list[tuple[str, str]] = []  # (output tensor name, adapter key)
    for key, module, param, via in sorted(full):
        in_head = any(module == h or module.startswith(h + ".") for h in heads)
        if in_head and via != "base_layer" and f"{module}.{param}" not in ckpt.where:
            # exact names only: a head's ``dense`` is not the pretraining head's ``lm_head.dense``
            added.append((f"{module}.{param}", key))
            replaced.append({"tensor": f"{module}.{param}", "key": key, "via": "modules_to_save (added)"})
            continue
        name, table = target_tensor(key, module, param)
        a_info, w = reader.info(key), ckpt.info(name)
        if tuple(a_info.shape) != tuple(w.shape):
            raise BadInputError(
                f"adapter tensor {key} has shape {list(a_info.shape)}, base tensor {name} {list(w.shape)} "
                "(a resized vocabulary?)",
                hint="merge it with peft (resize the base's embeddings first)",
            )
        if a_info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"adapter tensor {key} is {a_info.dtype}, not a float", hint="re-export the adapter")
        if via == "base_layer" and tied and name == in_emb_tensor:
            # the base layer of a tied embedding is the shared weight: it replaces both ends
            for tab in (effects, extra):
                e = tab.setdefault(name, _Effect())
                if e.replace is not None and e.replace != key and not _same_tensor(reader, e.replace, key):
                    raise BadInputError(
                        f"adapter tensors {e.replace} and {key} both set the tied embedding differently",
                        hint="re-save the adapter (peft's save_pretrained writes one copy)",
                    )
                e.replace, e.replace_via = key, via
            replaced.append({"tensor": name, "key": key, "via": via, "tied": True})
            continue
        eff = table.setdefault(name, _Effect())
        if eff.replace is not None and eff.replace_via != "base_layer":
            raise BadInputError(f"adapter tensors {eff.replace} and {key} both replace {name}", hint="re-save it")
        if eff.replace is None or via != "base_layer":
            eff.replace, eff.replace_via = key, via
        replaced.append(
            {
                "tensor": name if table is effects else (out_emb or "lm_head") + ".weight",
                "key": key,
                "via": via,
            }
        )

    untied = False
    lm_name = (out_emb or "lm_head") + ".weight"
    if tied and in_emb_tensor is not None:
        e_in = effects.get(in_emb_tensor, _Effect())
        e_out = extra.get(in_emb_tensor, _Effect())
        if not _same_effect(reader, e_in, e_out):
            untied = True
            extra_op = e_out
            shared = e_in.replace if e_in.replace is not None and e_in.replace == e_out.replace else None
            note = (
                f"the adapter changes the tied embeddings differently ({in_emb_tensor}: {_describe(e_in, shared)}; "
                f"{lm_name}: {_describe(e_out, shared)}): the output is untied (tie_word_embeddings false, a "
                f"separate {lm_name}), as the PeftModel computes them"
            )
            if e_in.lora is not None or e_out.lora is not None:
                note += "; peft's merge_and_unload adds the LoRA to the shared tensor and changes the other end too"
            notes.append(note)
        elif not e_out.empty:
            notes.append("the adapter changes both tied embeddings identically: merged once, the output stays tied")
    ops: list[_Op] = []
    for f, info in ckpt.ordered():
        eff = effects.get(info.name, _Effect())
        dt = out_dtype if info.dtype in FLOAT_DTYPES else info.dtype
        if not eff.empty and info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"base tensor {info.name} is {info.dtype}: cannot merge into it", hint="check the base")
        ops.append(_Op(info.name, f, info, dt, eff))
    if untied:
        assert in_emb_tensor is not None
        f = ckpt.where[in_emb_tensor]
        ops.append(_Op(lm_name, f, ckpt.info(in_emb_tensor), out_dtype, extra_op, primary=False))
    for name, key in added:
        a_info = reader.info(key)
        if a_info.dtype not in FLOAT_DTYPES:
            raise BadInputError(f"adapter tensor {key} is {a_info.dtype}, not a float", hint="re-export the adapter")
        ops.append(_Op(name, ckpt.files[0], a_info, out_dtype, _Effect(replace=key, replace_via="modules_to_save")))
    if added:
        notes.append(f"{len(added)} head tensors the base checkpoint lacks come from the adapter (modules_to_save)")
    if cfg.init_lora_weights not in (True, False, None, "gaussian"):
        notes.append(
            f"init_lora_weights={cfg.init_lora_weights!r}: merged as saved; if the adapter was saved without "
            "peft's conversion it expects the modified base it was initialised from"
        )
    return _Plan(ops, merged, replaced, untied, notes)


def _model_module(module: str, index: dict[Any, str], profile: BaseProfile) -> tuple[str, Any]:
    """The model's own name for an adapter module (peft's target name: rank/alpha patterns match on it)."""
    name = index.get(address_of(module, profile.towers))
    if name is None:
        return module, None
    info = profile.modules[name]
    if info.kind == "clippable":
        inner = f"{name}.linear"
        return inner, profile.modules.get(inner, info)
    return name, info


def _check_lora_shapes(
    module: str, emb: bool, transpose: bool, a: TensorInfo, b: TensorInfo, w: TensorInfo, r: int
) -> None:
    def bad(msg: str) -> BadInputError:
        return BadInputError(f"adapter module {module}: {msg}", hint="check it with `loradoc doctor`")

    if len(a.shape) != 2 or len(b.shape) != 2 or len(w.shape) != 2:
        raise bad(f"LoRA factors {list(a.shape)} / {list(b.shape)} on base {list(w.shape)} are not matrices")
    if a.shape[0] != b.shape[1]:
        raise bad(f"lora_A {list(a.shape)} and lora_B {list(b.shape)} have different ranks")
    if a.shape[0] != r:
        raise BadInputError(
            f"adapter module {module}: rank {a.shape[0]} in the file, r={r} in adapter_config.json",
            hint="run `loradoc repair` (rank-pattern pass) to fix the config",
        )
    if emb or transpose:  # embedding: A (r, vocab), B (dim, r), W (vocab, dim); Conv1D: W (in, out)
        ok = a.shape[1] == w.shape[0] and b.shape[0] == w.shape[1]
    else:  # W (out, in)
        ok = a.shape[1] == w.shape[1] and b.shape[0] == w.shape[0]
    if not ok:
        raise bad(f"LoRA factors {list(a.shape)} / {list(b.shape)} do not fit base weight {list(w.shape)}")


def _tie_flag(cfg: dict[str, Any]) -> bool:
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    text = cfg.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return True  # transformers' PretrainedConfig default


def _input_embedding_tensor(profile: BaseProfile, ckpt: Checkpoint) -> str | None:
    """The checkpoint tensor of the input embeddings the output embedding is tied to."""
    out = profile.output_embedding
    out_info = profile.modules.get(out) if out else None
    cands = [
        n
        for n, m in profile.modules.items()
        if m.kind == "embedding" and address_of(n).tower == "language" and address_of(n).layer is None
    ]
    if out_info is not None:
        fit = [n for n in cands if (profile.modules[n].in_features, profile.modules[n].out_features)
               == (out_info.out_features, out_info.in_features)]  # fmt: skip
        cands = fit or cands
    cands.sort(key=lambda n: (n.rsplit(".", 1)[-1] != "embed_tokens", n))
    for n in cands:
        t = ckpt.find(n, "weight")
        if t is not None:
            return t
    return None


def _same_tensor(reader: _AdapterTensors, k1: str, k2: str) -> bool:
    import numpy as np

    i1, i2 = reader.info(k1), reader.info(k2)
    if tuple(i1.shape) != tuple(i2.shape):
        return False
    return bool(np.array_equal(reader.array(k1), reader.array(k2)))


def _same_effect(reader: _AdapterTensors, e1: _Effect, e2: _Effect) -> bool:
    """Whether two effects on the same base tensor give bit-identical results (tied embeddings stay tied)."""
    import numpy as np

    if (e1.replace is None) != (e2.replace is None) or (e1.lora is None) != (e2.lora is None):
        return False
    if e1.bias_add or e2.bias_add:
        return False
    if (
        e1.replace is not None
        and e2.replace is not None
        and e1.replace != e2.replace
        and not _same_tensor(reader, e1.replace, e2.replace)
    ):
        return False
    l1, l2 = e1.lora, e2.lora
    if l1 is None or l2 is None:
        return True
    if l1.magnitude or l2.magnitude or l1.scale != l2.scale:
        return False

    # an embedding LoRA (A: r x vocab, B: dim x r) equals a linear one on the tied lm_head (A: r x dim,
    # B: vocab x r) when A_lm = B_emb.T and B_lm = A_emb.T (peft's ensure_weight_tying)
    def delta_factors(lora: _Lora) -> tuple[np.ndarray, np.ndarray]:  # (left, right) with delta = left @ right
        a, b = reader.array(lora.a), reader.array(lora.b)
        return (a.T, b.T) if lora.embedding else (b, a)

    f1, f2 = delta_factors(l1), delta_factors(l2)
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(f1, f2, strict=True))


def _describe(e: _Effect, shared: str | None = None) -> str:
    """What an effect does, leaving out a replacement both tied ends share."""
    parts = []
    if e.replace is not None and e.replace != shared:
        parts.append(f"replaced by {e.replace}")
    if e.lora is not None:
        parts.append(f"{'DoRA' if e.lora.magnitude else 'LoRA'} (r={e.lora.r})")
    return " + ".join(parts) or "unchanged"


def _by_name(op: _Op) -> str:
    return op.name


def _assign_shards(ops: list[_Op], shard_size: int) -> list[list[_Op]]:
    """Greedy, in source order: a new shard when the next tensor would push the current one past shard_size."""
    shards: list[list[_Op]] = [[]]
    size = 0
    for op in ops:
        if shards[-1] and size + op.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(op)
        size += op.nbytes
    for i, s in enumerate(shards):
        for op in s:
            op.shard = i
    return shards


def _shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


# ----------------------------------------------------------------------------------------------------------
# execution


#: float dtype -> (unsigned view, exponent mask, mantissa mask): an all-ones exponent with a non-zero mantissa is NaN
#: (Inf is legitimate in some bases: Gemma 4's clipping bounds default to +/-inf)
_EXPONENT = {"BF16": ("<u2", 0x7F80, 0x007F), "F16": ("<u2", 0x7C00, 0x03FF), "F32": ("<u4", 0x7F800000, 0x007FFFFF)}


def _finite_only(name: str, dtype: str, put: Callable[[Any], None]) -> Callable[[Any], None]:
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


def _emit(op: _Op, src: SourceFile, reader: _AdapterTensors, put: Callable[[Any], None]) -> None:
    """Produce one output tensor, in order, as chunks handed to ``put``: copy, cast, replace or merge."""
    import numpy as np

    e = op.effect

    if op.src.nbytes == 0:
        return
    if e.empty and op.src.dtype == op.dtype:
        for chunk in src.chunks(op.src, _COPY_CHUNK, primary=op.primary):
            put(chunk)
        return
    if e.replace is not None and op.primary and src.hashing:
        # the base bytes are not used, but the base file's hash stream must stay in order
        for _ in src.chunks(op.src, _COPY_CHUNK, primary=True):
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
    op: _Op,
    lora: _Lora,
    start: Any,
    info: TensorInfo,
    primary: bool,
    reader: _AdapterTensors,
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

    Two levels: the file is read in chunks of ~_COPY_CHUNK bytes (one output buffer each, handed to ``put``);
    inside a chunk, rows are converted and transformed in cache-sized blocks (~_BLOCK_BYTES of float32) with
    reused scratch buffers, so the ~10 elementwise passes of decode / add / round run in cache, not RAM."""
    import numpy as np

    if info.dtype not in FLOAT_DTYPES:
        raise BadInputError(f"tensor {info.name} is {info.dtype}, not a float", hint="check the checkpoint")
    shape = tuple(info.shape) or (1,)
    rows, inner = shape[0], math.prod(shape[1:])
    per_row = inner * _bits(info.dtype) // 8
    chunk_rows = max(1, _COPY_CHUNK // max(1, per_row))
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


def _tensor_row(op: _Op, fname: str, sha: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": op.name,
        "file": fname,
        "source": op.src.name,
        "source_file": op.src_file.name,
        "source_dtype": op.src.dtype,
        "dtype": op.dtype,
        "shape": list(op.src.shape),
        "op": op.kind,
        "sha256": sha,
    }
    e = op.effect
    if e.lora is not None:
        row["module"] = e.lora.module
        row["scale"] = e.lora.scale
    if e.replace is not None:
        row["replaced_by"] = e.replace
    if e.bias_add:
        row["bias_from"] = [k for k, _ in e.bias_add]
    return row


# ----------------------------------------------------------------------------------------------------------
# side files


def _write_text(path: Path, text: str) -> dict[str, Any]:
    import hashlib

    data = text.encode("utf-8")
    path.write_bytes(data)
    return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "from": "merge"}


def _output_config(cfg: dict[str, Any], dtype: str, untie: bool) -> dict[str, Any]:
    new = json.loads(json.dumps(cfg))
    name = _TORCH_NAMES[dtype]

    def fix(d: dict[str, Any], top: bool) -> None:
        for k in ("dtype", "torch_dtype"):
            if k in d:
                d[k] = name
        if top and "dtype" not in d and "torch_dtype" not in d:
            d["dtype"] = name
        if untie and (top or "tie_word_embeddings" in d):
            d["tie_word_embeddings"] = False
        for v in d.values():
            if isinstance(v, dict) and ("model_type" in v or "dtype" in v or "torch_dtype" in v):
                fix(v, False)

    fix(new, True)
    return new


def _is_side_file(p: Path) -> bool:
    n = p.name
    return (
        p.is_file()
        and not n.startswith(".")
        and n not in _NOT_COPIED
        and n != "config.json"
        and not n.endswith(_WEIGHT_SUFFIXES)
    )


def _copy_side_files(
    base_dir: Path, adapter_dir: Path, tmp: Path, notes: list[str]
) -> tuple[list[dict[str, Any]], str]:
    """generation config, tokenizer, chat template, processor files: from the base, or the adapter's tokenizer."""
    chosen: dict[str, Path] = {}
    origin: dict[str, str] = {}
    for p in sorted(base_dir.iterdir()):
        if _is_side_file(p):
            chosen[p.name], origin[p.name] = p, "base"
    from loradoc.io.outputs import escapes

    adapter_tok: dict[str, Path] = {}
    for p in sorted(adapter_dir.iterdir()):
        if p.name in TOKENIZER_FILES and p.is_file():
            if escapes(p, adapter_dir):
                notes.append(f"adapter file {p.name} is a symlink pointing outside the adapter: not copied")
            else:
                adapter_tok[p.name] = p
    has_base_tok = any(n in chosen for n in _TOKENIZER_CORE)
    source = "base" if has_base_tok else "none"
    if any(n in adapter_tok for n in _TOKENIZER_CORE):
        for n in [n for n in chosen if n in TOKENIZER_FILES]:
            del chosen[n], origin[n]
        for n, p in adapter_tok.items():
            chosen[n], origin[n] = p, "adapter"
        source = "adapter"
        notes.append(f"tokenizer files from the adapter ({', '.join(sorted(adapter_tok))}), not from the base")
    elif any(n in adapter_tok for n in _CHAT_TEMPLATES):
        for n in _CHAT_TEMPLATES:
            if n in adapter_tok:
                chosen[n], origin[n] = adapter_tok[n], "adapter"
        source = "base+adapter-chat-template"
        notes.append("chat template from the adapter, tokenizer from the base")
    rows = []
    for n, p in sorted(chosen.items()):
        shutil.copyfile(p, tmp / n)
        digest = sha256_file(tmp / n)
        rows.append({"name": n, "bytes": (tmp / n).stat().st_size, "sha256": digest, "from": origin[n]})
    return rows, source


def _manifest(
    snap: AdapterSnapshot,
    source: BaseSource,
    profile: BaseProfile,
    dtype: str,
    plan: _Plan,
    files: list[dict[str, Any]],
    base_files: dict[str, str],
    tok_source: str,
    hash_sources: dict[str, str],
) -> dict[str, Any]:
    adapter_files = {
        p.name: sha256_file(p) for p in sorted(snap.directory.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    return {
        "format": 1,
        "tool": f"loradoc {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "adapter": {
            "path": str(snap.directory),
            "repo_id": snap.repo_id,
            "commit": snap.commit,
            "base_model_name_or_path": snap.config.base_model,
            "files": adapter_files,
        },
        "base": {
            "path": str(source.directory),
            "architecture": profile.architecture,
            "config_sha256": profile.config_sha256,
            "files": dict(sorted(base_files.items())),
            "weight_hashes": hash_sources,  # how each weight file's sha256 was obtained (absent: not hashed)
        },
        "versions": {d: installed_version(d) for d in ("peft", "transformers", "safetensors", "numpy")},
        "dtype": dtype,
        "merged_modules": [m["module"] for m in plan.merged],
        "merged": [{k: m[k] for k in ("module", "tensor", "kind", "r", "alpha", "scale", "dora")} for m in plan.merged],
        "replaced": plan.replaced,
        "untied_embeddings": plan.untied,
        "tokenizer_source": tok_source,
        "notes": plan.notes,
        "outputs": {f["name"]: f["sha256"] for f in files},
    }
