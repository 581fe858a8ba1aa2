"""Writing a merge's shards: every planned tensor streamed into its safetensors file, hashed on the way.

One sequential pass: each base file is read front to back (the shards keep the tensors' order,
:mod:`loradoc.convert.shards`), its sha256 taken from that same read on a side thread unless already known (a
Hugging Face cache blob name, loradoc's digest cache); each output chunk is written and hashed on a worker thread
while the next one is computed (:mod:`loradoc.convert.merge_tensors`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradoc.convert.checkpoint import (
    Checkpoint,
    HashThread,
    SourceFile,
    cached_sha256,
    known_sha256,
    remember_sha256,
)
from loradoc.convert.merge_plan import Op
from loradoc.convert.merge_tensors import AdapterTensors, emit, finite_only
from loradoc.convert.shards import shard_name
from loradoc.io.atomic import fault_write_delay
from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec

__all__ = ["write_shards"]


def write_shards(
    tmp: Path,
    ckpt: Checkpoint,
    reader: AdapterTensors,
    shards: list[list[Op]],
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
            fname = shard_name(i, len(shards))
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
                            emit(op, sources[op.src_file], reader, finite_only(op.name, op.dtype, sink.bind(op.name)))
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


def _tensor_row(op: Op, fname: str, sha: str | None) -> dict[str, Any]:
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
