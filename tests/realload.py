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


# ---------------------------------------------------------------------------------------------------------------
# Open world: any base config, any peft task type (the yardstick for adapters published by others)
# ---------------------------------------------------------------------------------------------------------------

# the transformers auto class each peft task type's model expects (peft's docs / task models); CAUSAL_LM and no
# task type: config.json's architectures[0]
TASK_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
}


@dataclass
class Truth:
    """What a real ``PeftModel.from_pretrained`` did, plus what a peft save of that model would have written."""

    loaded: int | None
    missing: int | None
    unexpected: int | None
    error: str | None
    unsaved: list[str]  # non-LoRA keys peft's get_peft_model_state_dict writes that the file lacks (biases, heads)
    nonfinite: int  # loaded LoRA parameters with NaN / Inf
    all_b_zero: bool

    @property
    def healthy(self) -> bool:
        return (
            self.error is None
            and self.missing == 0
            and self.unexpected == 0
            and not self.unsaved
            and self.nonfinite == 0
            and not self.all_b_zero
        )


def _adapter_json(adapter_dir: Path) -> dict[str, Any]:
    p = Path(adapter_dir) / "adapter_config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def head_rows(adapter_dir: Path) -> int | None:
    """The label count of a classification head saved in the adapter file (rows of its output projection)."""
    from safetensors import safe_open

    rows: dict[str, int] = {}
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as fh:
        for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
            body = k
            while body.startswith("base_model.model."):
                body = body[len("base_model.model.") :]
            if body.split(".")[0] in ("classifier", "score") and body.endswith(".weight") and "lora_" not in body:
                rows[body] = fh.get_slice(k).get_shape()[0]
    for k, n in rows.items():
        if ".out_proj." in k:
            return n
    return next(iter(rows.values()), None)


def random_base(config_json: Path, adapter_dir: Path, *, fill: bool = False, meta: bool = False) -> Any:
    """The base an adapter loads into, from its config.json, with uninitialised (``fill``: small random) weights.

    Load behaviour does not depend on the values; ``fill`` is for forward passes."""
    import torch
    import transformers
    from transformers.initialization import no_init_weights

    cfg = json.loads(Path(config_json).read_text())
    cfg.pop("quantization_config", None)
    task = (_adapter_json(adapter_dir).get("task_type") or "").upper()
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        n = head_rows(adapter_dir)
        if n:
            cfg.pop("id2label", None)
            cfg.pop("label2id", None)
            cfg["num_labels"] = n
    config = transformers.AutoConfig.for_model(**cfg)
    arch = (cfg.get("architectures") or [None])[0]
    if task in TASK_AUTO_CLASS:
        auto = getattr(transformers, TASK_AUTO_CLASS[task])
        cls = auto._model_mapping[type(config)]
        if task == "SEQ_2_SEQ_LM" and arch and getattr(transformers, arch, None) is not None:
            cls = getattr(transformers, arch)
    else:
        cls = getattr(transformers, arch)
    torch.manual_seed(0)
    if meta:  # an unreadable adapter file: peft raises before the base's weights matter
        with torch.device("meta"):
            return cls._from_config(config, dtype=torch.bfloat16)
    with no_init_weights():
        model = cls._from_config(config, dtype=torch.bfloat16)
    if fill:
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-0.05, 0.05)
    return model.eval()


def real_truth(adapter_dir: Path, model: Any) -> Truth:
    """``PeftModel.from_pretrained`` of ``adapter_dir`` on ``model`` (modified in place)."""
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
    from safetensors import safe_open

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            key_mapping = getattr(model, "_checkpoint_conversion_mapping", {}) or {}
            pm = PeftModel.from_pretrained(model, str(adapter_dir))
            # from_pretrained discards torch's load result; the same two peft calls it makes (load_peft_weights +
            # set_peft_model_state_dict, same adapter name, same key mapping) return it: the unexpected keys
            res = set_peft_model_state_dict(
                pm, load_peft_weights(str(adapter_dir), key_mapping=key_mapping), adapter_name="default"
            )
        except Exception as e:  # noqa: BLE001 - we record what peft raises
            return Truth(None, None, None, f"{e.__class__.__name__}: {str(e).splitlines()[0]}", [], 0, False)
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as fh:
        file_keys = set(fh.keys())
    missing: list[str] = []
    for w in caught:
        hit = re.search(r"Found missing adapter keys while loading the checkpoint: (\[.*\])", str(w.message), re.S)
        if hit:
            missing = ast.literal_eval(hit.group(1))
    unexpected = [k for k in res.unexpected_keys]
    would_save = set(get_peft_model_state_dict(pm, adapter_name="default", save_embedding_layers=False))
    unsaved = sorted(k for k in would_save - file_keys if "lora_" not in k)
    lora = {n: p for n, p in pm.named_parameters() if ".lora_" in n and ".default" in n}
    nonfinite = sum(1 for p in lora.values() if not bool(torch.isfinite(p.float()).all()))
    bs = [p for n, p in lora.items() if ".lora_B." in n or ".lora_embedding_B." in n]
    all_zero = bool(bs) and all(not bool(torch.any(p != 0)) for p in bs)
    return Truth(len(file_keys) - len(unexpected), len(missing), len(unexpected), None, unsaved, nonfinite, all_zero)


def truth_of(adapter: Path, base: Path) -> Truth:
    """A real ``PeftModel.from_pretrained`` of ``adapter`` onto the real ``base`` (its saved weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return real_truth(adapter, load_base(base))


def per_variant(matrix: dict[str, tuple[Path, dict[str, Path]]], load: Any) -> Any:
    """``get(arch, variant)``: ``load(adapter_dir, base_dir)`` of a matrix's adapter, computed once."""
    cache: dict[tuple[str, str], Any] = {}

    def get(arch: str, variant: str) -> Any:
        if (arch, variant) not in cache:
            base, adapters = matrix[arch]
            cache[(arch, variant)] = load(adapters[variant], base)
        return cache[(arch, variant)]

    return get


def assert_kept_bit_for_bit(src_dir: Path, out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A repair dropped nothing and copied every kept tensor bit for bit; returns the repaired tensors."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(src_dir / "adapter_model.safetensors"))
    fixed = load_file(str(out_dir / "adapter_model.safetensors"))
    assert not report["dropped"] and len(report["kept"]) == len(saved) == len(fixed)
    for row in report["kept"]:
        a, b = saved[row["source_key"]], fixed[row["key"]]
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), row
    return fixed
