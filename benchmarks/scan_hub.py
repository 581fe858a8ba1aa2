"""How fast is `scan-hub`, and how few bytes does it read? One table, one run.

A loopback Hub-compatible server (tests/hubserver.py, in its own process, as a remote Hub would be) holds N
generated adapters of google/gemma-4-E4B-it: real E4B shapes from the shipped profile (q/v LoRAs on every text
layer, r=64 bf16, about 35 MB of weights each), ten key-layout/config kinds (healthy, list targets that hit the
towers, rank mismatch, text-only paths, KV-shared orphans, tower LoRAs, missing prefix, a bnb-4bit base id, ...)
and a broken repository every 20th (missing / HTML / truncated weights, a non-PEFT config, a pickle-only
adapter). Every config differs (no two adapters are analysed alike: the verdict cache does not help here).

Rows: scan-hub at each concurrency: wall seconds (listing included), adapters per second, verdict counts, bytes
of weight files fetched against the total weight bytes of the scanned repositories, and the requests the server
saw. Also: the cost of the static analysis alone per adapter (the CPU floor).

Usage: python benchmarks/scan_hub.py [--adapters 200] [--concurrency 4 8 16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASE = "google/gemma-4-E4B-it"
TOKEN = "hf_loradocBenchmarkToken000"  # known to the loopback server (a real token from the environment is not)


def _start_server(workdir: Path, n: int, rank: int) -> tuple[subprocess.Popen[str], str, dict]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "hubserver.py"),
            "--root",
            str(workdir),
            "--generate",
            str(n),
            "--base",
            BASE,
            "--rank",
            str(rank),
            "--token",
            TOKEN,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    _, url, info = line.rstrip("\n").split(" ", 2)
    return proc, url, json.loads(info)


def analysis_floor(n: int = 20, rank: int = 64) -> float:
    """Seconds of static analysis per adapter (one thread), on a generated E4B adapter."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hubserver import _layout_specs, _scan_config, write_sparse_safetensors

    from loradoc.hub.scan import _analyse
    from loradoc.io.safetensors import read_header
    from loradoc.model.profiles import get_profile

    prof = get_profile(BASE, allow_build=False)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "a.safetensors"
        write_sparse_safetensors(f, _layout_specs(prof, "wrapper-qv", rank))
        header = read_header(f)
        cfgs = [json.dumps(_scan_config("list", BASE, rank, i)).encode() for i in range(n)]
        index = prof.address_index()
        prof.address_index = lambda: index  # as scan_hub does
        t = time.perf_counter()
        for c in cfgs:
            _analyse("bench/a", "0" * 40, c, header, prof)
        return (time.perf_counter() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=200)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from loradoc.hub import scan_hub

    tmp = tempfile.TemporaryDirectory(prefix="loradoc-bench-scan-")
    workdir = args.workdir or Path(tmp.name)
    t = time.perf_counter()
    proc, url, info = _start_server(workdir, args.adapters, args.rank)
    setup = time.perf_counter() - t
    print(
        f"# {info['repos']} generated adapters of {BASE} on {url} ({info['blobs']} distinct weight files, "
        f"{info['weight_bytes'] / 1e9:.2f} GB of weights in total, sparse on disk); setup {setup:.1f} s; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    try:
        floor = analysis_floor(rank=args.rank)
        rows = []
        for conc in args.concurrency:
            res = scan_hub(BASE, endpoint=url, token=TOKEN, concurrency=conc)
            frac = res.weight_bytes_fetched / res.weight_bytes_total if res.weight_bytes_total else 0.0
            rows.append((conc, res, frac))
        print()
        print(
            "| concurrency | adapters | seconds | adapters/s | verdicts | weight bytes fetched | of total | "
            "all bytes fetched |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for conc, res, frac in rows:
            v = ", ".join(f"{k} {n}" for k, n in sorted(res.verdicts.items()))
            print(
                f"| {conc} | {len(res.rows)} | {res.seconds:.2f} | {res.adapters_per_second:.1f} | {v} | "
                f"{res.weight_bytes_fetched:,} | {frac:.4%} | {res.bytes_fetched:,} |"
            )
        print()
        print(
            f"static analysis alone: {floor * 1000:.1f} ms per adapter on one thread "
            f"(about {1 / floor:.0f} adapters/s on one core; the GIL serialises it: threads overlap the HTTP waits)"
        )
        print(
            "requests per adapter: adapter_config.json GET, weights Range bytes=0-7, weights Range header "
            "(3; + 1 listing page per 1000)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
