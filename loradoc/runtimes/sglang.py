"""SGLang (rules.toml [runtimes.sglang]): LoRAConfig's required fields, LoRAManager.validate_new_adapter (added
tokens, DoRA), get_normalized_target_modules (string target_modules), and the model's should_apply_lora hook for
tower LoRAs (tables.json)."""

from __future__ import annotations

from loradoc.runtimes._model import (
    AdapterFacts,
    BaseFacts,
    Hit,
    RuntimeResult,
    config_missing,
    hit,
    runtime_info,
    settle,
    tables,
)

RUNTIME = "sglang"
BASE_FLAGS = ("--enable-lora",)


def added_token_count(a: AdapterFacts, base: BaseFacts | None) -> int:
    """lora_config.py: tokens of added_tokens.json whose id is not below the base vocabulary size."""
    if not a.added_tokens:
        return 0
    vocab = base.vocab_size if base is not None else None
    if vocab is None:
        return len(a.added_tokens)
    return sum(1 for v in a.added_tokens.values() if v >= vocab)


def check(a: AdapterFacts, base: BaseFacts | None) -> RuntimeResult:
    hits: list[Hit] = []
    notes: list[str] = []
    info = runtime_info(RUNTIME)
    if a.config is None:
        return config_missing(RUNTIME, a)
    cfg = a.config
    for f in ("target_modules", "r", "lora_alpha"):  # the order LoRAConfig.__init__ reads them
        if f not in cfg:
            return settle(RUNTIME, [hit("sglang.required-fields", field=f)], notes)
    # validate_new_adapter: added tokens first, then DoRA
    if added_token_count(a, base) > 0:
        hits.append(hit("sglang.added-tokens", name=a.name))
    if cfg.get("use_dora", False):
        hits.append(hit("sglang.dora", name=a.name))
    tm = cfg["target_modules"]
    if isinstance(tm, str) and tm not in info["string_target_modules"]:
        hits.append(hit("sglang.target-modules-string"))
    unread = [f for f in ("modules_to_save", "bias", "lora_bias") if cfg.get(f) not in (None, False, "none", [])]
    if unread:
        hits.append(hit("sglang.modules-to-save", fields=", ".join(unread)))
    r = cfg.get("r")
    if isinstance(r, int):
        notes.append(f"--max-lora-rank is inferred from the adapters given at startup; an adapter loaded later "
                     f"needs --max-lora-rank >= {max([r, *(cfg.get('rank_pattern') or {}).values()])}")  # fmt: skip
    towers = a.tower_keys()
    if base is None or not base.known:
        hits.append(Hit("sglang.architecture", "unknown", "base architecture unknown: pass --base"))
    else:
        entry = tables()["sglang"]["architectures"].get(base.architecture or "")
        if entry is None:
            hits.append(hit("sglang.architecture",
                            f"{base.architecture} is not a native SGLang {info['version']} model (its Transformers "
                            "fallback's LoRA support is not checked)"))  # fmt: skip
        else:
            if isinstance(tm, list) and not entry["get_hidden_dim"]:
                t = tables()["sglang"]
                known = set(t["default_hidden_dim_modules"])
                norm = [t["params_mapping"].get(n.split(".")[-1], n.split(".")[-1]) for n in tm if isinstance(n, str)]
                bad = [n for n in dict.fromkeys(norm) if n not in known]
                if bad:
                    hits.append(hit("sglang.hidden-dim", name=bad[0], architecture=base.architecture))
        if entry is not None and towers:
            if entry["should_apply_lora"]:
                hits.append(hit("sglang.towers", count=len(towers), architecture=base.architecture))
            else:
                hits.append(hit("sglang.towers", f"{len(towers)} tower LoRA tensors: not verified", effect="unknown",
                                fix=""))  # fmt: skip
    return settle(RUNTIME, hits, notes, base_flags=BASE_FLAGS)
