"""loradoc convert gguf / gguf-lora, judged by llama.cpp itself (llama-cpp-python) against transformers + peft.

The llama.cpp checks skip when ``llama_cpp`` is not installed; the byte-for-byte comparison with llama.cpp's own
``convert_lora_to_gguf.py`` takes llama.cpp's source from the llama-cpp-python sdist on the package registry
(``tests/llama_cpp_source.py``; ``LORADOC_LLAMA_CPP_DIR`` overrides) and fails if it cannot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from builders import rewrite_adapter

from loradoc.convert.gguf_lora import convert_gguf_lora
from loradoc.convert.gguf_model import convert_gguf
from loradoc.demo.builder import ExampleSet
from loradoc.errors import BadInputError, LoradocError, MissingFileError, UnknownArchitectureError

# peft 0.21.2 calls a transformers method deprecated in 5.x; noise, not this module's business
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PROBE = [2, 10, 20, 30, 40, 50, 60, 70]
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------
# transformers / peft side


@lru_cache(maxsize=4)
def _base_model(base_dir: str):  # noqa: ANN202
    import torch
    import transformers

    arch = json.loads((Path(base_dir) / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(base_dir, dtype=torch.float32).eval()


@lru_cache(maxsize=8)
def peft_logits(adapter_dir: str, base_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(adapted, base) last-position logits of the probe, from a real PeftModel."""
    import copy

    import torch
    from peft import PeftModel

    model = copy.deepcopy(_base_model(base_dir))
    pm = PeftModel.from_pretrained(model, adapter_dir).eval()
    ids = torch.tensor([PROBE])
    with torch.no_grad():
        adapted = pm(input_ids=ids).logits[0, -1].float().numpy()
        with pm.disable_adapter():
            base = pm(input_ids=ids).logits[0, -1].float().numpy()
    return adapted, base


# ----------------------------------------------------------------------------------------------------------
# llama.cpp side


def llama_logits(model: Path, lora: Path | None = None) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    kwargs = {"lora_path": str(lora)} if lora is not None else {}
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False, **kwargs
    )
    try:
        llm.eval(PROBE)
        return np.array(llm.scores[len(PROBE) - 1], dtype=np.float32)
    finally:
        llm.close()


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def ex(example_root: ExampleSet) -> ExampleSet:
    return example_root


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def base_ggufs(ex: ExampleSet, out_dir: Path) -> dict[str, Path]:
    """Each tiny base as an f32 GGUF (no adapter)."""
    out = {}
    for name in ("tiny-gemma4-e2b", "tiny-gemma4-e4b", "tiny-gemma3"):
        out[name] = out_dir / f"{name}-f32.gguf"
        convert_gguf(None, str(ex.bases[name]), out[name], outtype="f32")
    return out


# ----------------------------------------------------------------------------------------------------------
# merged GGUF == PeftModel


# measured max |diff| 0.0003 - 0.0025 (llama.cpp keeps its KV cache in f16); adapter effects 0.5 - 0.75
MERGED_CASES = [
    ("healthy-gemma4-e4b", "f16", 1e-2),  # Gemma4ForConditionalGeneration: towers + KV-shared layers
    ("healthy-gemma4-text", "f32", 1e-2),  # Gemma4ForCausalLM
    ("healthy-gemma3", "f16", 1e-2),  # Gemma3ForConditionalGeneration, tokenizer.json only
    ("seed-medgemma-full-lora", "f32", 1e-2),  # Gemma 3 + SigLIP tower LoRAs (not included)
]


@pytest.mark.parametrize(("adapter", "outtype", "tol"), MERGED_CASES)
def test_merged_gguf_logits_match_peft(ex: ExampleSet, out_dir: Path, adapter: str, outtype: str, tol: float) -> None:
    base = ex.base_for(adapter)
    target = out_dir / f"{adapter}-merged-{outtype}.gguf"
    res = convert_gguf(str(ex.adapters[adapter]), str(base), target, outtype=outtype)
    assert res.merged_modules > 0 and target.is_file()
    if adapter == "seed-medgemma-full-lora":
        assert res.not_included and all("vision_tower" in k for k in res.not_included)
        assert len(res.not_included) == 12  # q/k/v A+B on both SigLIP layers
        assert any("not included" in n for n in res.notes)
    else:
        assert res.not_included == []
    pytest.importorskip("llama_cpp")
    adapted, plain = peft_logits(str(ex.adapters[adapter]), str(base))
    got = llama_logits(target)
    effect = _maxdiff(adapted, plain)
    assert _maxdiff(got, adapted) < tol, (adapter, _maxdiff(got, adapted), effect)
    assert effect > 20 * tol  # the check would catch an adapter that was left out


