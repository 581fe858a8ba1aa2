"""The example's files on disk: deterministic JSON, completion markers, fresh output directories, atomic builds,
seeded and quiet library calls."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.demo.specs import FIXTURES_VERSION, MARKER_NAME
from loradoc.errors import BadInputError

if TYPE_CHECKING:
    import torch


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@contextmanager
def quiet_and_seeded(seed: int) -> Iterator[None]:
    """Fork torch's RNG (callers' RNG state stays untouched), seed it, hide transformers' progress bars."""
    import torch
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft 0.21.2 calls transformers' deprecated is_gradient_checkpointing: noise, not our business
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(seed)
            yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def write_json(path: Path, data: dict[str, Any], *, peft_style: bool = False) -> None:
    if peft_style:  # exactly how peft's PeftConfig.save_pretrained writes adapter_config.json
        text = json.dumps(data, indent=2, sort_keys=True)
    else:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")


def write_marker(path: Path, kind: str, name: str) -> None:
    write_json(path / MARKER_NAME, {"kind": kind, "name": name, "fixtures_version": FIXTURES_VERSION})


def is_complete(path: Path) -> bool:
    marker = path / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("fixtures_version") == FIXTURES_VERSION


_REPLACEABLE = (MARKER_NAME, "adapter_config.json", "adapter_model.safetensors", "config.json")


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path``. An existing one is only wiped if it is empty or looks like a model /
    adapter / fixture directory: a typo must never delete someone's unrelated files."""
    if path.exists():
        if not path.is_dir():
            raise BadInputError(f"{path} exists and is not a directory", "choose another output path")
        if any(path.iterdir()) and not any((path / n).exists() for n in _REPLACEABLE):
            raise BadInputError(
                f"{path} is not empty and holds no model or adapter",
                "choose an empty or new output directory",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"})


def copy_adapter(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A new adapter directory ``dst`` (replaced if it is one) holding ``tensors`` and the other files of
    ``src`` unchanged (not its fixture marker: the copy is a new item)."""
    src, dst = Path(src), Path(dst)
    fresh_dir(dst)
    for item in sorted(src.iterdir()):
        if item.name in ("adapter_model.safetensors", MARKER_NAME):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    save_tensors(dst / "adapter_model.safetensors", tensors)
    return dst


def build_atomically(final: Path, build: Callable[[Path], Path]) -> Path:
    """``build(tmp)`` in a temporary sibling of ``final``, renamed into place when done; a complete ``final``
    (its marker written) is kept as it is."""
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.building-{os.getpid()}"
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
