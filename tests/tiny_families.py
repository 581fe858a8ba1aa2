"""Tiny random bases of popular LLM families (hidden 64, 2 layers) with real tokenizer files, and real-peft
LoRA adapters on them: the inputs of the per-family GGUF checks (tests/test_gguf_families.py, benchmarks/gguf.py).

Tokenizer files come from ``../shared/data/tokenizers`` beside the checkout (see its README); a family whose
files are absent is skipped by the tests. Gemma 2 has no Gemma tokenizer there: it gets the Llama-2
SentencePiece model, which is all llama.cpp needs (the checks feed token ids, not text).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOKENIZERS = Path(REPO.parent / "shared" / "data" / "tokenizers")

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
_ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    model_class: str
    tokenizer: str  # directory under TOKENIZERS
    vocab_size: int
    targets: list[str] = field(default_factory=lambda: list(_ATTN_MLP))
    extra: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # tokenizer files to copy (all when empty)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", "LlamaConfig", "LlamaForCausalLM", "llama2", 32000),
        Family(
            "mistral", "MistralConfig", "MistralForCausalLM", "mistral-7b-v0.1", 32000, extra={"sliding_window": None}
        ),
        Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "qwen2.5", 151665, extra={"tie_word_embeddings": True}),
        Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "qwen3", 151669, extra={"head_dim": 16}),
        Family(
            "phi3",
            "Phi3Config",
            "Phi3ForCausalLM",
            "phi-3-mini",
            32011,
            targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            extra={"pad_token_id": 32000, "bos_token_id": 1, "eos_token_id": 32000},
        ),
        Family(
            "gemma2",
            "Gemma2Config",
            "Gemma2ForCausalLM",
            "llama2",
            32000,
            extra={"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32},
            files=("tokenizer.model",),
        ),
    ]
}


def available(name: str) -> bool:
    return (TOKENIZERS / FAMILIES[name].tokenizer).is_dir()


def build_base(name: str, out: Path, seed: int | None = None, **overrides: Any) -> Path:
    """Save a tiny random ``name`` base (float32 safetensors) with its tokenizer files at ``out``
    (``overrides``: config fields, e.g. hidden_size=256 so that K-quant blocks fit the rows)."""
    import torch
    import transformers

    fam = FAMILIES[name]
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(list(FAMILIES).index(name) if seed is None else seed)  # Llama and Mistral differ
    cfg = getattr(transformers, fam.config_class)(**{**_COMMON, "vocab_size": fam.vocab_size, **fam.extra, **overrides})
    model = getattr(transformers, fam.model_class)(cfg).eval()
    with torch.no_grad():  # larger weights than the init default: logits that differ visibly between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    src = TOKENIZERS / fam.tokenizer
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "README.md" and (not fam.files or f.name in fam.files):
            shutil.copy(f, out / f.name)
    return out


def build_adapter(base: Path, out: Path, *, seed: int = 1, r: int = 8, alpha: int = 16, **extra: Any) -> Path:
    """A real peft LoRA on every attention / MLP projection of ``base``, with random (non-zero) A and B."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    if (out / "adapter_config.json").is_file():
        return out
    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    fam = next(f for f in FAMILIES.values() if f.model_class == arch)
    model = getattr(transformers, arch).from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=fam.targets, init_lora_weights=False, **extra)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.05)
    pm.save_pretrained(out)
    return out
