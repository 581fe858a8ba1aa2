"""Repair throughput on a synthetic ~1 GB adapter, against `cp` and safetensors load_file + save_file.

The adapter is an E4B-shaped replica of the clinical extractor layout (LM on all 42 layers incl. KV-shared
k/v orphans, vision and audio tower LoRAs at the inner `.linear`) at rank 128 in float32, so that repair has
real work: drop the orphans and towers, re-write the config, stream the ~90% it keeps. Every row is a whole
process, timed with wall clock; peak RSS is that process's own (wait4 rusage).

Usage: python benchmarks/repair.py [--rank 128] [--runs 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from doctor import make_e4b_replica  # noqa: E402


def run(cmd: list[str], runs: int, before: list[str] | None = None) -> tuple[float, int]:
    walls, peak = [], 0
    for _ in range(runs):
        if before:
            subprocess.run(before, check=True)
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) not in (0, 1):
                err.seek(0)
                raise SystemExit(f"{cmd[:4]} failed: {err.read().decode()[-500:]}")
        walls.append(wall)
        peak = max(peak, ru.ru_maxrss // 1024)
    return statistics.median(walls), peak


NAIVE = """
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file(sd, sys.argv[2], metadata={"format": "pt"})
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradoc-bench-repair-"))
    src = work / "adapter"
    if args.prepare_only:
        make_e4b_replica(src, rank=args.rank, dtype="F32")
        return
    if not (src / "adapter_model.safetensors").is_file():
        subprocess.run(
            [sys.executable, __file__, "--prepare-only", "--workdir", str(work), "--rank", str(args.rank)], check=True
        )
    st = src / "adapter_model.safetensors"
    size_mb = st.stat().st_size / 2**20
    from loradoc.io.safetensors import read_header

    header = read_header(st)
    largest = max(t.nbytes for t in header.tensors.values()) / 2**20
    out = work / "out"
    rm_out = ["rm", "-rf", str(out), str(work / "cp.safetensors"), str(work / "naive.safetensors")]
    subprocess.run(["cat", str(st)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    rows = []
    rows.append(("cp", *run(["cp", str(st), str(work / "cp.safetensors")], args.runs, rm_out)))
    rows.append(("cp + sync", *run(["sh", "-c", f"cp {st} {work / 'cp.safetensors'} && sync"], args.runs, rm_out)))
    rows.append(
        (
            "safetensors load_file + save_file",
            *run([sys.executable, "-c", NAIVE, str(st), str(work / "naive.safetensors")], args.runs, rm_out),
        )
    )
    base = ["--base", "google/gemma-4-E4B-it"]
    rows.append(
        (
            "loradoc repair --verify none",
            *run(
                [sys.executable, "-m", "loradoc.cli", "repair", str(src), *base, "--out", str(out), "--verify", "none"],
                args.runs,
                rm_out,
            ),
        )
    )
    rows.append(
        (
            "loradoc repair --verify fast",
            *run(
                [sys.executable, "-m", "loradoc.cli", "repair", str(src), *base, "--out", str(out), "--verify", "fast"],
                args.runs,
                rm_out,
            ),
        )
    )
    kept_mb = (out / "adapter_model.safetensors").stat().st_size / 2**20 if out.exists() else float("nan")
    cp_wall = rows[0][1]
    print(
        f"# repair throughput: {size_mb:.0f} MB adapter ({len(header.tensors)} tensors, largest {largest:.1f} MB),"
        f" {kept_mb:.0f} MB kept; {os.cpu_count()} cpus; median of {args.runs}"
    )
    print(f"{'what':<36} {'wall s':>7} {'MB/s':>8} {'speed vs cp':>12} {'peak RSS MB':>12}")
    for name, wall, peak in rows:
        print(f"{name:<36} {wall:7.2f} {size_mb / wall:8.0f} {cp_wall / wall:11.2f}x {peak:12d}")
    print(f"goals: repair >= 0.8x cp speed; peak RSS <= 100 MB + largest tensor = {100 + largest:.0f} MB")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
