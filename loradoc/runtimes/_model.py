"""What the runtime checks read (adapter + base facts) and what they answer (a verdict per runtime).

Pure Python: reads adapter_config.json, the safetensors header (names and shapes only), added_tokens.json and the
base's config.json. No torch.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from loradoc.errors import LoradocError
from loradoc.model.layout import parse_key, tower_of

HERE = Path(__file__).resolve().parent

LOADS = "loads"
FLAGS = "loads-with-flags"
REFUSED = "refused"
UNKNOWN = "unknown"
VERDICTS = (LOADS, FLAGS, REFUSED, UNKNOWN)
RUNTIMES = ("vllm", "sglang", "llama_cpp", "mlx_lm")
RUNTIME_ALIASES = {"vllm": "vllm", "sglang": "sglang", "llama.cpp": "llama_cpp", "llama_cpp": "llama_cpp",
                   "llamacpp": "llama_cpp", "mlx-lm": "mlx_lm", "mlx_lm": "mlx_lm", "mlx": "mlx_lm"}  # fmt: skip


@lru_cache(maxsize=1)
def rules_data() -> dict[str, Any]:
    return tomllib.loads((HERE / "rules.toml").read_text())


@lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    return json.loads((HERE / "tables.json").read_text())


@lru_cache(maxsize=1)
def _rules_by_id() -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rules_data()["rules"]}


def rule(rule_id: str) -> dict[str, Any]:
    return _rules_by_id()[rule_id]


def runtime_info(runtime: str) -> dict[str, Any]:
    return rules_data()["runtimes"][runtime]


@dataclass
class Hit:
    """One rule that applies to this adapter."""

    rule: str
    effect: str  # refuse | flag | ignore | convert | unknown
    message: str  # the runtime's own message, filled in
    fix: str | None = None

    @property
    def source(self) -> str:
        r = _rules_by_id().get(self.rule)
        if r is None:
            return ""
        return f"{r['runtime']} {runtime_info(r['runtime'])['version']} {r['file']}: {r['function']}"

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "effect": self.effect, "message": self.message, "fix": self.fix,
                "source": self.source}  # fmt: skip


def hit(rule_id: str, message: str | None = None, *, fix: str | None = None, effect: str | None = None,
        **fmt: Any) -> Hit:  # fmt: skip
    """A Hit of a rules.toml rule: its message and fix templates filled with ``fmt``."""
    r = rule(rule_id)
    msg = message if message is not None else r["message"].format(**fmt)
    if fix is None and r.get("fix"):
        try:
            fix = r["fix"].format(**fmt)
        except (KeyError, IndexError):
            fix = r["fix"]
    return Hit(rule_id, effect or r["effect"], msg, fix)


@dataclass
class RuntimeResult:
    runtime: str  # vllm | sglang | llama_cpp | mlx_lm
    verdict: str  # loads | loads-with-flags | refused | unknown
    flags: list[str] = field(default_factory=list)  # runtime flags it needs (loads-with-flags)
    hits: list[Hit] = field(default_factory=list)
    fix: str | None = None  # what makes a refused adapter load (a loradoc command), when something does
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return runtime_info(self.runtime)["name"]

    @property
    def version(self) -> str:
        return runtime_info(self.runtime)["version"]

    @property
    def warnings(self) -> list[Hit]:
        return [h for h in self.hits if h.effect == "ignore"]

    def reason(self) -> str:
        """The runtime's own message for the verdict (the first refusal, else the first flag / warning)."""
        for effects in (("refuse",), ("convert",), ("unknown",), ("flag",), ("ignore",)):
            for h in self.hits:
                if h.effect in effects:
                    return h.message
        return ""

    def summary(self) -> str:
        """One line: ``loads with flags (--max-lora-rank 64)``, ``refused (reason)``..."""
        if self.verdict == FLAGS:
            s = f"loads with flags ({' '.join(self.flags)})"
        elif self.verdict == REFUSED:
            s = f"refused ({self.reason()})"
        elif self.verdict == UNKNOWN:
            s = f"unknown ({self.reason() or (self.notes[0] if self.notes else 'not enough facts')})"
        else:
            s = LOADS
        if self.warnings:
            s += "; " + "; ".join(h.message for h in self.warnings)
        return s

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "name": self.name,
            "version": self.version,
            "verdict": self.verdict,
            "flags": list(self.flags),
            "fix": self.fix,
            "summary": self.summary(),
            "hits": [h.to_json() for h in self.hits],
            "notes": list(self.notes),
        }


def config_missing(runtime: str, a: AdapterFacts) -> RuntimeResult:
    """The refusal of a runtime that opens adapter_config.json with Python's open() (vLLM, SGLang) when the file is
    missing or unreadable: the ``<runtime>.config-missing`` rule with the FileNotFoundError text it raises."""
    msg = f"[Errno 2] No such file or directory: '{a.directory / 'adapter_config.json'}'"
    return settle(runtime, [hit(f"{runtime}.config-missing", msg)], [a.config_problem or ""])


