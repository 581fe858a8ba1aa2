"""How often `loradoc doctor --fast` (static prediction, no torch) differs from the full doctor (peft's dry load).

Two corpora:

- the 214 ``adapter_config.json`` files from the wild (tests/fixtures/real_adapter_configs.jsonl), each paired, as
  tests/test_real_configs_doctor.py does, with the weights of the bundled ``healthy-gemma4-text`` adapter and the
  tiny Gemma 4 text base;
- the 42 adapters published by others in ../shared/data/real-adapters, each on a base directory holding its
  published config.json (tests/real_adapters_lib.py).

Each mode runs in its own child process (the full one first: it builds and caches the base profiles that `--fast`
reads), so that the peak memory of each is its own (`--fast` never imports torch). Prints, per corpus /
architecture / task type: count, agree, disagree; then every disagreement (adapter, fast verdict, full verdict,
the findings that differ); then each mode's time and peak RSS and the ratio fast/full.

Usage: python benchmarks/fast_vs_full.py [--workdir DIR] [--corpus configs real] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
CONFIGS = ROOT / "tests" / "fixtures" / "real_adapter_configs.jsonl"


# ------------------------------------------------------------------------------------------------ cases


def config_cases(work: Path, limit: int | None) -> list[dict[str, Any]]:
    """The 214 configs from the wild, each with the healthy Gemma 4 text adapter's weights, on its tiny base."""
    from loradoc.demo.builder import build_example

    ex = build_example(work / "example", names=["healthy-gemma4-text"])
    weights = ex.adapters["healthy-gemma4-text"] / "adapter_model.safetensors"
    base = ex.bases["tiny-gemma4-text"]
    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    rows = [json.loads(line) for line in CONFIGS.read_text().splitlines() if line.strip()][:limit]
    out = []
    for i, row in enumerate(rows):
        d = work / "configs" / f"{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps(row["config"]))
        if not (d / "adapter_model.safetensors").is_file():
            shutil.copy(weights, d / "adapter_model.safetensors")
        task = row["config"].get("task_type") if isinstance(row["config"], dict) else None
        out.append(
            {
                "id": f"{i:03d} {row.get('repo', '?')}",
                "corpus": "configs",
                "arch": f"{arch} (tiny)",
                "task": str(task or "-"),
                "adapter": str(d),
                "base": str(base),
            }
        )
    return out


