"""The serving-runtime table (vLLM, SGLang, llama.cpp, mlx-lm) for the real adapters in
../shared/data/real-adapters (each against its base's config.json) and, with --example DIR (a `loradoc example`
tree), the five seed adapters against the real bases they were trained on (shipped base ids).

Reads adapter_config.json, the safetensors header and the base config only: no model is built. Prints one row per
adapter (verdict per runtime, then the reasons and fixes) and the time per adapter. --record writes the results
into the registry (--registry PATH, else the default index).

Usage: python benchmarks/runtimes.py [--real DIR] [--example DIR] [--record] [--registry PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from loradoc.runtimes import check_runtimes

SHORT = {"loads": "loads", "loads-with-flags": "flags", "refused": "REFUSED", "unknown": "?"}
SEEDS = {
    "seed-clinical-endpoint-extractor": "google/gemma-4-E4B-it",
    "seed-cliniq-gemma4-e2b": "google/gemma-4-E2B-it",
    "seed-medical-qlora-e2b": "google/gemma-4-E2B-it",
    "seed-pediatric-support-g4": "google/gemma-4-E4B-it",
    "seed-medgemma-full-lora": "google/medgemma-4b-it",
}


def cases(real: Path, example: Path | None) -> list[tuple[str, Path, str | None, str | None]]:
    """(name, adapter dir, base to check against, base id to record)"""
    out: list[tuple[str, Path, str | None, str | None]] = []
    if example is not None:
        for name, base in SEEDS.items():
            out.append((name, example / "adapters" / name, base, base))
    if real.is_dir():
        prov = json.loads((real / "provenance.json").read_text())
        bases = dict(prov["bases"])
        for a in prov["adapters"]:
            b = bases.get(a.get("base"))
            cfg = str(real / b["config"]) if b else None
            out.append((a["name"], real / "adapters" / a["name"], cfg, b.get("hub_id") if b else None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--real", type=Path, default=here.parent / "shared" / "data" / "real-adapters")
    ap.add_argument("--example", type=Path, default=None, help="a `loradoc example` tree (adds the seed adapters)")
    ap.add_argument("--record", action="store_true", help="record every result in the registry")
    ap.add_argument("--registry", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.real.is_dir():
        args.real = Path("/work/shared/data/real-adapters")
    reg = None
    if args.record:
        from loradoc.registry import Registry

        reg = Registry(args.registry)
    rows = []
    t_all = time.perf_counter()
    for name, path, base, base_id in cases(args.real, args.example):
        t0 = time.perf_counter()
        rep = check_runtimes(path, base)
        dt = time.perf_counter() - t0
        if reg is not None:
            reg.record_runtimes(rep.to_json(), base_id=base_id)
        rows.append((name, rep, dt))
    total = time.perf_counter() - t_all
    if args.json:
        print(json.dumps({n: r.to_json() for n, r, _ in rows}, indent=1))
        return 0
    from loradoc.runtimes import runtime_info

    heads = [f"{runtime_info(rt)['name']} {runtime_info(rt)['version']}" for rt in ("vllm", "sglang", "llama_cpp",
                                                                                   "mlx_lm")]  # fmt: skip
    print(f"{'adapter':<36} {'architecture':<34} " + " ".join(f"{h:<16}" for h in heads))
    for name, rep, _ in rows:
        cells = []
        for r in rep.results:
            c = SHORT[r.verdict] + ("+fix" if r.verdict == "refused" and r.fix else "")
            c += "*" if r.warnings else ""
            cells.append(f"{c:<16}")
        print(f"{name:<36} {(rep.architecture or '?'):<34} " + " ".join(cells))
    print("\nREFUSED+fix: refused as is, loads after the fix; flags: loads with server flags; *: loads with parts "
          "not applied; ?: unknown\n")  # fmt: skip
    for name, rep, _ in rows:
        print(name)
        for r in rep.results:
            line = f"  {r.name:<10} {r.summary()}"
            print(line[:220])
            if r.fix:
                print(f"  {'':<10} fix: {r.fix}")
    counts: dict[str, dict[str, int]] = {}
    for _, rep, _ in rows:
        for r in rep.results:
            counts.setdefault(r.name, {}).setdefault(r.verdict, 0)
            counts[r.name][r.verdict] += 1
    print("\ntotals: " + "; ".join(f"{k}: {v}" for k, v in counts.items()))
    print(f"{len(rows)} adapters in {total:.2f} s ({1000 * total / max(len(rows), 1):.1f} ms each)")
    if reg is not None:
        reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
