"""Test-only builders over the bundled example: broken variants of its adapters.

The package (``loradoc.demo``) builds only what ``loradoc example`` ships; the tests make their variants here,
from a built adapter, with real safetensors files and peft-style configs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradoc.demo.files import copy_adapter, write_json
from loradoc.errors import BadInputError

if TYPE_CHECKING:
    import torch

__all__ = ["rewrite_adapter"]


def rewrite_adapter(
    src: Path,
    dst: Path,
    *,
    rename: Callable[[str], str | None] | None = None,
    add: dict[str, torch.Tensor] | None = None,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    config_update: dict[str, Any] | None = None,
    config_drop: Iterable[str] = (),
) -> Path:
    """Copy an adapter directory, editing its tensors and config on the way (for making broken variants).

    ``rename(key)`` returns the new key, or None to drop the tensor. ``transform(new_key, tensor)`` returns
    the tensor to write. ``add`` adds (or overwrites) tensors. ``config_update`` / ``config_drop`` edit
    adapter_config.json. Other files are copied unchanged (the fixture marker is not); ``dst`` is replaced
    if it exists. Returns ``dst``.
    """
    from safetensors.torch import load_file

    src, dst = Path(src), Path(dst)
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise BadInputError(f"no adapter_model.safetensors in {src}", "pass an adapter directory")
    if src.resolve() == dst.resolve():
        raise BadInputError("rewrite_adapter needs a destination different from the source")
    tensors = load_file(str(weights))
    out: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        new_key = rename(key) if rename is not None else key
        if new_key is None:
            continue
        tensor = tensors[key]
        if transform is not None:
            tensor = transform(new_key, tensor)
        out[new_key] = tensor
    out.update(add or {})
    copy_adapter(src, dst, out)

    cfg_path = dst / "adapter_config.json"
    drop = set(config_drop)
    if cfg_path.is_file() and (config_update or drop):
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = {k: v for k, v in cfg.items() if k not in drop}
        cfg.update(config_update or {})
        write_json(cfg_path, cfg, peft_style=True)
    return dst
