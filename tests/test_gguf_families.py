"""GGUF beyond Gemma, judged by llama.cpp itself: tiny random Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma 2 bases
with real tokenizer files (../shared/data/tokenizers) and real-peft LoRA adapters.

- merged GGUF (``convert gguf``) logits in llama.cpp == PeftModel logits (f32 tight, bf16/f16/q8_0 dtype tolerance);
- base GGUF + LoRA GGUF (``convert gguf-lora``) in llama.cpp == PeftModel, and the LoRA's effect is the same;
- rslora / rank_pattern / alpha_pattern are folded so llama.cpp's alpha/r rule gives peft's scale.

Gemma 3 / Gemma 4 (text and conditional-generation) are checked in test_convert_gguf.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_families as tf
from test_convert_gguf import _maxdiff, llama_logits, peft_logits

from loradoc.convert.gguf_lora import convert_gguf_lora
from loradoc.convert.gguf_model import convert_gguf

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.slow,
]

FAMILIES = list(tf.FAMILIES)


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def _pair(fam_dir: Path, fam: str) -> tuple[Path, Path]:
    if not tf.available(fam):
        pytest.skip(f"tokenizer files for {fam} are not in {tf.TOKENIZERS}")
    base = tf.build_base(fam, fam_dir / fam)
    return base, tf.build_adapter(base, fam_dir / f"{fam}-lora")


# llama.cpp keeps its KV cache in f16: f32 GGUFs agree to ~1e-3 (measured 4e-4 - 1.3e-3); adapter effects 0.8 - 1.5
F32_TOL = 5e-3
DTYPE_TOL = {"bf16": 6e-2, "f16": 1e-2, "q8_0": 6e-2}
MERGED = [(f, "f32") for f in FAMILIES] + [("llama", "bf16"), ("qwen3", "f16"), ("phi3", "q8_0"), ("gemma2", "q8_0")]


@pytest.mark.parametrize(("fam", "outtype"), MERGED)
def test_merged_gguf_matches_peft(fam_dir: Path, fam: str, outtype: str) -> None:
    pytest.importorskip("llama_cpp")
    base, adapter = _pair(fam_dir, fam)
    out = fam_dir / f"{fam}-merged-{outtype}.gguf"
    res = convert_gguf(str(adapter), str(base), out, outtype=outtype, check_health=False)
    assert res.merged_modules > 0 and res.not_included == [] and res.vocab_size > 30000
    adapted, plain = peft_logits(str(adapter), str(base))
    got = llama_logits(out)
    tol = F32_TOL if outtype == "f32" else DTYPE_TOL[outtype]
    effect = _maxdiff(adapted, plain)
    assert _maxdiff(got, adapted) < tol, (fam, outtype, _maxdiff(got, adapted), effect)
    assert effect > 0.3 and effect > 5 * tol  # an adapter left out would fail
    assert int(np.argmax(got)) == int(np.argmax(adapted))


@pytest.mark.parametrize("fam", FAMILIES)
def test_lora_gguf_matches_peft(fam_dir: Path, fam: str) -> None:
    pytest.importorskip("llama_cpp")
    base, adapter = _pair(fam_dir, fam)
    base_gguf = fam_dir / f"{fam}-base-f32.gguf"
    if not base_gguf.is_file():
        convert_gguf(None, str(base), base_gguf, outtype="f32")
    lora = fam_dir / f"{fam}-lora.gguf"
    res = convert_gguf_lora(str(adapter), str(base), lora, check_health=False)
    assert res.rescaled == {} and res.tensors == 2 * res.pairs and res.not_included == []
    adapted, plain = peft_logits(str(adapter), str(base))
    base_ll, lora_ll = llama_logits(base_gguf), llama_logits(base_gguf, lora)
    assert _maxdiff(base_ll, plain) < F32_TOL
    assert _maxdiff(lora_ll, adapted) < F32_TOL
    effect_hf, effect_ll = adapted - plain, lora_ll - base_ll
    assert _maxdiff(effect_hf, effect_ll) < F32_TOL and np.max(np.abs(effect_hf)) > 0.3


def test_lora_gguf_folds_rslora_and_patterns(fam_dir: Path) -> None:
    """Llama (Q/K permuted by llama.cpp) with rslora, a rank pattern and an alpha pattern: every module's peft
    scale differs from alpha/r, and llama.cpp's LoRA computes what peft computes."""
    pytest.importorskip("llama_cpp")
    base, _ = _pair(fam_dir, "llama")
    adapter = tf.build_adapter(
        base,
        fam_dir / "llama-rslora",
        use_rslora=True,
        rank_pattern={"q_proj": 4},
        alpha_pattern={"v_proj": 32},
    )
    lora = fam_dir / "llama-rslora.gguf"
    res = convert_gguf_lora(str(adapter), str(base), lora, check_health=False)
    assert len(res.rescaled) == res.pairs and any("rslora" in n for n in res.notes)
    base_gguf = fam_dir / "llama-base-f32.gguf"
    if not base_gguf.is_file():
        convert_gguf(None, str(base), base_gguf, outtype="f32")
    adapted, plain = peft_logits(str(adapter), str(base))
    assert _maxdiff(llama_logits(base_gguf, lora), adapted) < F32_TOL
    merged = fam_dir / "llama-rslora-merged.gguf"
    convert_gguf(str(adapter), str(base), merged, outtype="f32", check_health=False)
    assert _maxdiff(llama_logits(merged), adapted) < F32_TOL and _maxdiff(adapted, plain) > 0.3


