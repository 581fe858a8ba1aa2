"""vLLM (rules.toml [runtimes.vllm]): PEFTHelper's validation, parse_fine_tuned_lora_name on every key, the model
class's SupportsLoRA / supports_tower_connector_lora (tables.json), and --max-lora-rank's allowed values."""

from __future__ import annotations

import re
from typing import Any

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

RUNTIME = "vllm"
BASE_FLAGS = ("--enable-lora",)


def feature_messages(cfg: dict[str, Any]) -> list[str]:
    """PEFTHelper._validate_features, same order and text (task_type SEQ_CLS / TOKEN_CLS adds the heads to
    modules_to_save first, as PEFTHelper.__post_init__ does)."""
    info = runtime_info(RUNTIME)
    msgs: list[str] = []
    mts = cfg.get("modules_to_save")
    if cfg.get("task_type") in ("SEQ_CLS", "TOKEN_CLS"):
        mts = list(dict.fromkeys([*(mts or []), "classifier", "score"]))
    if mts:
        bad = [m for m in mts if m not in info["modules_to_save_allowed"]]
        if bad:
            msgs.append(hit("vllm.modules-to-save", modules=bad).message)
    if cfg.get("use_dora"):
        msgs.append(hit("vllm.dora").message)
    if cfg.get("lora_bias"):
        msgs.append(hit("vllm.lora-bias").message)
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in info["supported_string_inits"]:
        msgs.append(hit("vllm.init", init=init).message)
    if cfg.get("alora_invocation_tokens"):
        msgs.append(hit("vllm.alora").message)
    if cfg.get("layer_replication"):
        msgs.append(hit("vllm.layer-replication").message)
    if cfg.get("use_bdlora"):
        msgs.append(hit("vllm.bdlora").message)
    if cfg.get("use_qalora"):
        msgs.append(hit("vllm.qalora").message)
    return msgs


_FEATURE_RULES = (
    ("vllm.modules-to-save", "vLLM only supports modules_to_save"),
    ("vllm.dora", "vLLM does not yet support DoRA."),
    ("vllm.lora-bias", "vLLM does not support LoRA bias"),
    ("vllm.init", "vLLM does not support init_lora_weights="),
    ("vllm.alora", "vLLM does not support Activated LoRA"),
    ("vllm.layer-replication", "vLLM does not support layer_replication."),
    ("vllm.bdlora", "vLLM does not support block-diagonal LoRA"),
    ("vllm.qalora", "vLLM does not support QALoRA."),
)


def max_rank(cfg: dict[str, Any]) -> int:
    pattern = cfg.get("rank_pattern") or {}
    return max([cfg["r"], *pattern.values()])


def needed_max_lora_rank(rank: int) -> int | None:
    """The smallest allowed --max-lora-rank value >= rank (None: above every allowed value)."""
    for v in tables()["vllm"]["max_lora_ranks"]:
        if v >= rank:
            return v
    return None


def is_base_embedding_weights(name: str) -> bool:
    return name.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight"))


def parse_lora_name(name: str) -> str | None:
    """vllm/lora/utils.py parse_fine_tuned_lora_name without a weights mapper: the module name, or None where it
    raises "... is unsupported LoRA weight"."""
    if name.startswith("base_model.model."):
        name = name.replace("base_model.model.", "")
    start = 2 if name.startswith("base_model.model.") else 0
    parts = name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) >= 2:
        if parts[-2] in ("lora_A", "lora_B") and parts[-1] == "weight":
            return ".".join(parts[start:-2])
        if parts[-2] in ("score", "classifier"):
            return parts[-2]
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[start:-1])
    return None


def unsupported_key_message(name: str) -> str:
    """The message parse_fine_tuned_lora_name raises (it names the key after stripping ``base_model.model.``)."""
    shown = name.replace("base_model.model.", "") if name.startswith("base_model.model.") else name
    return hit("vllm.key-name", name=shown).message


def served_architecture(arch: str, task_type: str | None) -> str:
    """The class a SEQ_CLS / TOKEN_CLS adapter is served with: the base's ``<Prefix>For{Sequence,Token}
    Classification`` when vLLM has it (a base config names its pretraining head, e.g. BertForMaskedLM)."""
    suffix = {"SEQ_CLS": "ForSequenceClassification", "TOKEN_CLS": "ForTokenClassification"}.get(task_type or "")
    if not suffix or arch.endswith(suffix):
        return arch
    m = re.match(r"^(.*?)(For[A-Za-z]+|Model)$", arch)
    cand = (m.group(1) if m else arch) + suffix
    return cand if cand in tables()["vllm"]["architectures"] else arch