def real_cases(work: Path, limit: int | None) -> list[dict[str, Any]]:
    """The adapters published by others, each on a directory with its base's published config.json."""
    from real_adapters_lib import REAL, base_config, config_dir, provenance

    out = []
    for name, prov in list(provenance().items())[:limit]:
        cfg = json.loads(base_config(name).read_text())
        out.append(
            {
                "id": name,
                "corpus": "real",
                "arch": (cfg.get("architectures") or ["?"])[0],
                "task": prov.get("task_type") or "-",
                "adapter": str(REAL / "adapters" / name),
                "base": str(config_dir(name, work)),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ one mode


def run_mode(mode: str, cases_path: Path, out_path: Path) -> None:
    """Child process: diagnose every case in one mode; write verdicts, findings, times and peak RSS."""
    t_proc = time.perf_counter()
    from loradoc.diagnose.doctor import diagnose
    from loradoc.errors import LoradocError

    cases = json.loads(cases_path.read_text())
    results: dict[str, Any] = {}
    for c in cases:
        t = time.perf_counter()
        try:
            d = diagnose(c["adapter"], c["base"], fast=mode == "fast")
        except LoradocError as e:
            res: dict[str, Any] = {"verdict": f"bad-input: {e.__class__.__name__}", "findings": [], "peft": None}
        else:
            res = {
                "verdict": d.verdict,
                "findings": [[f.code, f.severity, f.count, f.message] for f in d.findings],
                "peft": [d.peft.loaded, d.peft.missing, d.peft.unexpected, d.peft.error],
            }
        res["seconds"] = time.perf_counter() - t
        results[c["id"]] = res
    out = {
        "mode": mode,
        "results": results,
        "seconds": sum(r["seconds"] for r in results.values()),
        "process_seconds": time.perf_counter() - t_proc,
        "peak_rss_mb": _peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }
    out_path.write_text(json.dumps(out))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits from the
    parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, cases_path: Path, out_path: Path, env: dict[str, str]) -> dict[str, Any]:
    t = time.perf_counter()
    with open(out_path.with_suffix(".log"), "w") as log:  # third-party warnings, out of the table
        subprocess.run(
            [sys.executable, __file__, "--child", mode, str(cases_path), str(out_path)],
            check=True,
            env=env,
            cwd=ROOT,
            stderr=log,
        )
    data = json.loads(out_path.read_text())
    data["wall_seconds"] = time.perf_counter() - t
    return data


# ------------------------------------------------------------------------------------------------ compare


def differing_findings(fast: dict[str, Any], full: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(code/severity only in --fast, code/severity only in full)."""
    a = {f"{c}/{s}" for c, s, *_ in fast["findings"]}
    b = {f"{c}/{s}" for c, s, *_ in full["findings"]}
    return sorted(a - b), sorted(b - a)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir")
    ap.add_argument("--corpus", nargs="*", default=["configs", "real"], choices=["configs", "real"])
    ap.add_argument("--limit", type=int, default=None, help="first N of each corpus (a quick look)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "CASES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_mode(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="loradoc-fast-vs-full-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("LORADOC_CACHE_DIR", str(work / "profile-cache"))  # full builds the profiles --fast reads
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cases: list[dict[str, Any]] = []
    if "configs" in args.corpus:
        cases += config_cases(work, args.limit)
    if "real" in args.corpus:
        cases += real_cases(work, args.limit)
    cases_path = work / "cases.json"
    cases_path.write_text(json.dumps(cases))
    full = _child("full", cases_path, work / "full.json", env)
    fast = _child("fast", cases_path, work / "fast.json", env)

    groups: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    disagreements = []
    for c in cases:
        f, g = fast["results"][c["id"]], full["results"][c["id"]]
        same = f["verdict"] == g["verdict"]
        groups[(c["corpus"], c["arch"], c["task"])].append(same)
        if not same:
            disagreements.append((c, f, g))

    print(f"{'corpus':<8} {'architecture':<42} {'task':<14} {'count':>5} {'agree':>5} {'disagree':>8}")
    for (corpus, arch, task), rows in sorted(groups.items()):
        n_ok = sum(rows)
        print(f"{corpus:<8} {arch[:42]:<42} {task[:14]:<14} {len(rows):>5} {n_ok:>5} {len(rows) - n_ok:>8}")
    total = sum(len(r) for r in groups.values())
    agree = sum(sum(r) for r in groups.values())
    print(f"{'all':<8} {'':<42} {'':<14} {total:>5} {agree:>5} {total - agree:>8}")

    print(f"\ndisagreements ({len(disagreements)}):")
    for c, f, g in disagreements:
        only_fast, only_full = differing_findings(f, g)
        print(f"- {c['corpus']}/{c['id']}: --fast {f['verdict']}, full {g['verdict']}")
        print(f"    only in --fast: {', '.join(only_fast) or '-'}; only in full: {', '.join(only_full) or '-'}")
        explain = [m for code, sev, _n, m in g["findings"] if f"{code}/{sev}" in only_full or sev == "info" and code
                   in ("static-disagrees", "unsaved-bias")]  # fmt: skip
        for m in explain[:2]:
            print(f"    full says: {m[:220]}")
    healthy_wrong = sum(1 for _c, f, g in disagreements if f["verdict"] == "healthy")
    print(f"--fast says healthy where full does not: {healthy_wrong}")

    print("\nmode   diagnose s  process s  wall s  peak RSS MB  torch imported")
    for d in (fast, full):
        print(
            f"{d['mode']:<6} {d['seconds']:>10.1f} {d['process_seconds']:>10.1f} {d['wall_seconds']:>7.1f} "
            f"{d['peak_rss_mb']:>12.0f}  {d['torch_imported']}"
        )
    print(
        f"ratio fast/full: diagnose time {fast['seconds'] / full['seconds']:.3f}, wall "
        f"{fast['wall_seconds'] / full['wall_seconds']:.3f}, peak RSS {fast['peak_rss_mb'] / full['peak_rss_mb']:.3f} "
        f"({len(cases)} adapters; the full run includes building each base's profile once)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