# ----------------------------------------------------------------------------------------------------------
# base GGUF + LoRA GGUF (llama.cpp's LoRA API) == PeftModel


LORA_CASES = ["healthy-gemma4-e4b", "seed-cliniq-gemma4-e2b", "seed-medgemma-full-lora"]


@pytest.mark.parametrize("adapter", LORA_CASES)
def test_lora_gguf_matches_peft(ex: ExampleSet, out_dir: Path, base_ggufs: dict[str, Path], adapter: str) -> None:
    spec = ex.spec(adapter)
    lora = out_dir / f"{adapter}-lora.gguf"
    res = convert_gguf_lora(str(ex.adapters[adapter]), str(ex.bases[spec.base]), lora)
    assert res.rescaled == {} and res.tensors == 2 * res.pairs
    if adapter == "seed-medgemma-full-lora":
        assert len(res.not_included) == 12  # SigLIP q/k/v LoRAs: listed, not silently dropped
    else:
        assert res.not_included == []
    pytest.importorskip("llama_cpp")
    adapted, plain = peft_logits(str(ex.adapters[adapter]), str(ex.bases[spec.base]))
    base_ll = llama_logits(base_ggufs[spec.base])
    lora_ll = llama_logits(base_ggufs[spec.base], lora)
    assert _maxdiff(base_ll, plain) < 5e-3
    assert _maxdiff(lora_ll, adapted) < 5e-3
    effect_hf, effect_ll = adapted - plain, lora_ll - base_ll  # the adapter's effect, in each runtime
    assert _maxdiff(effect_hf, effect_ll) < 5e-3 and np.max(np.abs(effect_hf)) > 0.1


def test_lora_gguf_folds_rslora_and_patterns(ex: ExampleSet, out_dir: Path, base_ggufs: dict[str, Path]) -> None:
    """rslora + alpha_pattern: llama.cpp's single alpha/r rule must give peft's per-module scales, so the ratio
    is folded into lora_b."""
    import gguf
    from safetensors.numpy import load_file

    src = ex.adapters["seed-cliniq-gemma4-e2b"]
    dst = rewrite_adapter(
        src,
        out_dir / "cliniq-rslora",
        config_update={"use_rslora": True, "alpha_pattern": {"o_proj": 64, "down_proj": 8}},
    )
    base = ex.bases["tiny-gemma4-e2b"]
    lora = out_dir / "cliniq-rslora.gguf"
    res = convert_gguf_lora(str(dst), str(base), lora)
    # r = 16, alpha 16: peft scale 16/sqrt(16) = 4 (rslora) vs llama.cpp 16/16 = 1 -> factor 4;
    # o_proj alpha 64 -> 64/4 = 16; down_proj alpha 8 -> 8/4 = 2
    assert res.rescaled["blk.0.attn_q.weight"] == pytest.approx(4.0)
    assert res.rescaled["blk.0.attn_output.weight"] == pytest.approx(16.0)
    assert res.rescaled["blk.0.ffn_down.weight"] == pytest.approx(2.0)
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(lora).tensors}
    orig = load_file(str(src / "adapter_model.safetensors"))
    key = "base_model.model.model.language_model.layers.0.self_attn.o_proj.lora_{}.weight"
    assert np.array_equal(tensors["blk.0.attn_output.weight.lora_a"], orig[key.format("A")])
    assert np.array_equal(tensors["blk.0.attn_output.weight.lora_b"], orig[key.format("B")] * np.float32(16.0))
    pytest.importorskip("llama_cpp")
    adapted, plain = peft_logits(str(dst), str(base))
    lora_ll = llama_logits(base_ggufs["tiny-gemma4-e2b"], lora)
    assert _maxdiff(lora_ll, adapted) < 3e-3
    merged = out_dir / "cliniq-rslora-merged.gguf"
    convert_gguf(str(dst), str(base), merged, outtype="f32")
    assert _maxdiff(llama_logits(merged), adapted) < 3e-3


