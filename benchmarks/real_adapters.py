"""Agreement of `loradoc doctor` with real peft loads on the 42 adapters published by others.

For every adapter in ../shared/data/real-adapters: doctor (full: real peft dry load) and `--fast`, against a real
`PeftModel.from_pretrained` on a base built from the published config.json (uninitialised bf16 weights; the
model class the adapter's task type implies). Repairable ones are repaired (each pass judged by a dry load) and the
output is loaded for real; with --check-load, healthy ones on bases under --max-params get `loradoc check-load`
on a saved random base. gpt-oss-20b is header-only (its base is too large to instantiate).

Usage: python benchmarks/real_adapters.py [--check-load] [--max-params 0.7e9] [--only NAME ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _params(name: str) -> float:
    import json

    from real_adapters_lib import base_config

    c = json.loads(base_config(name).read_text())
    c = c.get("text_config", c)
    h = c.get("hidden_size") or c.get("d_model") or c.get("n_embd") or 0
    n = c.get("num_hidden_layers") or c.get("num_layers") or c.get("n_layer") or 0
    v = c.get("vocab_size") or 0
    return 12 * h * h * n + v * h


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-load", action="store_true")
    ap.add_argument("--max-params", type=float, default=0.7e9, help="check-load only on bases below this size")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    from real_adapters_lib import evaluate, provenance

    work = Path(args.workdir or tempfile.mkdtemp(prefix="loradoc-real-"))
    names = args.only or list(provenance())
    rows = []
    t0 = time.perf_counter()
    head = f"{'adapter':<36} {'arch':<34} {'task':<12} {'doctor':<22} {'--fast':<11} {'real load':<20} "
    head += f"{'doctor counts':<16} {'real counts':<16} agree repaired check-load"
    print(head)
    for name in names:
        t = time.perf_counter()
        cl = args.check_load and _params(name) < args.max_params
        row = evaluate(name, work, check_load=cl)
        rows.append(row)

        def fmt(c: tuple) -> str:
            return "/".join("-" if x is None else str(x) for x in c) or "-"

        def yn(v: bool | None) -> str:
            return "-" if v is None else "yes" if v else "NO"

        print(
            f"{row.adapter:<36} {row.arch[:34]:<34} {row.task:<12} {row.doctor[:22]:<22} {row.fast[:11]:<11} "
            f"{row.real[:20]:<20} {fmt(row.doctor_counts):<16} {fmt(row.real_counts):<16} {yn(row.agree):<5} "
            f"{yn(row.repaired):<8} {yn(row.check_load):<5} {time.perf_counter() - t:5.1f}s"
            + (f"  [{row.why[:160]}]" if row.why else ""),
            flush=True,
        )
    judged = [r for r in rows if r.agree is not None]
    agree = sum(1 for r in judged if r.agree)
    fast_diff = sum(1 for r in rows if r.fast and r.fast != r.doctor)
    healthy_wrong = sum(1 for r in judged if r.doctor == "healthy" and r.real != "healthy")
    rep = [r for r in rows if r.repaired is not None]
    cl = [r for r in rows if r.check_load is not None]
    print(
        f"\nverdict+counts agree with the real load: {agree}/{len(judged)} ({len(rows) - len(judged)} header-only); "
        f"called healthy but not: {healthy_wrong}; repaired to a clean real load: "
        f"{sum(1 for r in rep if r.repaired)}/{len(rep)}; check-load passed: "
        f"{sum(1 for r in cl if r.check_load)}/{len(cl)}; --fast differs from full: {fast_diff}/{len(rows)}; "
        f"{time.perf_counter() - t0:.0f}s"
    )
    return 0 if agree == len(judged) else 1


if __name__ == "__main__":
    raise SystemExit(main())
