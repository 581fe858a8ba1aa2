"""Benchmark: ``loradoc convert merged`` (streaming merge) against peft load + merge_and_unload + save_pretrained.

One run builds a synthetic Gemma-4-shaped model of more than 1 GB (Gemma4ForCausalLM at reduced depth and width
but real proportions: the real 262144-token vocabulary, 8:1 query:kv heads, KV-shared layers, double-wide MLP,
per-layer input embeddings; random bf16 weights, saved with ``save_pretrained``) and a real-shaped LoRA (r=16,
the 7 projections, made with peft), then merges it to bf16 both ways, each in its own subprocess:

- loradoc, first merge against the base (hashes the base files on the way, for loradoc-merge.json);
- loradoc again (the base's sha256 is now cached; what every later merge against the same base costs);
- (analysis only) loradoc with ``hashlib.sha256`` stubbed out: what the merge costs without its sha256 passes;
- peft: ``from_pretrained(dtype=bf16)`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` + ``save_pretrained``.

Time is the child's wall clock, peak RSS its ``ru_maxrss`` from ``os.wait4``; the inputs are built in a separate
subprocess (and are in the page cache for every contender), so this parent stays small. The two outputs are then
compared tensor by tensor, streamed (max abs difference of the merged weights; the rest must be bit-identical).

    python benchmarks/merge.py [--workdir DIR] [--keep] [--layers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUILD = r"""
import json, sys, time, warnings
from pathlib import Path
import torch
warnings.simplefilter("ignore")
from transformers import Gemma4ForCausalLM, Gemma4TextConfig
from peft import LoraConfig, get_peft_model

work = Path(sys.argv[1]); layers = int(sys.argv[2])
t0 = time.perf_counter()
s, f = "sliding_attention", "full_attention"
types = [f if (i + 1) % 4 == 0 or i == layers - 1 else s for i in range(layers)]
cfg = Gemma4TextConfig(
    vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size=1024, intermediate_size=4096,
    num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=1, head_dim=128, global_head_dim=256,
    hidden_size_per_layer_input=64, num_kv_shared_layers=max(1, 3 * layers // 8), use_double_wide_mlp=True,
    layer_types=types, sliding_window=512, final_logit_softcapping=30.0, max_position_embeddings=8192,
    tie_word_embeddings=True,
)
with torch.device("meta"):
    model = Gemma4ForCausalLM(cfg)
model = model.to_empty(device="cpu").to(torch.bfloat16)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            if name.endswith("norm.weight") or "layer_scalar" in name:
                t.fill_(1.0)
            else:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(0.02))
model.tie_weights()
model.eval()
model.save_pretrained(str(work / "base"))
t_base = time.perf_counter() - t0
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM"))
with torch.no_grad():
    for name, p in pm.named_parameters():
        if "lora_A" in name:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        elif "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
pm.save_pretrained(str(work / "adapter"))
t1 = time.perf_counter()
from loradoc.model.profiles import get_profile
get_profile(str(work / "base"))  # the base profile: built once per base (meta device), cached
t_profile = time.perf_counter() - t1
params = sum(p.numel() for p in model.parameters())
json.dump({"params": params, "build_s": t_base, "profile_s": t_profile}, sys.stdout)
"""

LORADOC = r"""
import json, sys, time
t0 = time.perf_counter()
from loradoc.convert.merge import merge_adapter
res = merge_adapter(sys.argv[1], sys.argv[2], sys.argv[3], dtype="bf16")
json.dump({"wall_s": time.perf_counter() - t0, "timings": res.timings, "merged": len(res.merged),
           "torch_imported": "torch" in sys.modules}, sys.stdout)
"""

# Analysis only, not a mode of loradoc: the same merge with hashlib.sha256 stubbed out, to show what the sha256
# passes (the writer's per-tensor digests, the per-file digests of loradoc-merge.json, the base's) cost.
LORADOC_NO_SHA = (
    r"""
import hashlib
class _NoHash:
    def update(self, data): pass
    def hexdigest(self): return '0' * 64
    def digest(self): return bytes(32)
    def copy(self): return self