def test_llama_transforms_are_llama_cpps(fam_dir: Path) -> None:
    """Q/K of a Llama base are permuted by llama.cpp's own LlamaModel.permute (applied to the merged tensor);
    every other tensor is streamed as is (row chunks), bit for bit the base + LoRA."""
    import gguf
    import torch
    from conversion.llama import LlamaModel
    from safetensors.torch import load_file

    base, adapter = _pair(fam_dir, "llama")
    out = fam_dir / "llama-merged-f32.gguf"
    if not out.is_file():
        convert_gguf(str(adapter), str(base), out, outtype="f32", check_health=False)
    w = load_file(str(base / "model.safetensors"))
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    t = {x.name: x for x in gguf.GGUFReader(out).tensors}

    def merged(mod: str) -> torch.Tensor:
        pre = f"base_model.model.{mod}"
        return w[f"{mod}.weight"] + 2.0 * ad[f"{pre}.lora_B.weight"] @ ad[f"{pre}.lora_A.weight"]

    q = LlamaModel.permute(merged("model.layers.1.self_attn.q_proj"), 4, 4)
    k = LlamaModel.permute(merged("model.layers.1.self_attn.k_proj"), 4, 2)
    v = merged("model.layers.1.self_attn.v_proj")
    assert np.allclose(t["blk.1.attn_q.weight"].data, q.numpy(), atol=1e-6)
    assert np.allclose(t["blk.1.attn_k.weight"].data, k.numpy(), atol=1e-6)
    assert not np.allclose(t["blk.1.attn_q.weight"].data, merged("model.layers.1.self_attn.q_proj").numpy())
    assert np.array_equal(t["blk.1.attn_v.weight"].data, v.numpy())


# llama.cpp's quantizer on a Llama whose rows fit K-quant blocks (hidden 256). Measured on random weights (logit std
# 1.3): correlation with the PeftModel logits 0.9994 (q8_0), 0.995 (q6_k), 0.99 (q5_k_m), 0.94 (q4_k_m), 0.78 (q3_k_m)
QUANT_CASES = [("q4_k_m", 0.9, "Q4_K", 15), ("q5_k_m", 0.97, "Q5_K", 17), ("q3_k_m", 0.7, "Q3_K", 12)]


@pytest.mark.parametrize(("outtype", "min_corr", "qtype", "file_type"), QUANT_CASES)
def test_quantized_outtype_runs_in_llama_cpp(
    fam_dir: Path, outtype: str, min_corr: float, qtype: str, file_type: int
) -> None:
    import gguf

    pytest.importorskip("llama_cpp")
    if not tf.available("llama"):
        pytest.skip("no llama2 tokenizer files")
    base = tf.build_base("llama", fam_dir / "llama256", hidden_size=256, intermediate_size=512)
    adapter = tf.build_adapter(base, fam_dir / "llama256-lora")
    out_dir = fam_dir / f"quant-{outtype}"
    out = out_dir / "model.gguf"
    seen: list[tuple[int, int, str]] = []
    res = convert_gguf(str(adapter), str(base), out, outtype=outtype, check_health=False,
                       progress=lambda d, t, w: seen.append((d, t, w)))  # fmt: skip
    assert res.outtype == outtype and res.bytes == out.stat().st_size
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]  # the bf16 intermediate is gone
    assert seen[-1] == (seen[-1][1], seen[-1][1], f"quantize {outtype}") and all(d <= t for d, t, _ in seen)
    r = gguf.GGUFReader(out)
    assert r.fields["general.file_type"].contents() == file_type
    assert any(t.tensor_type.name == qtype for t in r.tensors)
    adapted, _ = peft_logits(str(adapter), str(base))
    got = llama_logits(out)
    assert np.corrcoef(got, adapted)[0, 1] > min_corr
    assert int(np.argmax(adapted)) in np.argsort(got)[-5:]
    assert float(np.sqrt(np.mean((got - adapted) ** 2))) < 0.75 * float(adapted.std())


@pytest.mark.parametrize("fam", ["llama", "phi3", "qwen3"])
def test_lora_gguf_identical_to_llama_cpp_converter(fam_dir: Path, fam: str, llama_cpp_src: Path) -> None:
    """Byte for byte what llama.cpp's own convert_lora_to_gguf.py writes: for Llama its LoraTorchTensor permutes
    lora_b of Q/K; loradoc gets the same bytes by applying LlamaModel's transform to B and checking it factors."""
    import os
    import subprocess
    import sys

    import gguf

    base, adapter = _pair(fam_dir, fam)
    ours, ref = fam_dir / f"{fam}-lora-ours.gguf", fam_dir / f"{fam}-lora-ref.gguf"
    convert_gguf_lora(str(adapter), str(base), ours, check_health=False)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "PYTHONPATH")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(llama_cpp_src / "convert_lora_to_gguf.py"), str(adapter), "--base", str(base),
         "--outfile", str(ref)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    assert sorted(a) == sorted(b) and a
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type and list(a[name].shape) == list(b[name].shape)
        assert a[name].data.tobytes() == b[name].data.tobytes(), name
    ra, rb = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert ra.fields[key].contents() == rb.fields[key].contents()
