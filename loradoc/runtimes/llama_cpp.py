"""llama.cpp (rules.toml [runtimes.llama_cpp]): a LoRA adapter is read only as GGUF; what llama.cpp's own
convert_lora_to_gguf.py and llama_adapter_lora_init refuse; which architectures its converters know
(tables.json): ``loradoc convert gguf-lora`` writes every one of them (it runs llama.cpp's converter classes)."""

from __future__ import annotations

from loradoc.model.layout import parse_key
from loradoc.runtimes._model import AdapterFacts, BaseFacts, Hit, RuntimeResult, hit, settle, tables

RUNTIME = "llama_cpp"


def not_lora_tensors(a: AdapterFacts) -> list[str]:
    """Keys convert_lora_to_gguf.py refuses ("Not a lora_A or lora_B tensor"): DoRA magnitudes, LoRA biases,
    full (modules_to_save) weights. It keeps ``.base_layer.weight`` (skipped) and norm vectors."""
    out = []
    for k in sorted(a.keys):
        is_a = ".lora_A.weight" in k or ".lora_embedding_A" in k
        is_b = ".lora_B.weight" in k or ".lora_embedding_B" in k
        if is_a or is_b or ".base_layer.weight" in k or "_layernorm" in k or ".norm" in k:
            continue
        out.append(k)
    return out


def check(a: AdapterFacts, base: BaseFacts | None) -> RuntimeResult:
    hits: list[Hit] = []
    notes: list[str] = []
    if a.config is None:
        return settle(RUNTIME, [hit("llama_cpp.gguf", fix="")], [a.config_problem or ""])
    cfg = a.config
    fix = "loradoc convert gguf-lora ADAPTER --base BASE --out ADAPTER.gguf"
    if base is not None and base.known and base.architecture not in tables()["llama_cpp"]["converter_architectures"]:
        hits.append(hit("llama_cpp.architecture", architecture=base.architecture))
        fix = ""
    if a.keys_known:
        bad = not_lora_tensors(a)
        if bad:
            hits.append(hit("llama_cpp.not-lora-tensor", name=bad[0].replace("base_model.model.", "", 1)))
            if len(bad) > 1:
                notes.append(f"{len(bad)} tensors are not lora_A/lora_B, e.g. {', '.join(bad[:3])}")
        text = [k for k in a.keys if a.is_text(k)]
        towers = [k for k in a.keys if k not in text]
        if towers and not text:
            hits.append(hit("llama_cpp.towers", effect="refuse", fix="", name=towers[0]))
        elif towers:
            hits.append(hit("llama_cpp.towers", name=towers[0]))
        heads = [k for k in text if parse_key(k).module.split(".")[-1] in ("lm_head", "embed_out", "output")]
        if heads and base is not None and base.tie_word_embeddings:
            hits.append(hit("llama_cpp.tied-output"))
    elif a.weights is None:
        hits.append(Hit("llama_cpp.not-lora-tensor", "refuse", "the adapter has no weights file"))
    else:
        notes.append(f"{a.weights}: tensors not checked (not safetensors)")
    if cfg.get("use_dora") and not any(h.rule == "llama_cpp.not-lora-tensor" for h in hits):
        hits.append(hit("llama_cpp.not-lora-tensor", "use_dora: llama.cpp has no DoRA (loradoc convert gguf-lora "
                        "refuses DoRA adapters)"))  # fmt: skip
    if base is None or not base.known:
        hits.append(Hit("llama_cpp.architecture", "unknown", "base architecture unknown: pass --base"))
    refused = any(h.effect == "refuse" for h in hits)
    if fix.startswith("loradoc") and not refused:
        notes.append("`loradoc convert gguf-lora` converts adapters `loradoc doctor` calls healthy: `loradoc repair` "
                     "first when it does not")  # fmt: skip
    # the PEFT directory itself is never a llama.cpp adapter: the conversion is the fix unless something refuses
    hits.insert(0, hit("llama_cpp.gguf", fix=fix if (fix and not refused) else ""))
    res = settle(RUNTIME, hits, notes)
    if not res.fix:
        res.fix = None
    return res
