"""Tiny, real, deterministic example models and LoRA adapters.

Everything here is built with the real libraries: the bases are random-weight instances of transformers' own
Gemma 4 / Gemma 3 classes (``save_pretrained`` snapshots), the adapters are made with real ``peft``
(``get_peft_model`` + ``save_pretrained``), and the "seed" replicas reproduce the key layouts and config
fields of five real adapters from the Hub, scaled down to the tiny bases. Used by ``loradoc example`` (and by the
test-suite, whose broken variants of these adapters are made in ``tests/builders.py``).

Nothing heavy is imported at module level: torch, transformers, peft and safetensors are imported inside the
functions that need them.

Expectations (``AdapterSpec.expect``), i.e. what a real ``PeftModel.from_pretrained(base, adapter)`` does on
peft 0.21.2 / transformers 5.23:

* ``healthy``: loads, every tensor lands, no warning, the adapter changes the output.
* ``broken``: loads without an exception but (part of) the adapter silently does not apply.
* ``repairable``: loads and works, but the files carry defects loradoc rewrites (dead tensors, stale layout).
* ``raises``: ``PeftModel.from_pretrained`` raises.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loradoc.demo.adapters import build_adapter, randomize_lora
from loradoc.demo.bases import build_base
from loradoc.demo.files import build_atomically
from loradoc.demo.specs import (
    ADAPTER_SPECS,
    BASE_NAMES,
    BASE_REAL_IDS,
    LM_REGEX,
    LM_TARGETS,
    MARKER_NAME,
    PEFT_0_18_1_FIELDS,
    TOWER_EXCLUDE_REGEX,
    TOWER_LINEAR_REGEX,
    UNSLOTH_REGEX,
    AdapterSpec,
)
from loradoc.demo.tokenizer import VOCAB_SIZE
from loradoc.errors import BadInputError

__all__ = [
    "ADAPTER_SPECS",
    "BASE_NAMES",
    "BASE_REAL_IDS",
    "LM_REGEX",
    "LM_TARGETS",
    "MARKER_NAME",
    "PEFT_0_18_1_FIELDS",
    "TOWER_EXCLUDE_REGEX",
    "TOWER_LINEAR_REGEX",
    "UNSLOTH_REGEX",
    "VOCAB_SIZE",
    "AdapterSpec",
    "ExampleSet",
    "build_adapter",
    "build_base",
    "build_example",
    "randomize_lora",
]


@dataclass(frozen=True)
class ExampleSet:
    """Paths of a built example tree: ``root/bases/<base>/`` and ``root/adapters/<adapter>/``."""

    root: Path
    bases: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)

    def base_for(self, adapter: str) -> Path:
        """The directory of the tiny base an adapter belongs to."""
        return self.bases[ADAPTER_SPECS[adapter].base]

    def spec(self, adapter: str) -> AdapterSpec:
        return ADAPTER_SPECS[adapter]


def build_example(root: Path, *, names: Iterable[str] | None = None) -> ExampleSet:
    """Build ``root/bases/<base>/`` and ``root/adapters/<adapter>/``: all of them, or only ``names`` (base
    and/or adapter names) plus the bases those adapters need.

    Items already complete (marker file present, written last) are kept. Each item is built in a temporary
    sibling and renamed into place, so an interrupted build never leaves a half-written item behind."""
    root = Path(root)
    wanted = list(BASE_NAMES) + list(ADAPTER_SPECS) if names is None else list(names)
    unknown = [n for n in wanted if n not in BASE_NAMES and n not in ADAPTER_SPECS]
    if unknown:
        raise BadInputError(
            f"unknown example name(s): {', '.join(unknown)}",
            f"choose from {', '.join([*BASE_NAMES, *ADAPTER_SPECS])}",
        )
    adapters = [n for n in wanted if n in ADAPTER_SPECS]
    bases = [b for b in BASE_NAMES if b in wanted or any(ADAPTER_SPECS[a].base == b for a in adapters)]

    result = ExampleSet(root=root)
    for base in bases:
        result.bases[base] = build_atomically(root / "bases" / base, lambda d, b=base: build_base(b, d))
    for adapter in adapters:
        base_dir = result.bases[ADAPTER_SPECS[adapter].base]
        result.adapters[adapter] = build_atomically(
            root / "adapters" / adapter, lambda d, a=adapter, bd=base_dir: build_adapter(a, bd, d)
        )
    return result
