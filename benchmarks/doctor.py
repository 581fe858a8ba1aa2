"""How long does a diagnosis take? Whole-process wall and CPU times, side by side, in one run.

Rows:
  * a real-shaped 884-key replica of gemma4-clinical-endpoint-extractor (E4B shapes from the shipped profile:
    588 LM incl. 72 KV-shared k/v orphans, 224 vision, 72 audio; bf16, random) diagnosed against the shipped
    google/gemma-4-E4B-it profile: `loradoc doctor` (real peft dry load), `--fast`, and `loradoc --help`;
  * on the tiny Gemma 4 base of the bundled example: `loradoc doctor` against a real
    `PeftModel.from_pretrained` of the same base and adapter (transformers loads the real tiny weights).
    A real peft load of the E4B base needs its 16 GB checkpoint, which this machine does not have;
    `--real-e4b` instead materialises E4B with uninitialised bf16 weights (about 16 GB of RAM) and loads the
    884-key adapter into it with peft.

Usage: python benchmarks/doctor.py [--runs 3] [--real-e4b] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_e4b_replica(out: Path, *, rank: int = 16, dtype: str = "BF16") -> Path:
    """A real-shaped 884-tensor E4B adapter, written with loradoc's streaming safetensors writer."""
    import json

    import numpy as np

    from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec
    from loradoc.model.layout import address_of
    from loradoc.model.profiles import get_profile

    prof = get_profile("google/gemma-4-E4B-it", allow_build=False)
    r = rank
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    text = prof.text_config
    hidden = int(text["hidden_size"])
    plan: list[TensorSpec] = []
    # LM: every layer, all 7 projections (k/v of KV-shared layers taken from the last non-shared layer's shape)
    lm_layers = sorted({address_of(n).layer for n in prof.modules if address_of(n).tower == "language"} - {None})
    for layer in lm_layers:
        for n in names:
            mod = f"model.language_model.layers.{layer}.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}"
            info = prof.modules.get(mod)
            if info is None:  # KV-shared layer: the module is gone, the real adapter still had it
                ref = f"model.language_model.layers.{prof.kv_shared_layers[0] - 1}.self_attn.{n}"
                info = prof.modules[ref]
            stem = f"base_model.model.{mod}"
            plan += [
                TensorSpec(f"{stem}.lora_A.weight", dtype, (r, info.in_features or hidden)),
                TensorSpec(f"{stem}.lora_B.weight", dtype, (info.out_features or hidden, r)),
            ]
    for name, info in prof.modules.items():
        a = address_of(name)
        if info.kind != "clippable" or a.layer is None:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (a.tower == "vision" and leaf in names) or (a.tower == "audio" and leaf in ("q_proj", "k_proj", "v_proj")):
            stem = f"base_model.model.{name}.linear"
            plan += [
                TensorSpec(f"{stem}.lora_A.weight", dtype, (r, info.in_features)),
                TensorSpec(f"{stem}.lora_B.weight", dtype, (info.out_features, r)),
            ]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with SafetensorsWriter(out / "adapter_model.safetensors", plan, metadata={"format": "pt"}) as w:
        for spec in plan:
            f32 = rng.standard_normal(int(np.prod(spec.shape)), dtype=np.float32) * 0.02
            if dtype == "BF16":
                w.write(spec.name, (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes())
            else:
                w.write(spec.name, f32.tobytes())
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "google/gemma-4-E4B-it",
        "r": r,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": list(names),
        "bias": "none",
        "peft_version": "0.18.1",
    }
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def timed(cmd: list[str], runs: int) -> tuple[float, float, float, int]:
    """(median wall s, median CPU s, min wall s, peak RSS MB) of a whole process (rusage of that child alone)."""
    walls, cpus, peak = [], [], 0
    for _ in range(runs):
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            code = os.waitstatus_to_exitcode(status)
            if code not in (0, 1):
                err.seek(0)
                raise SystemExit(f"{' '.join(cmd)} failed ({code}): {err.read().decode()[-400:]}")
        walls.append(wall)
        cpus.append(ru.ru_utime + ru.ru_stime)
        peak = max(peak, ru.ru_maxrss // 1024)
    return statistics.median(walls), statistics.median(cpus), min(walls), peak


REAL_LOAD = """
import sys, warnings, json, torch, transformers
from peft import PeftModel
base, adapter = sys.argv[1], sys.argv[2]
arch = json.load(open(base + "/config.json"))["architectures"][0]
m = getattr(transformers, arch).from_pretrained(base, dtype=torch.float32)
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    try:
        PeftModel.from_pretrained(m, adapter)
    except Exception as e:
        print(type(e).__name__)
"""

REAL_LOAD_E4B = """
import sys, warnings, json, torch, transformers
from peft import PeftModel
cfg = transformers.AutoConfig.from_pretrained(sys.argv[1])
with torch.device("meta"):
    m = transformers.Gemma4ForConditionalGeneration(cfg)
m = m.to_empty(device="cpu").to(torch.bfloat16)
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    try:
        PeftModel.from_pretrained(m, sys.argv[2])
    except Exception as e:
        print(type(e).__name__)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--real-e4b", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradoc-bench-doctor-"))
    adapter = work / "e4b-clinical-884"
    tiny_a = str(work / "example" / "adapters" / "seed-clinical-endpoint-extractor")
    tiny_b = str(work / "example" / "bases" / "tiny-gemma4-e4b")
    if args.prepare_only:
        from loradoc.demo.builder import build_example

        make_e4b_replica(adapter)
        build_example(work / "example", names=["seed-clinical-endpoint-extractor"])
        return
    # build inputs in a child, so this process stays small (children inherit its RSS until exec)
    subprocess.run([sys.executable, __file__, "--prepare-only", "--workdir", str(work)], check=True)
    exe = [sys.executable, "-m", "loradoc.cli"]
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    # warm the profile cache for the tiny base (the E4B profile is shipped)
    subprocess.run([*exe, "base", "profile", tiny_b], capture_output=True, check=True)

    rows: list[tuple[str, tuple[float, float, float, int], str]] = []
    e4b = ["--base", "google/gemma-4-E4B-it", "--json"]
    rows.append(("loradoc --help", timed([*exe, "--help"], args.runs), "goal < 0.3 s"))
    rows.append(
        (
            "doctor --fast (E4B, 884 keys)",
            timed([*exe, "doctor", str(adapter), *e4b, "--fast"], args.runs),
            "goal < 1 s CPU",
        )
    )
    rows.append(("doctor (E4B, 884 keys)", timed([*exe, "doctor", str(adapter), *e4b], args.runs), "goal < 6 s"))
    if args.real_e4b:
        from loradoc.model.profiles import resolve_base

        cfg_dir = str(resolve_base("google/gemma-4-E4B-it").directory)
        rows.append(
            (
                "real peft load (E4B, uninit bf16)",
                timed([sys.executable, "-c", REAL_LOAD_E4B, cfg_dir, str(adapter)], 1),
                "reference",
            )
        )
    rows.append(
        ("doctor (tiny E4B-like, 124 keys)", timed([*exe, "doctor", tiny_a, "--base", tiny_b, "--json"], args.runs), "")
    )
    rows.append(
        (
            "real peft load (tiny E4B-like)",
            timed([sys.executable, "-c", REAL_LOAD, tiny_b, tiny_a], args.runs),
            "reference",
        )
    )

    ref = rows[-1][1][0]
    print(f"# loradoc doctor benchmark ({env_note}; median of {args.runs} runs; whole processes)")
    print(f"{'what':<36} {'wall s':>8} {'cpu s':>8} {'min s':>8} {'peak MB':>8} {'vs real':>8}  note")
    for name, (wall, cpu, mn, peak), note in rows:
        print(f"{name:<36} {wall:8.2f} {cpu:8.2f} {mn:8.2f} {peak:8d} {wall / ref:7.2f}x  {note}")


if __name__ == "__main__":
    main()
