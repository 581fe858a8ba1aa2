"""What a *real* ``PeftModel.from_pretrained`` does with an adapter on a real tiny base: the yardstick for doctor.

Nothing here is predicted: the base's real weights are loaded with transformers, the adapter with peft, and
loaded / missing / unexpected are measured from the result:

- missing: the keys of peft's own "Found missing adapter keys" warning;
- loaded: file tensors whose exact bytes ended up in a LoRA parameter of the model (or a base weight that peft
  saves with the adapter);
- unexpected: the other file tensors (peft drops them silently);
- effective: the adapter changes the logits of a probe input.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass
class RealLoad:
    loaded: int | None
    missing: int | None
    unexpected: int | None
    effective: bool
    error: str | None
    warnings: list[str]


@lru_cache(maxsize=8)
def _base_state(base_dir: str) -> tuple[str, Any]:
    cfg = json.loads((Path(base_dir) / "config.json").read_text())
    return cfg["architectures"][0], None


def load_base(base_dir: Path) -> Any:
    import torch
    import transformers

    arch, _ = _base_state(str(base_dir))
    model = getattr(transformers, arch).from_pretrained(base_dir, dtype=torch.float32)
    model.eval()
    return model


def _digest(t: Any) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def probe_logits(model: Any) -> Any:
    import torch

    ids = torch.tensor([[2, 10, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float()


def real_peft_load(adapter_dir: Path, base_dir: Path) -> RealLoad:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    model = load_base(base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pm = PeftModel.from_pretrained(model, str(adapter_dir))
        except Exception as e:  # noqa: BLE001 - we record what peft raises
            return RealLoad(None, None, None, False, f"{e.__class__.__name__}: {str(e).splitlines()[0]}", [])
    msgs = [str(w.message) for w in caught]
    missing: list[str] = []
    for m in msgs:
        hit = re.search(r"Found missing adapter keys while loading the checkpoint: (\[.*\])", m, re.S)
        if hit:
            missing = ast.literal_eval(hit.group(1))
    file = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    by_dtype: dict[Any, set[str]] = {}
    for t in file.values():
        by_dtype.setdefault(t.dtype, set())
    for name, p in pm.named_parameters(remove_duplicate=False):
        # LoRA parameters, and base weights peft saves with the adapter (``...base_layer.weight`` of targeted
        # embedding / lm_head layers, modules_to_save)
        if "lora_" in name or "base_layer" in name or "modules_to_save" in name:
            for dt, s in by_dtype.items():
                s.add(_digest(p.to(dt)))
    loaded = sum(1 for t in file.values() if _digest(t) in by_dtype[t.dtype])
    adapted = probe_logits(pm)
    with pm.disable_adapter():
        base = probe_logits(pm)
    effective = bool(torch.max(torch.abs(adapted - base)) > 0)
    return RealLoad(loaded, len(missing), len(file) - loaded, effective, None, msgs)
