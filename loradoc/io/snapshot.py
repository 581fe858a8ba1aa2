"""Adapter snapshots: config + key inventory, read from the safetensors header alone.

Sources (local paths only):
    - a local adapter directory
    - a Hugging Face cache snapshot (``.../models--org--name/snapshots/<sha>``): repo id and commit are recorded

A Hub repo id (``org/name@rev``) is resolved above this layer (:func:`loradoc.workflows.source.open_adapter`
pulls it through :mod:`loradoc.hub.pull` and hands the local snapshot here); ``io`` never imports ``hub``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.errors import BadInputError, MissingFileError, PickleRefusedError
from loradoc.io.adapter_config import AdapterConfig, load_adapter_config
from loradoc.io.safetensors import (
    SafetensorsHeader,
    iter_tensor_chunks_numpy,
    read_header,
    read_tensor_bytes,
    tensor_to_numpy,
)

if TYPE_CHECKING:
    import numpy as np

SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
CONFIG_NAME = "adapter_config.json"
_HF_CACHE_RE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})/?$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+\Z")


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class AdapterSnapshot:
    directory: Path
    config: AdapterConfig
    weights_path: Path
    weights_format: str  # "safetensors" | "pickle"
    tensors: dict[str, TensorRecord]
    source: str = "local"  # local | hf-cache | hub
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    header: SafetensorsHeader | None = None
    _pickle_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        if self.repo_id:
            return f"{self.repo_id}@{(self.commit or self.revision or 'main')[:12]}"
        return str(self.directory)

    def iter_array_chunks(self) -> Iterator[tuple[str, Iterator[np.ndarray]]]:
        """Each tensor as flat numpy chunks of bounded size (safetensors: at most DATA_CHUNK_BYTES read at a time,
        whatever the header declares), one tensor at a time."""
        if self.weights_format == "safetensors":
            assert self.header is not None
            for info, chunks in iter_tensor_chunks_numpy(self.header):
                yield info.name, chunks
        else:
            for name, arr in self.iter_arrays():
                yield name, iter([arr.reshape(-1)])

    def iter_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each tensor as a float/int numpy array, one at a time (reads tensor data)."""
        if self.weights_format == "safetensors":
            assert self.header is not None
            with open(self.weights_path, "rb") as fh:
                for name, info in self.header.tensors.items():
                    yield name, tensor_to_numpy(info, read_tensor_bytes(self.header, name, fh))
        else:
            assert self._pickle_state is not None
            for name, t in self._pickle_state.items():
                yield name, t.detach().float().cpu().numpy()


def parse_source(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (org/name, rev)."""
    if "@" in spec:
        repo, rev = spec.rsplit("@", 1)
        return repo, rev or None
    return spec, None


def is_repo_spec(spec: str | os.PathLike[str]) -> bool:
    """Does ``spec`` name a Hub repository (``org/name[@rev]``) rather than a local path that exists?"""
    spec_s = str(spec)
    if Path(spec_s).expanduser().exists() or spec_s.startswith((".", "/", "~")):
        return False
    return bool(_REPO_ID_RE.match(parse_source(spec_s)[0]))


def open_snapshot(spec: str | os.PathLike[str], *, allow_pickle: bool = False) -> AdapterSnapshot:
    """Open an adapter from a local directory or an HF cache snapshot (its repo id and commit are recorded)."""
    path = Path(spec).expanduser()
    source, repo_id, revision, commit = "local", None, None, None
    if not path.exists():
        spec_s = str(spec)
        if is_repo_spec(spec_s):
            raise MissingFileError(
                f"adapter {spec_s!r} is not a local directory",
                hint=f"fetch it first: loradoc pull {spec_s} (loradoc doctor takes REPO@REV and fetches it itself)",
            )
        raise MissingFileError(
            f"adapter {spec_s!r} not found",
            hint="pass an adapter directory (with adapter_config.json) or a Hub repo id like org/name@rev",
        )
    if path.is_file():
        if path.name in (CONFIG_NAME, SAFETENSORS_NAME, PICKLE_NAME):
            path = path.parent
        else:
            raise BadInputError(
                f"{path} is a file; loradoc expects the adapter directory",
                hint=f"pass the folder that holds {CONFIG_NAME} and {SAFETENSORS_NAME}",
            )
    m = _HF_CACHE_RE.search(path.resolve().as_posix())
    if m and source == "local":
        source = "hf-cache"
        repo_id = f"{m.group('org')}/{m.group('name')}"
        commit = m.group("sha")
    config = load_adapter_config(path / CONFIG_NAME)
    st = path / SAFETENSORS_NAME
    pk = path / PICKLE_NAME
    if st.is_file():
        header = read_header(st)
        tensors = {n: TensorRecord(n, i.dtype, i.shape) for n, i in header.tensors.items()}
        return AdapterSnapshot(path, config, st, "safetensors", tensors, source, repo_id, revision, commit, header)
    if pk.is_file():
        if not allow_pickle:
            raise PickleRefusedError(
                f"{pk} is a pickle file and loradoc does not unpickle without consent",
                hint="re-run with --allow-pickle (loaded with torch weights_only=True, nothing is executed), "
                "or convert it: loradoc repair ADAPTER --base BASE --out DIR --only pickle-to-safetensors",
            )
        state = load_pickle_weights(pk)
        tensors = {n: TensorRecord(n, torch_dtype_name(t.dtype), tuple(t.shape)) for n, t in state.items()}
        snap = AdapterSnapshot(path, config, pk, "pickle", tensors, source, repo_id, revision, commit)
        snap._pickle_state = state
        return snap
    raise MissingFileError(
        f"{path} has no {SAFETENSORS_NAME} (or {PICKLE_NAME})",
        hint="download the adapter's weights file into the directory",
    )


def load_pickle_weights(path: Path) -> dict[str, Any]:
    """Load a pickle state dict with ``weights_only=True`` (no code runs), as CPU tensors."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's note about the pickle protocol is not the user's business
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise BadInputError(
            f"{path} could not be loaded safely (weights_only=True): {first}",
            hint="get a safetensors copy of the adapter; loradoc never runs pickled code",
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{path} is not a flat state dict of tensors", hint="get a safetensors copy")
    return state


_TORCH_TO_ST = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def torch_dtype_name(dtype: Any) -> str:
    return _TORCH_TO_ST.get(str(dtype).removeprefix("torch."), str(dtype))
