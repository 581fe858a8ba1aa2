"""GGUF export of base + LoRA: loradoc's fused pass against llama.cpp's own two-step route.

One synthetic Gemma-4-shaped text model (Gemma4ForCausalLM, bf16: 262144-token vocabulary, per-layer embeddings,
KV-shared layers; ~1.5 GB) with a real-format peft LoRA (r 16 on q,k,v,o,gate,up,down of every layer), built in a
subprocess. Rows, each a whole process timed by wall clock with its own peak RSS (wait4 rusage):

- ``loradoc fused``: ``convert_gguf(adapter, base, out, outtype="bf16")``: merge + convert in one streaming pass;
- ``reference``: transformers load (bf16) + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
  ``save_pretrained``, then llama.cpp's ``convert_hf_to_gguf.py --outtype bf16`` on the merged checkpoint;
- ``loradoc lora`` vs llama.cpp's ``convert_lora_to_gguf.py`` (f32).

Then: are the two model GGUFs (and the two LoRA GGUFs) tensor-for-tensor bit-identical, and do llama.cpp's
logits agree (llama-cpp-python, if installed)? The base profile loradoc's health check needs is built once
before timing (``loradoc doctor`` caches it; a first conversion on a new base pays ~5 s more).

Needs llama.cpp's converter scripts: ``--llama-cpp DIR`` or ``LORADOC_LLAMA_CPP_DIR`` = ``vendor/llama.cpp`` of the
llama-cpp-python sdist (``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``).

Usage: python benchmarks/gguf.py [--layers 4] [--workdir DIR] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file is benchmarks/gguf.py: keep its folder off sys.path so `import gguf` finds the gguf package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

PROBE = [2, 10, 20, 30, 40, 50, 60, 70]
VOCAB = 262144


def build(work: Path, layers: int) -> None:
    """The synthetic base (bf16 safetensors, config, tokenizer) and a peft-format LoRA adapter."""
    import numpy as np
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig, GemmaTokenizer

    from loradoc.safetensors_io import SafetensorsWriter, TensorSpec

    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    s, f = "sliding_attention", "full_attention"
    types = [(f if (i + 1) % 4 == 0 or i == layers - 2 else s) for i in range(layers)]
    types[-3] = s
    cfg = Gemma4TextConfig(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=VOCAB,
        hidden_size=1536,
        hidden_size_per_layer_input=256,
        intermediate_size=6144,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        global_head_dim=512,
        num_kv_shared_layers=1,
        use_double_wide_mlp=True,
        layer_types=types,
        sliding_window=512,
        max_position_embeddings=32768,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    cfg.architectures = ["Gemma4ForCausalLM"]
    cfg.dtype = "bfloat16"
    with torch.device("meta"):
        model = Gemma4ForCausalLM(cfg)
    cfg.save_pretrained(base)
    raw = json.loads((base / "config.json").read_text())
    raw.pop("per_layer_config", None)  # Hub configs say global_head_dim (llama.cpp reads that)
    raw["global_head_dim"] = 512
    (base / "config.json").write_text(json.dumps(raw, indent=2))

    rng = np.random.default_rng(0)
    specs = [TensorSpec(n, "BF16", tuple(p.shape)) for n, p in model.state_dict().items()]
    with SafetensorsWriter(base / "model.safetensors", specs, metadata={"format": "pt"}) as w:
        for sp in specs:
            n = sp.numel
            std = 1.0 if "norm" in sp.name or "scalar" in sp.name else 0.02
            step = 1 << 23
            for i in range(0, n, step):
                m = min(step, n - i)
                x = (rng.standard_normal(m, dtype=np.float32) * std).astype(np.float32)
                if "norm" in sp.name or "scalar" in sp.name:
                    x = np.abs(x) * 0.1 + 1.0
                w.write(sp.name, (x.view(np.uint32) >> 16).astype("<u2"))

    # a GemmaTokenizer with the full 262144-entry vocabulary (byte fallback + a few merges + <unusedN>)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    toks = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e")]
    toks += ["▁t", "▁th", "▁the"]
    toks += [f"<unused{i}>" for i in range(VOCAB - len(toks))]
    tok = GemmaTokenizer(vocab={t: i for i, t in enumerate(toks)}, merges=merges)
    tok.save_pretrained(str(base))

    # a peft-format LoRA adapter (what get_peft_model + save_pretrained writes), random non-zero B
    ad = work / "adapter"
    ad.mkdir(exist_ok=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(mod, torch.nn.Linear):
            a = rng.standard_normal((16, mod.in_features), dtype=np.float32) / mod.in_features**0.5
            b = rng.standard_normal((mod.out_features, 16), dtype=np.float32) * 0.01
            lora[f"base_model.model.{name}.lora_A.weight"] = torch.from_numpy(a)
            lora[f"base_model.model.{name}.lora_B.weight"] = torch.from_numpy(b)
    from safetensors.torch import save_file

    save_file(dict(sorted(lora.items())), str(ad / "adapter_model.safetensors"), metadata={"format": "pt"})
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(base),
                "r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.0,
                "target_modules": targets,
                "bias": "none",
                "fan_in_fan_out": False,
                "use_rslora": False,
                "use_dora": False,
                "inference_mode": True,
            },
            indent=2,
        )
    )


REF_MERGE = """
import sys, shutil, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
for f in Path(base).iterdir():
    if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
        shutil.copy(f, Path(out) / f.name)