def check(a: AdapterFacts, base: BaseFacts | None) -> RuntimeResult:
    hits: list[Hit] = []
    notes: list[str] = []
    info = runtime_info(RUNTIME)
    if a.config is None:
        return config_missing(RUNTIME, a)
    cfg = a.config
    missing = [f for f in info["required_fields"] if f not in cfg]
    if missing:
        return settle(RUNTIME, [hit("vllm.required-fields", fields=set(missing))], notes)
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        return settle(RUNTIME, [hit("vllm.rank-positive", r=r)], notes)
    for key, rank in (cfg.get("rank_pattern") or {}).items():
        if not isinstance(rank, int) or rank <= 0:
            return settle(RUNTIME, [hit("vllm.rank-pattern-positive", key=key, rank=rank)], notes)

    for msg in feature_messages(cfg):
        rid = next(rid for rid, prefix in _FEATURE_RULES if msg.startswith(prefix))
        hits.append(hit(rid, msg))
    top = max_rank(cfg)
    if top > info["default_max_lora_rank"]:
        need = needed_max_lora_rank(top)
        msg = hit("vllm.max-lora-rank", rank=top, max_lora_rank=info["default_max_lora_rank"]).message
        if need is None:  # above every allowed --max-lora-rank: no flag helps
            biggest = tables()["vllm"]["max_lora_ranks"][-1]
            hits.append(Hit("vllm.max-lora-rank", "refuse", msg))
            notes.append(f"rank {top} is above the largest allowed --max-lora-rank ({biggest})")
        else:
            hits.append(hit("vllm.max-lora-rank", msg, needed=need))
    if cfg.get("bias", "none") != "none":
        hits.append(hit("vllm.bias"))

    if a.keys_known:
        bad = [k for k in sorted(a.keys) if not is_base_embedding_weights(k) and parse_lora_name(k) is None]
        if bad:
            hits.append(hit("vllm.key-name", unsupported_key_message(bad[0])))
            if len(bad) > 1:
                notes.append(f"{len(bad)} keys vLLM cannot parse, e.g. {', '.join(bad[:3])}")
    elif a.weights is None:
        hits.append(hit("vllm.key-name", f"{a.directory} doesn't contain tensors", effect="refuse"))
    else:
        notes.append(f"{a.weights}: key names not checked (not safetensors)")

    towers = a.tower_keys()
    if base is None or not base.known:
        notes.append("base architecture unknown (pass --base): SupportsLoRA not checked")
        hits.append(Hit("vllm.architecture", "unknown", "base architecture unknown: pass --base"))
    else:
        arch = served_architecture(base.architecture or "", cfg.get("task_type"))
        entry = tables()["vllm"]["architectures"].get(arch)
        if entry is None:
            hits.append(Hit("vllm.architecture", "unknown",
                            f"{arch} is not in vLLM {info['version']}'s model registry "
                            "(it would try its Transformers backend)"))  # fmt: skip
        elif entry["status"] != "native":
            why = f"{entry['status'].replace('_', ' ')}: {entry.get('note', '')}"
            msg = f"{arch} is not served by vLLM {info['version']} ({why})"
            hits.append(hit("vllm.architecture", msg, effect="refuse"))
        elif not entry["lora"]:
            hits.append(hit("vllm.architecture", architecture=arch, model=base.id))
        elif towers:
            if entry["tower_connector_lora"]:
                hits.append(hit("vllm.towers", model=entry["class"].split(".")[-1]))
            else:
                hits.append(hit("vllm.towers-unsupported", architecture=arch))
    if towers and (base is None or not base.known):
        notes.append(f"{len(towers)} tower/connector LoRA tensors: need --enable-tower-connector-lora on a model "
                     "that supports it, else they are not applied")  # fmt: skip
    notes.append("module names are matched against the model's LoRA modules at load time (run `loradoc doctor`)")
    return settle(RUNTIME, hits, notes, base_flags=BASE_FLAGS)
