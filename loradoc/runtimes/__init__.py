"""Will vLLM, SGLang, llama.cpp and mlx-lm load this adapter, and what makes them?

    from loradoc.runtimes import check_runtimes
    report = check_runtimes("path/to/adapter", base="google/gemma-4-E4B-it")   # base: optional
    for r in report.results: print(r.name, r.version, r.summary(), r.fix)

Each runtime is one module (vllm, sglang, llama_cpp, mlx_lm) applying the rules of ``rules.toml``: every rule names
the runtime version, file and function it was read from and carries the runtime's own message. Verdicts:
``loads`` / ``loads-with-flags`` (``flags``) / ``refused`` (the runtime's message; ``fix``: the loradoc command that
makes it load, when one does) / ``unknown``. Reads adapter_config.json, the safetensors header and the base's
config.json only (no torch, no weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.runtimes import llama_cpp, mlx_lm, sglang, vllm
from loradoc.runtimes._model import (
    FLAGS,
    LOADS,
    REFUSED,
    RUNTIME_ALIASES,
    RUNTIMES,
    UNKNOWN,
    VERDICTS,
    AdapterFacts,
    BaseFacts,
    Hit,
    RuntimeResult,
    read_adapter,
    read_base,
    rules_data,
    runtime_info,
    tables,
)

_CHECKS = {"vllm": vllm.check, "sglang": sglang.check, "llama_cpp": llama_cpp.check, "mlx_lm": mlx_lm.check}


@dataclass
class RuntimeReport:
    adapter: str
    base: str | None
    architecture: str | None
    results: list[RuntimeResult] = field(default_factory=list)
    towers: str = "names"  # where the tower / text split came from: "profile" | "shipped profile" | "names"

    def get(self, runtime: str) -> RuntimeResult:
        rt = RUNTIME_ALIASES.get(runtime.lower(), runtime)
        return next(r for r in self.results if r.runtime == rt)

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "base": self.base,
            "architecture": self.architecture,
            "towers": self.towers,
            "runtimes": {r.runtime: r.to_json() for r in self.results},
        }


def check_runtimes(adapter: str | Path, base: str | None = None) -> RuntimeReport:
    """The runtime table for a local adapter directory (``base``: a local base dir, its config.json, or a shipped
    base id; None: the architecture-dependent rules answer ``unknown``).

    Which keys are tower / projector keys comes from the base's profile (its structure): a cached one, or the
    shipped one for a shipped id (no torch: nothing is built here); without ``base``, the base the adapter's config
    names when that has one. Otherwise tower names decide, and every result's notes say so."""
    from loradoc.convert.gguf_names import base_towers

    facts = read_adapter(adapter)
    bf = read_base(base)
    recorded = facts.cfg("base_model_name_or_path")
    bt = base_towers(base if base else recorded if isinstance(recorded, str) else None, allow_build=False)
    facts.towers = bt.towers
    rep = RuntimeReport(str(adapter), bf.id if bf else None, bf.architecture if bf else None, towers=bt.source)
    for rt in RUNTIMES:
        res = _CHECKS[rt](facts, bf)
        if bt.note and facts.keys_known:
            res.notes.append(bt.note)
        rep.results.append(res)
    return rep


def fill_placeholders(text: str | None, adapter: str, base: str | None) -> str | None:
    """A fix with ADAPTER / BASE replaced by the real paths (for printing a command to copy)."""
    if text is None:
        return None
    out = text.replace("ADAPTER.gguf", f"{Path(adapter).name}.gguf").replace("ADAPTER", adapter)
    if base:
        out = out.replace("BASE", base)
    return out


__all__ = [
    "FLAGS",
    "LOADS",
    "REFUSED",
    "RUNTIMES",
    "RUNTIME_ALIASES",
    "UNKNOWN",
    "VERDICTS",
    "AdapterFacts",
    "BaseFacts",
    "Hit",
    "RuntimeReport",
    "RuntimeResult",
    "check_runtimes",
    "fill_placeholders",
    "read_adapter",
    "read_base",
    "rules_data",
    "runtime_info",
    "tables",
]