"""

OURS = """
import sys
from loradoc.convert.gguf_model import convert_gguf
convert_gguf(sys.argv[1], sys.argv[2], sys.argv[3], outtype="bf16")
"""

OURS_LORA = """
import sys
from loradoc.convert.gguf_lora import convert_gguf_lora
convert_gguf_lora(sys.argv[1], sys.argv[2], sys.argv[3])
"""

WARM = """
import sys
from loradoc.profiles import get_profile
get_profile(sys.argv[1])
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{cmd[:3]} failed: {err.read().decode(errors='replace')[-1500:]}")
    return wall, ru.ru_maxrss // 1024


def compare(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(identical tensors, tensors in both, names that differ) of two GGUF files, by raw bytes."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same, diff = 0, []
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        ok = x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape)
        if ok:
            xa, ya = x.data.reshape(-1).view(np.uint8), y.data.reshape(-1).view(np.uint8)
            step = 1 << 26
            ok = all(np.array_equal(xa[i : i + step], ya[i : i + step]) for i in range(0, xa.size, step))
        same += ok
        if not ok:
            diff.append(name)
    only = sorted(set(ta) ^ set(tb))
    return same, len(set(ta) & set(tb)), diff + [f"(only in one) {n}" for n in only]


def adapted_fraction(base_st: Path, fused: Path) -> float:
    """Share of blk.0.attn_q.weight's bf16 values that differ from the base (the merge really happened)."""
    import gguf
    import numpy as np

    from loradoc.safetensors_io import read_header, read_tensor_bytes

    h = read_header(base_st)
    before = np.frombuffer(read_tensor_bytes(h, "model.layers.0.self_attn.q_proj.weight"), "<u2")
    after = next(t for t in gguf.GGUFReader(fused).tensors if t.name == "blk.0.attn_q.weight")
    return float(np.mean(before != np.asarray(after.data).reshape(-1).view("<u2")))


