"""A real peft load on the meta device: peft's own injection and state-dict loading, no weights read.

The steps mirror ``PeftModel.from_pretrained`` + ``PeftModel.load_adapter`` (peft 0.14 - 0.21):

1. the base model class is built from config.json on the meta device;
2. the adapter config is read by peft's own ``PeftConfig`` classes from the adapter directory;
3. the ``PeftModel`` (or its task-type subclass) injects LoRA layers with peft's own code;
4. a state dict of *meta* tensors with the header's names, shapes and dtypes goes through the same key mapping
   as ``load_peft_weights`` and then through peft's ``set_peft_model_state_dict``;
5. missing keys are filtered exactly as ``load_adapter`` does before it warns "Found missing adapter keys".

Only step 4's file read is replaced (by meta tensors); everything else is peft's and torch's real code.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from loradoc.diagnose.keyfates import PeftCounts
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.profiles import BaseSource, ModelSpec, instantiate_meta

_ST_TO_TORCH = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


@dataclass
class DryLoad:
    counts: PeftCounts
    warnings: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    # keys a peft save of this config writes (peft's own get_peft_model_state_dict) that the file lacks, outside
    # the LoRA tensors peft warns about: trained biases (bias="lora_only"/"all") and modules_to_save weights.
    # peft loads silently without them (the base's untrained values stay).
    unsaved_bias: list[str] = field(default_factory=list)
    unsaved_modules: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)  # wrapped (trained, saved whole) module paths


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@contextlib.contextmanager
def capture_warnings() -> Any:
    """Collect python warnings and peft/transformers log warnings (the channels peft reports through)."""
    handler = _Capture()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield handler.records, caught
        finally:
            for lg in loggers:
                lg.removeHandler(handler)


def _remap_like_load_peft_weights(state: dict[str, Any], key_mapping: dict[str, str]) -> dict[str, Any]:
    """peft.utils.save_and_load.load_peft_weights' key_mapping step, over meta tensors."""
    if not key_mapping:
        return state
    out: dict[str, Any] = {}
    for key, val in state.items():
        if key.startswith("base_model.model."):
            prefix = "base_model.model."
        elif key.startswith("base_model."):
            prefix = "base_model."
        else:
            raise ValueError(
                "An error occurred while trying to load a PEFT state_dict with key_mapping. This should not happen."
            )
        k = key.removeprefix(prefix)
        for pattern, replacement in key_mapping.items():
            new, n = re.subn(pattern, replacement, k)
            if n > 0:
                k = new
                break
        out[f"{prefix}{k}"] = val
    return out


def _first_line(e: BaseException) -> str:
    """peft's whole message on one line (whitespace folded, nothing cut: --json must not lose data)."""
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text}"


def _peft_config(config_dict: dict[str, Any]) -> Any:
    """peft's own config classes read the adapter config (``PeftConfig.from_pretrained`` on a private copy, so a
    planned config is judged exactly like a saved one)."""
    import json
    import tempfile

    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    with tempfile.TemporaryDirectory(prefix="loradoc-dryload-") as d:
        with open(f"{d}/adapter_config.json", "w") as fh:
            json.dump(config_dict, fh)
        peft_type = PeftConfig._get_peft_type(d)
        return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(d)


def dry_load(snapshot: AdapterSnapshot, base: BaseSource, spec: ModelSpec | None = None) -> DryLoad:
    """peft's load of ``snapshot`` (its header and its config, which may be a planned one) into the base class
    ``spec`` implies, on the meta device."""
    import torch
    from peft import PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    model, _config, _raw, _sha = instantiate_meta(base, spec)
    with capture_warnings() as (logs, caught):
        try:
            config = _peft_config(snapshot.config.raw)
            config.inference_mode = True
            key_mapping = {}
            if not config.is_prompt_learning:
                key_mapping = getattr(model, "_checkpoint_conversion_mapping", {}) or {}
            cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
            with torch.device("meta"):
                pm = cls(model, config, "default", autocast_adapter_dtype=True, low_cpu_mem_usage=False)
            state = {
                name: torch.empty(
                    rec.shape, dtype=getattr(torch, _ST_TO_TORCH.get(rec.dtype, "float32")), device="meta"
                )
                for name, rec in snapshot.tensors.items()
            }
            state = _remap_like_load_peft_weights(state, key_mapping)
            would_save = set(get_peft_model_state_dict(pm, adapter_name="default", save_embedding_layers=False))
            result = set_peft_model_state_dict(pm, state, adapter_name="default")
        except Exception as e:  # noqa: BLE001 - we report whatever peft would raise
            msgs = [str(w.message) for w in caught] + logs
            return DryLoad(PeftCounts(None, None, None, False, _first_line(e)), msgs)
        tuner_prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")
        missing = [k for k in result.missing_keys if tuner_prefix in k and "default" in k]
        unexpected = list(result.unexpected_keys)
        injected = [n for n, m in pm.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]
        missing_set = set(missing)
        effective_modules = sum(
            1
            for n in injected
            if not any(k.startswith(f"{n}.lora_") or k.startswith(f"base_model.model.{n}.lora_") for k in missing_set)
        )
        wrapped = sorted(
            n.removeprefix("base_model.model.")
            for n, m in pm.named_modules()
            if type(m).__name__ == "ModulesToSaveWrapper"
        )
    unsaved = sorted(k for k in would_save - set(state) if tuner_prefix not in k)
    in_wrapped = [k for k in unsaved if any(k.startswith(f"base_model.model.{w}.") for w in wrapped)]
    msgs = [str(w.message) for w in caught] + logs
    counts = PeftCounts(
        loaded=len(state) - len(unexpected),
        missing=len(missing),
        unexpected=len(unexpected),
        effective=effective_modules > 0,
        missing_keys=sorted(missing),
        unexpected_keys=sorted(unexpected),
        effective_modules=effective_modules,
        injected_modules=len(injected),
    )
    return DryLoad(
        counts,
        msgs,
        injected,
        unsaved_bias=[k for k in unsaved if k not in in_wrapped],
        unsaved_modules=in_wrapped,
        modules_to_save=wrapped,
    )
