"""Tied input/output embeddings in a merge.

A base whose output embedding is tied to its input embedding (``tie_word_embeddings``, and no separate output
tensor in the checkpoint) stores one tensor for both. The PeftModel applies a LoRA to one module only, so an
adapter that changes one end (or both differently) gives an *untied* output; identical changes to both ends
(peft's ``ensure_weight_tying``) keep it tied. These helpers find the shared tensor and decide whether two
effects on it are bit-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loradoc.convert.checkpoint import Checkpoint
from loradoc.model.layout import address_of
from loradoc.model.profiles import BaseProfile

if TYPE_CHECKING:
    import numpy as np

    from loradoc.convert.merge_plan import Effect, Lora
    from loradoc.convert.merge_tensors import AdapterTensors


def tie_flag(cfg: dict[str, Any]) -> bool:
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    text = cfg.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return True  # transformers' PretrainedConfig default


def input_embedding_tensor(profile: BaseProfile, ckpt: Checkpoint) -> str | None:
    """The checkpoint tensor of the input embeddings the output embedding is tied to."""
    out = profile.output_embedding
    out_info = profile.modules.get(out) if out else None
    cands = [
        n
        for n, m in profile.modules.items()
        if m.kind == "embedding" and address_of(n).tower == "language" and address_of(n).layer is None
    ]
    if out_info is not None:
        fit = [n for n in cands if (profile.modules[n].in_features, profile.modules[n].out_features)
               == (out_info.out_features, out_info.in_features)]  # fmt: skip
        cands = fit or cands
    cands.sort(key=lambda n: (n.rsplit(".", 1)[-1] != "embed_tokens", n))
    for n in cands:
        t = ckpt.find(n, "weight")
        if t is not None:
            return t
    return None


def same_tensor(reader: AdapterTensors, k1: str, k2: str) -> bool:
    import numpy as np

    i1, i2 = reader.info(k1), reader.info(k2)
    if tuple(i1.shape) != tuple(i2.shape):
        return False
    return bool(np.array_equal(reader.array(k1), reader.array(k2)))


def same_effect(reader: AdapterTensors, e1: Effect, e2: Effect) -> bool:
    """Whether two effects on the same base tensor give bit-identical results (tied embeddings stay tied)."""
    import numpy as np

    if (e1.replace is None) != (e2.replace is None) or (e1.lora is None) != (e2.lora is None):
        return False
    if e1.bias_add or e2.bias_add:
        return False
    if (
        e1.replace is not None
        and e2.replace is not None
        and e1.replace != e2.replace
        and not same_tensor(reader, e1.replace, e2.replace)
    ):
        return False
    l1, l2 = e1.lora, e2.lora
    if l1 is None or l2 is None:
        return True
    if l1.magnitude or l2.magnitude or l1.scale != l2.scale:
        return False

    # an embedding LoRA (A: r x vocab, B: dim x r) equals a linear one on the tied lm_head (A: r x dim,
    # B: vocab x r) when A_lm = B_emb.T and B_lm = A_emb.T (peft's ensure_weight_tying)
    def delta_factors(lora: Lora) -> tuple[np.ndarray, np.ndarray]:  # (left, right) with delta = left @ right
        a, b = reader.array(lora.a), reader.array(lora.b)
        return (a.T, b.T) if lora.embedding else (b, a)

    f1, f2 = delta_factors(l1), delta_factors(l2)
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(f1, f2, strict=True))


def describe_effect(e: Effect, shared: str | None = None) -> str:
    """What an effect does, leaving out a replacement both tied ends share."""
    parts = []
    if e.replace is not None and e.replace != shared:
        parts.append(f"replaced by {e.replace}")
    if e.lora is not None:
        parts.append(f"{'DoRA' if e.lora.magnitude else 'LoRA'} (r={e.lora.r})")
    return " + ".join(parts) or "unchanged"