def logits(model: Path, lora: Path | None = None):  # noqa: ANN201
    import numpy as np

    try:
        import llama_cpp
    except ImportError:
        return None
    kw = {"lora_path": str(lora)} if lora else {}
    saved = os.dup(2)  # llama.cpp prints KV-cache notices on fd 2 even when verbose=False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=64, n_batch=64, logits_all=True, verbose=False, **kw)
        llm.eval(PROBE)
        out = np.array(llm.scores[len(PROBE) - 1], dtype=np.float32)
        llm.close()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--llama-cpp", type=Path, default=os.environ.get("LORADOC_LLAMA_CPP_DIR"))
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradoc-bench-gguf-"))
    if args.prepare_only:
        build(work, args.layers)
        return
    ref = args.llama_cpp
    if ref is None or not (Path(ref) / "convert_hf_to_gguf.py").is_file():
        raise SystemExit("need llama.cpp's converter scripts: --llama-cpp DIR (vendor/llama.cpp of the sdist)")
    base, adapter = work / "base", work / "adapter"
    if not (base / "model.safetensors").is_file() or not (adapter / "adapter_model.safetensors").is_file():
        print(f"building the synthetic model in {work} ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--prepare-only", "--workdir", str(work), "--layers", str(args.layers)],
            check=True,
        )
    env = dict(os.environ)
    env.setdefault("LORADOC_CACHE_DIR", str(work / "cache"))
    subprocess.run([sys.executable, "-c", WARM, str(base)], check=True, env=env, capture_output=True)
    size = (base / "model.safetensors").stat().st_size
    from loradoc.safetensors_io import read_header

    biggest = max(read_header(base / "model.safetensors").tensors.values(), key=lambda t: t.nbytes)
    subprocess.run(["cat", str(base / "model.safetensors")], stdout=subprocess.DEVNULL, check=True)  # page cache

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    rows = []
    w, r = timed([sys.executable, "-c", OURS, str(adapter), str(base), str(out / "fused.gguf")], env)
    rows.append(("loradoc fused (merge + GGUF, 1 pass)", w, r))
    w1, r1 = timed([sys.executable, "-c", REF_MERGE, str(base), str(adapter), str(out / "merged")], env)
    w2, r2 = timed(
        [sys.executable, str(Path(ref) / "convert_hf_to_gguf.py"), str(out / "merged"), "--outtype", "bf16",
         "--outfile", str(out / "ref.gguf")],
        env,
    )  # fmt: skip
    rows.append(("  reference step 1: peft merge_and_unload + save_pretrained", w1, r1))
    rows.append(("  reference step 2: convert_hf_to_gguf.py --outtype bf16", w2, r2))
    rows.append(("reference total (2 steps)", w1 + w2, max(r1, r2)))
    wl, rl = timed([sys.executable, "-c", OURS_LORA, str(adapter), str(base), str(out / "lora.gguf")], env)
    wr, rr = timed(
        [sys.executable, str(Path(ref) / "convert_lora_to_gguf.py"), str(adapter), "--base", str(base),
         "--outfile", str(out / "lora-ref.gguf")],
        env,
    )  # fmt: skip
    rows.append(("loradoc lora GGUF", wl, rl))
    rows.append(("convert_lora_to_gguf.py", wr, rr))

    print(
        f"\nsynthetic Gemma-4-shaped model: {size / 2**30:.2f} GiB bf16, {args.layers} layers, vocab {VOCAB}; "
        f"largest tensor {biggest.name} {list(biggest.shape)}"
    )
    print(f"{'':62s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    for name, wall, rss in rows:
        print(f"{name:62s} {wall:8.1f} {rss:13d}")
    print(f"fused / reference time: {rows[0][1] / (w1 + w2):.2f}x (goal <= 0.3x)")
    print(f"lora / convert_lora_to_gguf time: {wl / wr:.2f}x (goal <= 0.1x)")
    same, both, diff = compare(out / "fused.gguf", out / "ref.gguf")
    print(f"model GGUF tensors bit-identical: {same}/{both}" + (f"; differ: {diff[:6]}" if diff else ""))
    same, both, diff = compare(out / "lora.gguf", out / "lora-ref.gguf")
    print(f"LoRA GGUF tensors bit-identical: {same}/{both}" + (f"; differ: {diff[:6]}" if diff else ""))
    changed = adapted_fraction(base / "model.safetensors", out / "fused.gguf")
    print(f"bf16 values of blk.0.attn_q.weight the LoRA changed (base vs fused): {changed:.1%}")
    a = logits(out / "fused.gguf")
    if a is None:
        print("llama-cpp-python not installed: logits not compared")
        return
    import numpy as np

    b = logits(out / "ref.gguf")
    c = logits(out / "fused.gguf")  # determinism
    print(
        f"llama.cpp logits, fused vs reference GGUF: max |diff| {float(np.max(np.abs(a - b))):.3g} "
        f"(run-to-run {float(np.max(np.abs(a - c))):.3g}; logit range {float(a.min()):.2f}..{float(a.max()):.2f})"
    )


if __name__ == "__main__":
    main()