def test_embedding_lora(ex: ExampleSet, tmp_path: Path) -> None:
    """An embed_tokens LoRA (peft also saves the embedding as base_layer.weight) on a tied base: the merged GGUF
    is written untied and computes what the PeftModel computes (not merge_and_unload, which also changes the
    head); a LoRA GGUF is refused (llama.cpp would apply it to the shared token_embd of the output head too)."""
    import copy
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    base = ex.bases["tiny-gemma4-text"]
    model = _base_model(str(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about tied embeddings in target_modules
        pm = get_peft_model(
            copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])
        )
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        pm.save_pretrained(str(tmp_path / "emb"))
        pm.eval()
        with torch.no_grad():
            want = pm(input_ids=torch.tensor([PROBE])).logits[0, -1].numpy()
            merged = pm.merge_and_unload().eval()
            tied_merge = merged(input_ids=torch.tensor([PROBE])).logits[0, -1].numpy()
    res = convert_gguf(str(tmp_path / "emb"), str(base), tmp_path / "emb.gguf", outtype="f32")
    assert res.merged_modules == 7 and any("untied" in n for n in res.notes)
    if importlib.util.find_spec("llama_cpp") is not None:
        got = llama_logits(tmp_path / "emb.gguf")
        assert _maxdiff(got, want) < 1e-2 and _maxdiff(want, tied_merge) > 0.5
    with pytest.raises(BadInputError, match="tied-embedding"):
        convert_gguf_lora(str(tmp_path / "emb"), str(base), tmp_path / "emb-lora.gguf")