def settle(runtime: str, hits: list[Hit], notes: list[str], *, base_flags: tuple[str, ...] = ()) -> RuntimeResult:
    """The verdict from the hits: a refusal (or a needed conversion) refuses, with the fix when every refusal
    has one; else an unknown makes it unknown; else flags give loads-with-flags; else loads."""
    refusals = [h for h in hits if h.effect in ("refuse", "convert")]
    flags = [h.fix for h in hits if h.effect == "flag" and h.fix]
    res = RuntimeResult(runtime, LOADS, hits=hits, notes=notes)
    if refusals:
        res.verdict = REFUSED
        if all(h.fix for h in refusals):
            res.fix = " && ".join(dict.fromkeys(h.fix for h in refusals if h.fix))
    elif any(h.effect == "unknown" for h in hits):
        res.verdict = UNKNOWN
    elif flags:
        res.verdict = FLAGS
        res.flags = [*base_flags, *dict.fromkeys(flags)]
    return res


# ------------------------------------------------------------------------------------------------- facts


@dataclass
class AdapterFacts:
    directory: Path
    config: dict[str, Any] | None  # adapter_config.json as read; None when absent or unreadable
    config_problem: str | None
    weights: str | None  # the weights file's name, None when there is none
    keys: dict[str, tuple[int, ...]]  # safetensors header: name -> shape ({} when unknown)
    keys_known: bool
    added_tokens: dict[str, int] | None
    # the base profile's towers (module prefix -> kind), set by check_runtimes; None: tower names decide
    towers: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return self.directory.name

    def is_text(self, key: str) -> bool:
        """Whether ``key`` belongs to the text model (not a vision / audio tower or projector)."""
        return tower_of(parse_key(key).module, self.towers) == "language"

    def cfg(self, key: str, default: Any = None) -> Any:
        return (self.config or {}).get(key, default)

    def tower_keys(self) -> list[str]:
        return [k for k in self.keys if not self.is_text(k)]

    def lora_ranks(self) -> dict[str, int]:
        """module -> rank, from the lora_A / lora_embedding_A shapes."""
        out: dict[str, int] = {}
        for k, shape in self.keys.items():
            p = parse_key(k)
            if p.kind in ("lora_A", "lora_embedding_A") and shape:
                out[p.module] = int(shape[0])
        return out


@dataclass
class BaseFacts:
    id: str
    architecture: str | None
    model_type: str | None
    tie_word_embeddings: bool | None
    vocab_size: int | None

    @property
    def known(self) -> bool:
        return self.architecture is not None


def read_adapter(path: str | Path) -> AdapterFacts:
    from loradoc.io.safetensors import read_header

    d = Path(path)
    config: dict[str, Any] | None = None
    problem = None
    cfg_path = d / "adapter_config.json"
    if cfg_path.is_file():
        try:
            raw = json.loads(cfg_path.read_bytes())
            if isinstance(raw, dict):
                config = raw
            else:
                problem = "adapter_config.json is not a JSON object"
        except (OSError, ValueError) as e:
            problem = f"adapter_config.json is not readable JSON ({e.__class__.__name__})"
    else:
        problem = "no adapter_config.json"
    keys: dict[str, tuple[int, ...]] = {}
    weights = None
    keys_known = False
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt"):
        if (d / name).is_file():
            weights = name
            break
    if weights == "adapter_model.safetensors":
        try:
            h = read_header(d / weights)
            keys = {n: tuple(t.shape) for n, t in h.tensors.items()}
            keys_known = True
        except LoradocError:
            keys_known = False
    added = None
    if (d / "added_tokens.json").is_file():
        try:
            v = json.loads((d / "added_tokens.json").read_bytes())
            added = v if isinstance(v, dict) else None
        except (OSError, ValueError):
            added = None
    return AdapterFacts(d, config, problem, weights, keys, keys_known, added)


def read_base(base: str | None) -> BaseFacts | None:
    """A local base directory, its config.json, or a shipped base id; None when not given."""
    if not base:
        return None
    from loradoc.model.profiles import read_config, resolve_base

    p = Path(base).expanduser()
    if p.is_file() and p.suffix == ".json":  # a bare config file (e.g. real-adapters/base-configs/NAME.json)
        cfg, _ = read_config(p)
        name = str(p.parent) if p.name == "config.json" else p.stem
    else:
        src = resolve_base(base)
        cfg, _ = read_config(src.config_path)
        name = src.name
    archs = cfg.get("architectures") or []
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    vocab = cfg.get("vocab_size", text.get("vocab_size"))
    return BaseFacts(
        id=name,
        architecture=archs[0] if archs and isinstance(archs[0], str) else None,
        model_type=cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None,
        tie_word_embeddings=bool(tie) if tie is not None else None,
        vocab_size=int(vocab) if isinstance(vocab, int) else None,
    )
