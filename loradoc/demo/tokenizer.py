"""A tiny Gemma-style tokenizer (real ``GemmaTokenizer`` files) with the control tokens of each family."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

_GEMMA4_CONTROL = (
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>",
    "<|channel>", "<channel|>",
)  # fmt: skip
_GEMMA3_CONTROL = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "patient",
    "dose",
    "mg",
    "daily",
    "history",
    "blood",
    "pressure",
    "heart",
    "rate",
    "pain",
    "fever",
    "cough",
    "image",
    "audio",
    "model",
    "user",
    "hello",
    "world",
    "adapter",
    "lora",
    "gemma",
    "clinical",
    "trial",
    "endpoint",
    "child",
    "support",
    "medical",
    "report",
    "normal",
    "chest",
    "scan",
    "left",
    "right",
    "no",
    "yes",
]

VOCAB_SIZE = 512


def _tokenizer_vocab(control: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """A Gemma-style (SentencePiece-like BPE, byte fallback) vocabulary of exactly VOCAB_SIZE tokens."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *control]
    tokens: list[str] = list(specials)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁"] + [chr(c) for c in range(33, 127)]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    budget = VOCAB_SIZE - 16  # keep a few <unusedN> like the real Gemma vocabularies
    for word in _WORDS:
        cur = "▁"
        for ch in word:
            nxt = cur + ch
            if nxt not in seen:
                if len(tokens) >= budget:
                    break
                merges.append((cur, ch))
                tokens.append(nxt)
                seen.add(nxt)
            cur = nxt
    unused = [f"<unused{i}>" for i in range(VOCAB_SIZE - len(tokens))]
    tokens += unused
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE
    return vocab, merges, [*control, *unused]


def save_tokenizer(out_dir: Path, family: Literal["gemma4", "gemma3"]) -> dict[str, int]:
    """Save a tiny GemmaTokenizer (tokenizer.json + tokenizer_config.json); return the control-token ids."""
    from transformers import GemmaTokenizer

    control = _GEMMA4_CONTROL if family == "gemma4" else _GEMMA3_CONTROL
    vocab, merges, extra = _tokenizer_vocab(control)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(control))
    tok.add_tokens([t for t in extra if t not in control], special_tokens=True)
    tok.save_pretrained(str(out_dir))
    return {t: vocab[t] for t in control}
