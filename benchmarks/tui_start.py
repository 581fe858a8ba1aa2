"""How long until `loradoc tui` shows an interactive screen? Whole-process wall and CPU time, in one run.

The app is started headless on a registry with the shipped manifests (a fresh registry: the first sync indexes
them) and with an already indexed registry; an auto-pilot exits as soon as the main screen is mounted and the
adapter table is filled. `loradoc --help` is the reference row. Goal: < 1.5 s of process time.

Usage: python benchmarks/tui_start.py [--runs 5]
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

START = """
import sys
from pathlib import Path
from loradoc.tui.app import LoradocApp

async def pilot(p):
    await p.pause()
    assert p.app.query_one("#adapters").row_count > 0
    p.app.exit()

LoradocApp(Path(sys.argv[1]), offer_example=False).run(headless=True, size=(80, 24), auto_pilot=pilot)
"""


def timed(cmd: list[str], runs: int, env: dict[str, str], fresh: Path | None = None) -> tuple[float, float, int]:
    walls, cpus, peak = [], [], 0
    for _ in range(runs):
        if fresh is not None:
            for p in fresh.parent.glob(fresh.name + "*"):
                p.unlink()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{cmd[:3]} failed: {p.stderr.read().decode()[-500:] if p.stderr else ''}")
        cpus.append(ru.ru_utime + ru.ru_stime)
        peak = max(peak, ru.ru_maxrss // 1024)
    return statistics.median(walls), statistics.median(cpus), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loradoc-bench-tui-"))
    env = {**os.environ, "LORADOC_MANIFESTS": str(work / "user")}
    reg = work / "registry.sqlite"
    rows = [
        ("loradoc --help", timed([sys.executable, "-m", "loradoc.cli", "--help"], args.runs, env)),
        ("tui, fresh registry (first sync)", timed([sys.executable, "-c", START, str(reg)], args.runs, env, fresh=reg)),
        ("tui, indexed registry", timed([sys.executable, "-c", START, str(reg)], args.runs, env)),
    ]
    print(f"# loradoc tui start-up ({os.cpu_count()} cpus, median of {args.runs}; goal < 1.5 s process time)")
    print(f"{'what':<36} {'wall s':>7} {'cpu s':>7} {'peak MB':>8}")
    for name, (wall, cpu, peak) in rows:
        print(f"{name:<36} {wall:7.2f} {cpu:7.2f} {peak:8d}")


if __name__ == "__main__":
    main()
