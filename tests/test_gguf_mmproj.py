"""``convert gguf --mmproj``: the vision / audio towers (with their LoRAs merged) as the projector GGUF that
llama.cpp's multimodal loader (mtmd) reads, judged by llama.cpp itself.

- Gemma 3 (MedGemma's architecture; a transformers-5 save, whose SigLIP keys have no ``vision_model.`` level):
  llama.cpp's image embeddings (mtmd encode) == transformers' ``get_image_features``, for the base and with the
  adapter's SigLIP q/k/v LoRAs merged, and the LoRA's effect is the same in both;
- Gemma 4 (E4B-shaped, vision + audio): the projector loads in mtmd with both modalities and encodes an image.
"""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from loradoc.convert.gguf_model import convert_gguf
from loradoc.demo.builder import ExampleSet
from loradoc.errors import UnknownArchitectureError

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.slow,
]


def mtmd_image_embeddings(text_gguf: Path, mmproj: Path, image: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """(image embeddings, supports vision, supports audio) from llama.cpp's multimodal library."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp import mtmd_cpp as mtmd

    llm = llama_cpp.Llama(model_path=str(text_gguf), n_ctx=256, n_batch=256, verbose=False)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, 2, False, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm._model.model, params)
    assert ctx, f"llama.cpp's mtmd could not load {mmproj}"
    chunks = mtmd.mtmd_input_chunks_init()
    h, w, _ = image.shape
    buf = np.ascontiguousarray(image, dtype=np.uint8)
    bmp = mtmd.mtmd_bitmap_init(w, h, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)))
    try:
        vision, audio = bool(mtmd.mtmd_support_vision(ctx)), bool(mtmd.mtmd_support_audio(ctx))
        prompt = b"x " + mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = prompt, len(prompt), False, True
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp), 1) == 0
        out = None
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
                n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                d = llama_cpp.llama_model_n_embd(llm._model.model)
                out = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n * d,)).reshape(n, d).copy()
        assert out is not None, "no image chunk"
        return out, vision, audio
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bmp)
        mtmd.mtmd_free(ctx)
        llm.close()


def _random_towers(src: Path, dst: Path) -> Path:
    """The tiny base with random (non-zero) tower and projector weights, saved by transformers."""
    import torch
    import transformers

    arch = json.loads((src / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(t in name for t in ("vision", "projector", "audio")):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if "norm" in name else 0.1))
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    return dst


def _hf_image_features(base: Path, adapter: Path | None, pixels: np.ndarray) -> np.ndarray:
    import torch
    import transformers
    from peft import PeftModel

    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(base, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval().base_model.model
    with torch.no_grad():
        f = model.get_image_features(pixel_values=torch.from_numpy(pixels))
    f = getattr(f, "pooler_output", f)
    return f.reshape(-1, f.shape[-1]).numpy()


def test_gemma3_mmproj_matches_transformers(example_root: ExampleSet, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    base = _random_towers(example_root.bases["tiny-gemma3"], tmp_path / "g3")
    adapter = example_root.adapters["seed-medgemma-full-lora"]  # LoRAs on SigLIP q/k/v + the text model
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)  # the tower's 16 x 16
    pixels = ((image.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()

    res = convert_gguf(None, str(base), tmp_path / "b.gguf", outtype="f32", mmproj=tmp_path / "b-mm.gguf")
    assert res.mmproj == str(tmp_path / "b-mm.gguf")
    res = convert_gguf(
        str(adapter), str(base), tmp_path / "a.gguf", outtype="f32", mmproj=tmp_path / "a-mm.gguf", check_health=False
    )
    assert res.not_included == [] and any("6 tower LoRAs merged" in n for n in res.notes)

    want_base = _hf_image_features(base, None, pixels)
    want = _hf_image_features(base, adapter, pixels)
    got_base, vision, audio = mtmd_image_embeddings(tmp_path / "b.gguf", tmp_path / "b-mm.gguf", image)
    got, _, _ = mtmd_image_embeddings(tmp_path / "a.gguf", tmp_path / "a-mm.gguf", image)
    assert vision and not audio and got.shape == want.shape == (4, 64)
    # measured 6e-4 (llama.cpp's converter keeps the input projection in f16); embeddings ~0.4
    assert np.abs(got_base - want_base).max() < 3e-3 and np.abs(got - want).max() < 3e-3
    effect_hf, effect_ll = want - want_base, got - got_base
    # the SigLIP LoRA moves the embeddings by up to 0.024; the f16 input projection adds up to ~8e-4 of noise
    assert np.abs(effect_hf).max() > 0.01 and np.abs(effect_hf - effect_ll).max() < 2e-3
    assert np.corrcoef(effect_hf.ravel(), effect_ll.ravel())[0, 1] > 0.98


def test_gemma4_mmproj_loads_vision_and_audio(example_root: ExampleSet, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    base = _random_towers(example_root.bases["tiny-gemma4-e4b"], tmp_path / "g4")
    adapter = example_root.adapters["healthy-gemma4-e4b"]
    res = convert_gguf(
        str(adapter), str(base), tmp_path / "m.gguf", outtype="f16", mmproj=tmp_path / "mm.gguf", check_health=False
    )
    assert res.not_included == [] and (tmp_path / "mm.gguf").is_file()
    image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    emb, vision, audio = mtmd_image_embeddings(tmp_path / "m.gguf", tmp_path / "mm.gguf", image)
    assert vision and audio
    assert emb.shape[0] > 0 and np.isfinite(emb).all() and np.abs(emb).max() > 0


def test_mmproj_refused_before_anything_is_written(example_root: ExampleSet, tmp_path: Path) -> None:
    """A text-only base has no projector in llama.cpp: refused, and neither file appears."""
    with pytest.raises(UnknownArchitectureError, match="mmproj"):
        convert_gguf(None, str(example_root.bases["tiny-gemma4-text"]), tmp_path / "t.gguf",
                     mmproj=tmp_path / "mm.gguf")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