def test_lora_gguf_identical_to_llama_cpp_converter(ex: ExampleSet, out_dir: Path, llama_cpp_src: Path) -> None:
    """Byte-for-byte the LoRA GGUF of llama.cpp's own convert_lora_to_gguf.py, run from llama.cpp's tree so that it
    imports that tree's conversion/ and gguf-py/ (not the gguf package installed here)."""
    import gguf

    adapter, base = ex.adapters["seed-cliniq-gemma4-e2b"], ex.bases["tiny-gemma4-e2b"]
    ours = out_dir / "cliniq-ours.gguf"
    ref = out_dir / "cliniq-ref.gguf"
    convert_gguf_lora(str(adapter), str(base), ours)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the script then imports its own gguf-py
    env["HF_HUB_OFFLINE"] = "1"  # --base is a local folder: nothing to fetch
    proc = subprocess.run(
        [sys.executable, str(llama_cpp_src / "convert_lora_to_gguf.py"), str(adapter), "--base", str(base),
         "--outfile", str(ref)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    assert sorted(a) == sorted(b) and len(a) == 72
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type
        assert list(a[name].shape) == list(b[name].shape)
        assert a[name].data.tobytes() == b[name].data.tobytes(), name
    ra, rb = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert ra.fields[key].contents() == rb.fields[key].contents()


# ----------------------------------------------------------------------------------------------------------
# tokenizer: llama.cpp tokenizes like transformers


@pytest.mark.parametrize("base", ["tiny-gemma4-e2b", "tiny-gemma3"])
def test_tokenizer_matches_transformers(ex: ExampleSet, base_ggufs: dict[str, Path], base: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ex.bases[base]))
    llm = llama_cpp.Llama(model_path=str(base_ggufs[base]), vocab_only=True, verbose=False)
    try:
        for text in ("hello world", "the patient dose 5 mg daily\n\nheart rate", "  lora  gemma\tä"):
            want = tok.encode(text, add_special_tokens=False)
            got = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert got == want, (text, got, want)
        assert llm.token_bos() == 2 and llm.token_eos() == 1
    finally:
        llm.close()


def test_hub_style_config_gets_transformers_defaults(ex: ExampleSet, out_dir: Path, tmp_path: Path) -> None:
    """A Hub Gemma 3 config.json omits defaults (rope, layer_types, eps, softcap): transformers' config class
    fills them in, giving the same GGUF as the fully written config."""
    import gguf

    full = ex.bases["tiny-gemma3"]
    hub = tmp_path / "hub-style"
    hub.mkdir()
    cfg = json.loads((full / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "rms_norm_eps", "final_logit_softcapping", "_sliding_window_pattern"):
        cfg["text_config"].pop(key, None)
    (hub / "config.json").write_text(json.dumps(cfg))
    for f in full.iterdir():
        if f.name != "config.json" and f.is_file():
            (hub / f.name).symlink_to(f)
    a, b = out_dir / "g3-full.gguf", tmp_path / "g3-hub.gguf"
    convert_gguf(None, str(full), a, outtype="f32")
    convert_gguf(None, str(hub), b, outtype="f32")
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    kv = {k: f.contents() for k, f in ra.fields.items() if not k.startswith(("GGUF.", "general.name"))}
    assert kv == {k: f.contents() for k, f in rb.fields.items() if not k.startswith(("GGUF.", "general.name"))}
    assert kv["gemma3.rope.freq_base_swa"] == 10000.0 and kv["gemma3.attention.sliding_window"] == 32
    assert [t.data.tobytes() for t in ra.tensors] == [t.data.tobytes() for t in rb.tensors]


def _spm_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """A SentencePiece ModelProto (pieces = field 1: piece 1, score 2, type 3) plus a trainer_spec to skip."""
    import struct

    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    def field(num: int, payload: bytes) -> bytes:
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    blob = b""
    for piece, score, ptype in pieces:
        body = field(1, piece.encode()) + varint(2 << 3 | 5) + struct.pack("<f", score)
        if ptype != 1:
            body += varint(3 << 3) + varint(ptype)
        blob += field(1, body)
    trainer = field(1, b"trainer.txt") + varint(3 << 3) + varint(8000) + varint(35 << 3) + varint(1)  # byte_fallback
    return blob + field(2, trainer)


def test_gemma3_sentencepiece_tokenizer(ex: ExampleSet, tmp_path: Path) -> None:
    """A Gemma 3 base with tokenizer.model (as MedGemma ships) gets llama.cpp's SentencePiece vocabulary, read
    from the protobuf without the sentencepiece package; llama.cpp loads it and tokenizes like transformers."""
    import gguf

    from loradoc.convert.gguf_tokenizer import read_sentencepiece_model

    src = ex.bases["tiny-gemma3"]
    tj = json.loads((src / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    rank = {a + b: i for i, (a, b) in enumerate(tj["model"]["merges"])}
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    pieces = []
    for text, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        ptype = 2 if text == "<unk>" else 3 if text in special else 6 if text.startswith("<0x") else 1
        pieces.append((text, -float(rank[text]) if text in rank else 0.0, ptype))
    base = tmp_path / "gemma3-spm"
    base.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("tokenizer"):
            (base / f.name).symlink_to(f)
    (base / "tokenizer.model").write_bytes(_spm_model(pieces))
    (base / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "added_tokens_decoder": {"5": {"content": "<start_of_turn>", "special": True}},
            }
        )
    )
    assert read_sentencepiece_model(base / "tokenizer.model")[:2] == [("<pad>", 0.0, 3), ("<eos>", 0.0, 3)]
    out = tmp_path / "g3-spm.gguf"
    res = convert_gguf(None, str(base), out, outtype="f32")
    assert res.tokenizer == "llama" and res.vocab_size == 512
    r = gguf.GGUFReader(out)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert types[:5] == [3, 3, 3, 2, 3] and types[20] == 6  # <pad> <eos> <bos> <unk> <mask> ... <0x..>
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        for text in ("hello world", "the patient dose daily"):
            assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text, add_special_tokens=False)
    finally:
        llm.close()


# ----------------------------------------------------------------------------------------------------------
# refusals and file hygiene


def test_refuses_unhealthy_adapter(ex: ExampleSet, tmp_path: Path) -> None:
    adapter = ex.adapters["textonly-on-wrapper"]
    with pytest.raises(BadInputError, match="loradoc repair"):
        convert_gguf(str(adapter), str(ex.base_for("textonly-on-wrapper")), tmp_path / "x.gguf", outtype="f32")
    with pytest.raises(BadInputError, match="loradoc repair"):
        convert_gguf_lora(str(adapter), str(ex.base_for("textonly-on-wrapper")), tmp_path / "y.gguf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_dora_and_bad_inputs(ex: ExampleSet, tmp_path: Path) -> None:
    base = ex.bases["tiny-gemma4-text"]
    dora = rewrite_adapter(ex.adapters["healthy-gemma4-text"], tmp_path / "dora", config_update={"use_dora": True})
    with pytest.raises(BadInputError, match="DoRA"):
        convert_gguf_lora(str(dora), str(base), tmp_path / "d.gguf", check_health=False)
    with pytest.raises(BadInputError, match="outtype"):
        convert_gguf(None, str(base), tmp_path / "a.gguf", outtype="q4_k")
    with pytest.raises(BadInputError, match="mmproj"):
        convert_gguf(None, str(base), tmp_path / "a.gguf", mmproj=tmp_path / "mm.gguf")
    # unknown architecture, missing tokenizer: one-line errors naming the problem
    odd = tmp_path / "odd-base"
    odd.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    (odd / "model.safetensors").symlink_to(base / "model.safetensors")
    with pytest.raises(UnknownArchitectureError, match="NoSuchModelForCausalLM"):
        convert_gguf(None, str(odd), tmp_path / "a.gguf")
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MissingFileError, match="no tokenizer") as err:
        convert_gguf(None, str(odd), tmp_path / "a.gguf")
    assert "\n" not in str(err.value) and err.value.hint
    with pytest.raises(LoradocError, match="shipped base id"):
        convert_gguf(None, "google/gemma-4-E2B-it", tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]


def test_atomic_output_and_inputs_untouched(ex: ExampleSet, tmp_path: Path) -> None:
    import hashlib

    adapter = ex.adapters["healthy-gemma4-text"]
    base = ex.bases["tiny-gemma4-text"]

    def digest(d: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}

    before = digest(adapter), digest(base)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")

    def boom(done: int, total: int, name: str) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(BadInputError, match="already exists"):  # an existing file is replaced only when asked
        convert_gguf(str(adapter), str(base), target, outtype="q8_0")
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(str(adapter), str(base), target, outtype="q8_0", progress=boom, overwrite=True)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    res = convert_gguf(str(adapter), str(base), target, outtype="q8_0", overwrite=True)
    assert (digest(adapter), digest(base)) == before
    import gguf

    r = gguf.GGUFReader(target)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.proj.weight"] == "F16"  # 8-wide rows hold no 32-element Q8_0 block: F16, as llama.cpp
    assert res.tensors == len(r.tensors)


# ----------------------------------------------------------------------------------------------------------
# memory: a 262144 x 2048 bf16 tensor converts with bounded RSS


_BUILD = textwrap.dedent(
    """
    import json, struct, sys
    from pathlib import Path
    import numpy as np
    d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
    V, L, PL, H, I = 262144, 2, 1024, 64, 128   # per-layer embedding: 262144 x (2 * 1024) = 262144 x 2048
    s, f = "sliding_attention", "full_attention"
    cfg = dict(architectures=["Gemma4ForCausalLM"], model_type="gemma4_text", vocab_size=V,
               vocab_size_per_layer_input=V, hidden_size_per_layer_input=PL, num_hidden_layers=L, hidden_size=H,
               intermediate_size=I, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
               num_global_key_value_heads=None, num_kv_shared_layers=0, use_double_wide_mlp=False,
               layer_types=[s, f], sliding_window=32, max_position_embeddings=1024, rms_norm_eps=1e-6,
               final_logit_softcapping=30.0, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
               bos_token_id=2, rope_parameters={"full_attention": {"partial_rotary_factor": 0.25,
               "rope_theta": 1e6, "rope_type": "proportional"}, "sliding_attention": {"rope_theta": 1e4,
               "rope_type": "default"}})
    (d / "config.json").write_text(json.dumps(cfg))
    shapes = {"model.embed_tokens.weight": [V, H], "model.embed_tokens_per_layer.weight": [V, L * PL],
              "model.norm.weight": [H], "model.per_layer_model_projection.weight": [L * PL, H],
              "model.per_layer_projection_norm.weight": [PL]}
    for i, t in enumerate(cfg["layer_types"]):
        hd = 16 if t == s else 32
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": [H], p + "layer_scalar": [1], p + "mlp.down_proj.weight": [H, I],
            p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H],
            p + "per_layer_input_gate.weight": [PL, H], p + "per_layer_projection.weight": [H, PL],
            p + "post_attention_layernorm.weight": [H], p + "post_feedforward_layernorm.weight": [H],
            p + "post_per_layer_input_norm.weight": [H], p + "pre_feedforward_layernorm.weight": [H],
            p + "self_attn.k_norm.weight": [hd], p + "self_attn.k_proj.weight": [2 * hd, H],
            p + "self_attn.o_proj.weight": [H, 4 * hd], p + "self_attn.q_norm.weight": [hd],
            p + "self_attn.q_proj.weight": [4 * hd, H], p + "self_attn.v_proj.weight": [2 * hd, H]})
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header).encode(); blob += b" " * (-len(blob) % 8)
    pool = (np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32).view(np.uint32) >> 16)
    pool = pool.astype("<u2").tobytes()
    with open(d / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            left = int(np.prod(shape)) * 2
            while left:
                n = min(left, len(pool)); fh.write(pool[:n]); left -= n
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\\u2581": 4, "a": 5, "\\u2581a": 6}
    vocab.update({f"<0x{b:02X}>": 7 + b for b in range(256)})
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), V)})
    tj = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
          "decoder": {"type": "Sequence", "decoders": []},
          "model": {"type": "BPE", "vocab": vocab, "merges": [["\\u2581", "a"]], "byte_fallback": True,
                    "unk_token": "<unk>"}}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                          "pad_token": "<pad>", "unk_token": "<unk>"}))
    """
)

_CONVERT = textwrap.dedent(
    """
    import sys
    from loradoc.convert.gguf_model import convert_gguf
    import resource
    r = convert_gguf(None, sys.argv[1], sys.argv[2], outtype="f16")
    print(r.tensors, r.bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _gguf_tensor_table(path: Path) -> dict[str, tuple[list[int], int, int]]:
    """name -> (ggml ne, ggml type, absolute data offset), parsed from a GGUF v3 header."""
    import struct

    with open(path, "rb") as fh:
        data = fh.read(64 << 20)
    pos = 0

    def take(fmt: str):  # noqa: ANN202
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def skip_string() -> str:
        nonlocal pos
        (n,) = take("Q")
        pos += n
        return data[pos - n : pos].decode()

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    magic, _version, n_tensors, n_kv = take("4sIQQ")
    assert magic == b"GGUF"
    alignment = 32
    for _ in range(n_kv):
        key = skip_string()
        (vtype,) = take("I")
        if vtype == 8:
            skip_string()
        elif vtype == 9:
            etype, count = take("IQ")
            for _ in range(count) if etype == 8 else ():
                skip_string()
            pos += 0 if etype == 8 else sizes[etype] * count
        else:
            if key == "general.alignment":
                (alignment,) = struct.unpack_from("<I", data, pos)
            pos += sizes[vtype]
    infos = []
    for _ in range(n_tensors):
        name = skip_string()
        (n_dims,) = take("I")
        ne = list(take("Q" * n_dims))
        ttype, off = take("IQ")
        infos.append((name, ne, ttype, off))
    start = pos + (-pos % alignment)
    return {name: (ne, ttype, start + off) for name, ne, ttype, off in infos}


def test_huge_tensor_converts_with_bounded_memory(tmp_path: Path) -> None:
    base = tmp_path / "synthetic-e-shaped"
    _run(_BUILD, str(base))  # built in its own process: its memory is not counted
    out = tmp_path / "synthetic.gguf"
    rss = int(_run(_CONVERT, str(base), str(out)).split()[-1]) * 1024  # the converter's own peak (ru_maxrss)
    table = _gguf_tensor_table(out)  # gguf.GGUFReader takes ~40 s over a 262144-token vocabulary
    ne, ttype, offset = table["per_layer_token_embd.weight"]
    assert ne == [2048, 262144] and ttype == 1  # GGML_TYPE_F16
    # spot-check a row against the bf16 input (bf16 -> f32 -> f16)
    from loradoc.io.safetensors import read_header

    h = read_header(base / "model.safetensors")
    info = h.tensors["model.embed_tokens_per_layer.weight"]
    with open(base / "model.safetensors", "rb") as fh:
        fh.seek(h.data_start + info.begin + 200000 * 2048 * 2)
        row = (np.frombuffer(fh.read(2048 * 2), "<u2").astype(np.uint32) << 16).view(np.float32)
    with open(out, "rb") as fh:
        fh.seek(offset + 200000 * 2048 * 2)
        got = np.frombuffer(fh.read(2048 * 2), "<f2")
    assert np.array_equal(got, row.astype(np.float16))
    assert rss < 1 << 30, f"peak RSS {rss / 2**20:.0f} MiB for a 1 GiB bf16 tensor (2 GiB as float32)"
