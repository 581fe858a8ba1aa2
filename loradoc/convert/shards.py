"""Shards of a written checkpoint, as Hugging Face reads and writes them.

- sizes: Hugging Face counts in decimal units (``"5GB"`` is ``5 * 10**9`` bytes), the rule of
  ``huggingface_hub.serialization._base.parse_size_to_int`` (the function :func:`parse_shard_size` calls), which
  ``save_pretrained(max_shard_size=...)`` and ``save_torch_state_dict`` use; the default is their ``"5GB"``;
- file names: ``model.safetensors`` when everything fits one shard, else ``model-00001-of-0000N.safetensors``;
- the index: ``model.safetensors.index.json`` as transformers' ``save_pretrained`` writes it (``metadata`` with
  ``total_parameters`` and ``total_size``, ``weight_map`` name -> file; ``indent=2``, sorted keys, a final newline),
  written only for more than one shard.

The shard plan (:func:`plan_shards`) is huggingface_hub's greedy rule (``split_state_dict_into_shards_factory``:
tensors in order, a new shard when the next one would push the current shard past the limit) with one
difference: a tensor larger than the limit closes the current shard and gets its own, where huggingface_hub puts
it in a shard of its own *before* the still-open one. Keeping the shards in the tensors' order lets the merge
stream each base file once, front to back (its sha256 is taken from that same read); huggingface_hub's order would
read an earlier tensor after a later one, and a real model has such tensors (Gemma 4 E4B's 5.6 GB
``embed_tokens_per_layer`` in bf16, above the default 5GB). When no tensor exceeds the limit the two plans are the
same (a test checks it against huggingface_hub's own function).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from loradoc.errors import BadInputError

__all__ = ["DEFAULT_SHARD_SIZE", "index_json", "parse_shard_size", "plan_shards", "shard_name"]

#: huggingface_hub's ``MAX_SHARD_SIZE = "5GB"`` (serialization/_base.py), in bytes
DEFAULT_SHARD_SIZE = 5 * 10**9
_BINARY_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_HINT = "e.g. `loradoc convert merged ADAPTER --base BASE --out DIR --shard-size 5GB` (1GB = 10**9 bytes; 1GiB = 2**30)"


def parse_shard_size(size: int | str) -> int:
    """Bytes of tensor data per shard from ``size``: an int (bytes), a string of digits (bytes), a size with a
    Hugging Face unit (``"5GB"``, ``"500MB"``, ``"2.5 GB"``; TB/GB/MB/KB, decimal: parsed by huggingface_hub's own
    ``parse_size_to_int``), or an explicit binary unit (``"4GiB"``: TiB/GiB/MiB/KiB, powers of 2).

    Anything else (``"5G"``, which Hugging Face refuses too, a negative or zero size) raises BadInputError."""
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise BadInputError(f"shard size must be a number of bytes or a size like 5GB, got {size!r}", hint=_HINT)
    if isinstance(size, int):
        value = size
    else:
        text = size.strip()
        unit = text[-3:].upper()
        try:
            if text.isdigit():
                value = int(text)
            elif unit in _BINARY_UNITS:
                value = int(float(text[:-3].strip()) * _BINARY_UNITS[unit])
            else:
                from huggingface_hub.serialization._base import parse_size_to_int

                value = parse_size_to_int(text)
        except (ValueError, OverflowError):  # no unit HF knows, no number, inf / nan
            raise BadInputError(f"shard size {size!r} is not a size like 5GB, 500MB or 4GiB", hint=_HINT) from None
    if value <= 0:
        raise BadInputError(f"shard size must be a positive number of bytes, got {size!r}", hint=_HINT)
    return value


def plan_shards(sizes: Sequence[int], shard_size: int) -> list[list[int]]:
    """The tensors (indices into ``sizes``, bytes each) of every shard, in order: a new shard when the next tensor
    would push the current one past ``shard_size``; a tensor larger than ``shard_size`` is a shard of its own."""
    shards: list[list[int]] = [[]]
    total = 0
    for i, n in enumerate(sizes):
        if shards[-1] and total + n > shard_size:
            shards.append([])
            total = 0
        shards[-1].append(i)
        total += n
    return shards


def shard_name(i: int, n: int) -> str:
    """The file name of shard ``i`` (from 0) of ``n``, as ``save_pretrained`` names them."""
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def index_json(weight_map: Mapping[str, str], *, total_size: int, total_parameters: int) -> str:
    """The text of ``model.safetensors.index.json``: tensor name -> shard file, with the total bytes of tensor data
    and the number of parameters, laid out as transformers' ``save_pretrained`` writes it."""
    index = {
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return json.dumps(index, indent=2, sort_keys=True) + "\n"
