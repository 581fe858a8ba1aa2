"""GGUF export of base + LoRA: loradoc's fused pass against llama.cpp's own two-step route.

Two synthetic text models, side by side, each with a real-format peft LoRA (r 16 on q,k,v,o,gate,up,down of every
layer), built in a subprocess:

- Gemma-4-shaped (Gemma4ForCausalLM, bf16: 262144-token vocabulary, per-layer embeddings, KV-shared layers);
- Llama-shaped (LlamaForCausalLM, bf16: Llama-3-sized 128256-row embedding and untied head, GQA 32/8 heads, so
  llama.cpp permutes Q and K; the Llama-2 SentencePiece tokenizer from ../shared/data/tokenizers, which llama.cpp
  pads to the vocabulary size).

Rows, each a whole process timed by wall clock with its own peak RSS (wait4 rusage):

- ``loradoc fused``: ``convert_gguf(adapter, base, out, outtype="bf16")``: merge + convert in one streaming pass;
- ``reference``: transformers load (bf16) + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
  ``save_pretrained``, then llama.cpp's ``convert_hf_to_gguf.py --outtype bf16`` on the merged checkpoint;
- ``loradoc lora`` vs llama.cpp's ``convert_lora_to_gguf.py`` (f32).

Then: are the two model GGUFs (and the two LoRA GGUFs) tensor-for-tensor bit-identical, and do llama.cpp's
logits agree (llama-cpp-python, if installed)? The base profile loradoc's health check needs is built once
before timing (``loradoc doctor`` caches it; a first conversion on a new base pays ~5 s more).

Needs llama.cpp's converter scripts: ``--llama-cpp DIR`` or ``LORADOC_LLAMA_CPP_DIR`` = ``vendor/llama.cpp`` of the
llama-cpp-python sdist (``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``).

Usage: python benchmarks/gguf.py [--layers 4] [--shapes gemma4,llama] [--workdir DIR] [--llama-cpp DIR]
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


TOKENIZERS = _HERE.parent.parent / "shared" / "data" / "tokenizers"


def _write_random(base: Path, model: object, rng: object) -> None:
    import numpy as np

    from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec

    specs = [TensorSpec(n, "BF16", tuple(p.shape)) for n, p in model.state_dict().items()]  # type: ignore[attr-defined]
    with SafetensorsWriter(base / "model.safetensors", specs, metadata={"format": "pt"}) as w:
        for sp in specs:
            n = sp.numel
            std = 1.0 if "norm" in sp.name or "scalar" in sp.name else 0.02
            step = 1 << 23
            for i in range(0, n, step):
                m = min(step, n - i)
                x = (rng.standard_normal(m, dtype=np.float32) * std).astype(np.float32)  # type: ignore[attr-defined]
                if "norm" in sp.name or "scalar" in sp.name:
                    x = np.abs(x) * 0.1 + 1.0
                w.write(sp.name, (x.view(np.uint32) >> 16).astype("<u2"))


def _write_adapter(work: Path, base: Path, model: object, rng: object) -> None:
    """A peft-format LoRA adapter (what get_peft_model + save_pretrained writes), random non-zero B."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    ad = work / "adapter"
    ad.mkdir(exist_ok=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = {}
    for name, mod in model.named_modules():  # type: ignore[attr-defined]
        if name.rsplit(".", 1)[-1] in targets and isinstance(mod, torch.nn.Linear):
            a = rng.standard_normal((16, mod.in_features), dtype=np.float32) / mod.in_features**0.5  # type: ignore[attr-defined]
            b = rng.standard_normal((mod.out_features, 16), dtype=np.float32) * 0.01  # type: ignore[attr-defined]
            lora[f"base_model.model.{name}.lora_A.weight"] = torch.from_numpy(a)
            lora[f"base_model.model.{name}.lora_B.weight"] = torch.from_numpy(b)
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


def build_llama(work: Path, layers: int) -> None:
    """A Llama-shaped base (bf16, Llama-3-sized vocabulary, GQA) with the Llama-2 tokenizer, and a LoRA adapter."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = "bfloat16"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    cfg.save_pretrained(base)
    rng = np.random.default_rng(0)
    _write_random(base, model, rng)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZERS / "llama2" / f, base / f)
    _write_adapter(work, base, model, rng)


def build(work: Path, layers: int, shape: str = "gemma4") -> None:
    """The synthetic base (bf16 safetensors, config, tokenizer) and a peft-format LoRA adapter."""
    if shape == "llama":
        build_llama(work, layers)
        return
    import numpy as np
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig, GemmaTokenizer

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
    _write_random(base, model, rng)

    # a GemmaTokenizer with the full 262144-entry vocabulary (byte fallback + a few merges + <unusedN>)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    toks = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e")]
    toks += ["▁t", "▁th", "▁the"]
    toks += [f"<unused{i}>" for i in range(VOCAB - len(toks))]
    tok = GemmaTokenizer(vocab={t: i for i, t in enumerate(toks)}, merges=merges)
    tok.save_pretrained(str(base))

    _write_adapter(work, base, model, rng)


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
from loradoc.model.profiles import get_profile
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

    from loradoc.io.safetensors import read_header, read_tensor_bytes

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


def run_shape(shape: str, work: Path, layers: int, ref: Path) -> dict[str, object]:
    """Build (once) and time one synthetic model; returns its rows and checks."""
    import numpy as np

    from loradoc.io.safetensors import read_header

    base, adapter = work / "base", work / "adapter"
    if not (base / "model.safetensors").is_file() or not (adapter / "adapter_model.safetensors").is_file():
        print(f"building the synthetic {shape} model in {work} ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--prepare-only", "--workdir", str(work), "--layers", str(layers),
             "--shapes", shape],
            check=True,
        )  # fmt: skip
    env = dict(os.environ)
    env.setdefault("LORADOC_CACHE_DIR", str(work / "cache"))
    subprocess.run([sys.executable, "-c", WARM, str(base)], check=True, env=env, capture_output=True)
    size = (base / "model.safetensors").stat().st_size
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
    res: dict[str, object] = {
        "title": f"{shape}: {size / 2**30:.2f} GiB bf16, {layers} layers; largest tensor {biggest.name} "
        f"{list(biggest.shape)} ({biggest.nbytes / 2**20:.0f} MiB bf16)",
        "rows": rows,
        "checks": [],
    }
    checks: list[str] = res["checks"]  # type: ignore[assignment]
    checks.append(f"fused / reference time: {w / (w1 + w2):.2f}x; peak RSS {r} vs {max(r1, r2)} MiB")
    checks.append(f"lora / convert_lora_to_gguf time: {wl / wr:.2f}x")
    same, both, diff = compare(out / "fused.gguf", out / "ref.gguf")
    checks.append(f"model GGUF tensors bit-identical: {same}/{both}" + (f"; differ: {diff[:6]}" if diff else ""))
    same, both, diff = compare(out / "lora.gguf", out / "lora-ref.gguf")
    checks.append(f"LoRA GGUF tensors bit-identical: {same}/{both}" + (f"; differ: {diff[:6]}" if diff else ""))
    changed = adapted_fraction(base / "model.safetensors", out / "fused.gguf")
    checks.append(f"bf16 values of blk.0.attn_q.weight the LoRA changed (base vs fused): {changed:.1%}")
    a = logits(out / "fused.gguf")
    if a is None:
        checks.append("llama-cpp-python not installed: logits not compared")
        return res
    b = logits(out / "ref.gguf")
    c = logits(out / "fused.gguf")  # determinism
    checks.append(
        f"llama.cpp logits, fused vs reference GGUF: max |diff| {float(np.max(np.abs(a - b))):.3g} "
        f"(run-to-run {float(np.max(np.abs(a - c))):.3g}; logit range {float(a.min()):.2f}..{float(a.max()):.2f})"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shapes", default="gemma4,llama", help="comma-separated: gemma4, llama")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--llama-cpp", type=Path, default=os.environ.get("LORADOC_LLAMA_CPP_DIR"))
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradoc-bench-gguf-"))
    if args.prepare_only:
        build(work, args.layers, shapes[0])
        return
    ref = args.llama_cpp
    if ref is None or not (Path(ref) / "convert_hf_to_gguf.py").is_file():
        raise SystemExit("need llama.cpp's converter scripts: --llama-cpp DIR (vendor/llama.cpp of the sdist)")
    if args.result_json is not None:  # one shape, in this (fresh) process
        args.result_json.write_text(json.dumps(run_shape(shapes[0], work / shapes[0], args.layers, ref)))
        return
    # each shape in its own process: a child's peak RSS (wait4) starts at its parent's RSS when forked, and the
    # comparisons below read whole GGUF files into this process
    results = []
    for shape in shapes:
        res_file = work / f"{shape}.result.json"
        subprocess.run(
            [sys.executable, __file__, "--shapes", shape, "--layers", str(args.layers), "--workdir", str(work),
             "--llama-cpp", str(ref), "--result-json", str(res_file)],
            check=True,
        )  # fmt: skip
        results.append(json.loads(res_file.read_text()))
    names = [name for name, _, _ in results[0]["rows"]]  # type: ignore[misc]
    head = "".join(f" | {shape:>8s} wall s  peak MiB" for shape in shapes)
    print(f"\n{'':62s}{head}")
    for i, name in enumerate(names):
        cells = "".join(f" | {res['rows'][i][1]:15.1f} {res['rows'][i][2]:9d}" for res in results)  # type: ignore[index]
        print(f"{name:62s}{cells}")
    for res in results:
        print(f"\n{res['title']}")
        for line in res["checks"]:  # type: ignore[attr-defined]
            print(f"  {line}")


if __name__ == "__main__":
    main()