_real = hashlib.sha256
hashlib.sha256 = lambda *a, **k: _real(*a, **k) if a else _NoHash()  # sha256(data): small one-shots stay real
"""
    + LORADOC
)

PEFT = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import torch
warnings.simplefilter("ignore")
from transformers import AutoModelForCausalLM
from peft import PeftModel
t_import = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
t_load = time.perf_counter()
pm = PeftModel.from_pretrained(model, sys.argv[1])
t_peft = time.perf_counter()
merged = pm.merge_and_unload()
t_merge = time.perf_counter()
merged.save_pretrained(sys.argv[3])
t_save = time.perf_counter()
json.dump({"wall_s": t_save - t0, "timings": {"import_s": t_import - t0, "load_s": t_load - t_import,
           "peft_s": t_peft - t_load, "merge_s": t_merge - t_peft, "save_s": t_save - t_merge}}, sys.stdout)
"""


def run_child(code: str, args: list[str], log: Path) -> tuple[dict, float, float, float]:
    """Run ``python -c code args``; return (its JSON stdout, wall s, CPU s (user + sys), peak RSS MB) via wait4."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log.with_suffix(".out"), "wb") as so, open(log.with_suffix(".err"), "wb") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=so, stderr=se, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        sys.exit(f"child failed ({code_}): {log.with_suffix('.err').read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return json.loads(log.with_suffix(".out").read_text()), wall, cpu, usage.ru_maxrss / 1024


def sha256_speed() -> float:
    import hashlib

    data = os.urandom(64 << 20)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        hashlib.sha256(data).digest()
        best = max(best, len(data) / 1e6 / (time.perf_counter() - t))
    return best


def compare(a_dir: Path, b_dir: Path, merged_names: set[str], base_dir: Path) -> dict:
    """Stream both checkpoints tensor by tensor: max |a - b| over merged tensors, bit-identity of the rest, and how
    many elements each merge changed against the base (a merge that did nothing would agree too)."""
    import numpy as np

    from loradoc.convert.checkpoint import decode_f32, open_checkpoint

    a, b, c = open_checkpoint(a_dir), open_checkpoint(b_dir), open_checkpoint(base_dir)
    out = {"tensors": len(a.where), "same_names": set(a.where) == set(b.where), "merged_max_abs": 0.0,
           "merged_rel": 0.0, "merged_elems_differing": 0, "merged_elems": 0, "others_bit_identical": True,
           "changed_vs_base": 0, "peft_changed_vs_base": 0}  # fmt: skip

    def read(ck: object, name: str, pos: int, n: int) -> bytes:
        f = ck.where[name]  # type: ignore[attr-defined]
        with open(f, "rb") as fh:
            return os.pread(fh.fileno(), n, ck.headers[f].data_start + ck.info(name).begin + pos)  # type: ignore[attr-defined]

    for name in sorted(a.where):
        ia, ib = a.info(name), b.info(name)
        step = 1 << 24
        for pos in range(0, ia.nbytes, step):
            n = min(step, ia.nbytes - pos)
            da, db = read(a, name, pos, n), read(b, name, pos, n)
            if name not in merged_names:
                out["others_bit_identical"] &= da == db and ia.dtype == ib.dtype
                continue
            elems = n * 8 // {"BF16": 16, "F16": 16, "F32": 32}[ia.dtype]
            xa = decode_f32(ia.dtype, da, (elems,))
            xb = decode_f32(ib.dtype, db, (elems,))
            xc = decode_f32(c.info(name).dtype, read(c, name, pos, n), (elems,))
            d = np.abs(xa - xb)
            out["merged_max_abs"] = max(out["merged_max_abs"], float(d.max()))
            out["merged_rel"] = max(out["merged_rel"], float(d.max() / max(1e-30, float(np.abs(xb).max()))))
            out["merged_elems_differing"] += int(np.count_nonzero(d))
            out["merged_elems"] += elems
            out["changed_vs_base"] += int(np.count_nonzero(xa != xc))
            out["peft_changed_vs_base"] += int(np.count_nonzero(xb != xc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradoc-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORADOC_CACHE_DIR", str(work / "cache"))
    try:
        print(f"building the synthetic model in {work} ...", flush=True)
        built, build_wall, _, _ = run_child(BUILD, [str(work), str(args.layers)], work / "build")
        from loradoc.io.safetensors import read_header

        base_files = sorted((work / "base").glob("*.safetensors"))
        headers = [read_header(f) for f in base_files]
        size = sum(f.stat().st_size for f in base_files)
        largest = max((t for h in headers for t in h.tensors.values()), key=lambda t: t.nbytes)
        adapter_size = (work / "adapter" / "adapter_model.safetensors").stat().st_size
        print(
            f"base: {built['params'] / 1e6:.0f}M params, {size / 1e9:.2f} GB bf16 in {len(base_files)} file(s); "
            f"largest tensor {largest.name} {list(largest.shape)} = {largest.nbytes / 2**20:.0f} MiB; "
            f"adapter {adapter_size / 1e6:.1f} MB (r=16, 7 projections)"
        )
        print(f"(build {build_wall:.1f} s; one-time loradoc base profile {built['profile_s']:.1f} s, untimed)")
        base, adapter = str(work / "base"), str(work / "adapter")
        rows = []
        lo1, *m1 = run_child(LORADOC, [adapter, base, str(work / "out-loradoc")], work / "loradoc1")
        rows.append(("loradoc (first merge: hashes the base)", *m1, lo1["timings"]))
        shutil.rmtree(work / "out-loradoc")
        lo2, *m2 = run_child(LORADOC, [adapter, base, str(work / "out-loradoc")], work / "loradoc2")
        rows.append(("loradoc (base sha256 cached)", *m2, lo2["timings"]))
        nh, *mn = run_child(LORADOC_NO_SHA, [adapter, base, str(work / "out-nosha")], work / "nosha")
        rows.append(("(analysis) loradoc, sha256 stubbed out", *mn, nh["timings"]))
        shutil.rmtree(work / "out-nosha")
        pf, *mp = run_child(PEFT, [adapter, base, str(work / "out-peft")], work / "peft")
        rows.append(("peft load + merge_and_unload + save", *mp, pf["timings"]))
        pf_wall, pf_cpu = mp[0], mp[1]

        rss_goal = largest.nbytes / 2**20 * 1.5 + 300
        print()
        cols = ["contender".ljust(40), "wall s", "vs peft", " CPU s", "vs peft", "peak RSS MB", "phases (wall s)"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
        for label, wall, cpu, rss, phases in rows:
            ph = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in phases.items() if k != "total_s")
            print(
                f"| {label:<40} | {wall:6.1f} | {wall / pf_wall:6.2f}x | {cpu:6.1f} | {cpu / pf_cpu:6.2f}x "
                f"| {rss:11.0f} | {ph} |"
            )
        print()
        for label, wall, cpu, rss, _ in rows[:2]:
            t_ok = wall <= 0.3 * pf_wall
            r_ok = rss <= rss_goal
            print(
                f"goals, {label}: time <= 0.3x peft ({0.3 * pf_wall:.1f} s): {'MET' if t_ok else 'MISSED'} "
                f"({wall / pf_wall:.2f}x wall, {cpu / pf_cpu:.2f}x CPU); peak RSS <= largest tensor x 1.5 + 300 MB "
                f"({rss_goal:.0f} MB): {'MET' if r_ok else 'MISSED'} ({rss:.0f} MB)"
            )
        mbps = sha256_speed()
        out_bytes = sum(f.stat().st_size for f in (work / "out-loradoc").glob("*.safetensors"))
        print(
            f"sha256 here: {mbps:.0f} MB/s (one core). The output ({out_bytes / 1e9:.2f} GB) is hashed once "
            f"(the per-file sha256 of loradoc-merge.json, on a thread): "
            f"{out_bytes / 1e6 / mbps:.1f} CPU s; the first merge also hashes the base: "
            f"{size / 1e6 / mbps:.1f} CPU s more"
        )
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"torch imported by the loradoc merge: {lo2['torch_imported']}")
        man = json.loads((work / "out-loradoc" / "loradoc-merge.json").read_text())
        merged_names = {m["tensor"] for m in man["merged"]}
        cmp = compare(work / "out-loradoc", work / "out-peft", merged_names, work / "base")
        print(
            f"agreement: {cmp['tensors']} tensors, same names {cmp['same_names']}; {len(merged_names)} merged tensors: "
            f"max |loradoc - peft| = {cmp['merged_max_abs']:.3g} (max relative to the tensor's max "
            f"{cmp['merged_rel']:.2g}), {cmp['merged_elems_differing']} of {cmp['merged_elems']} elements differ; "
            f"elements the merge changed vs the base: loradoc {cmp['changed_vs_base']}, peft "
            f"{cmp['peft_changed_vs_base']}; all other tensors bit-identical: {cmp['others_bit_identical']}"
        )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
