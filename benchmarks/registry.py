"""How fast is the registry with 10,000 adapter manifests?

Generates N adapter manifests (1-2 revisions each, with findings, compat ranges, some certificates and lineage:
a realistic 2-5 KB TOML each) over 40 bases and every status, in a temporary directory, then times:

  * a full sync into a new SQLite index (read + sha256 + tomllib parse + pydantic validation + index every file);
  * a no-change sync (stat only), and one right after the files were written (inside the racy window: every
    file is re-hashed, none re-parsed), and a sync after touching 10 files;
  * queries: list by base, list by status, show, compat (median and max of repeated calls, fresh ids each time);
  * one record_certificate (lock + transaction + atomic TOML rewrite + re-index).

Goals (printed beside each figure): full sync < 10 s, no-change sync < 0.5 s, each query < 50 ms. The "cpu" column
is this process's CPU time (on a machine other jobs load, the full sync's cpu is the figure to compare with the goal).

Usage: python benchmarks/registry.py [--n 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from loradoc.registry import (
    AdapterManifest,
    BaseManifest,
    BaseRef,
    CertificateRecord,
    CheckResult,
    CompatEntry,
    FindingRecord,
    LineageStep,
    PeftInfo,
    ProfileSummary,
    Registry,
    Revision,
    TargetSummary,
    key_fingerprint,
    manifest_to_toml,
)

STATUSES = ["healthy", "repairable", "broken", "repaired", "verified", "unknown"]
NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(i: int, rng: random.Random, bases: list[str]) -> AdapterManifest:
    ident = f"org{i % 500}/adapter-{i:05d}"
    revs = []
    for j in range(rng.choice([1, 1, 2])):
        keys = {
            f"base_model.model.model.language_model.layers.{k}.self_attn.q_proj.lora_A.weight": [16, 2560]
            for k in range(rng.randint(1, 42))
        }
        revs.append(
            Revision(
                label=f"r{j}",
                revision=f"{rng.getrandbits(160):040x}" if rng.random() < 0.7 else "unknown",
                status=rng.choice(STATUSES),
                key_fingerprint=key_fingerprint(keys),
                tensors=len(keys),
                peft=PeftInfo(
                    type="LORA",
                    method="lora",
                    r=16,
                    alpha=rng.choice([16, 32]),
                    dropout=0.05,
                    target_modules=NAMES,
                    exclude_modules=[],
                    peft_version="0.18.1",
                    requires=">=0.14.0",
                ),
                targets=[TargetSummary("language", NAMES, "0-41", len(keys) * 14)],
                findings=[
                    FindingRecord(
                        rng.choice(["tower-lora", "orphan-keys", "missing-keys"]),
                        "error",
                        rng.randint(1, 300),
                        "a finding message of typical length, naming the modules",
                    )
                    for _ in range(rng.randint(0, 3))
                ],
                compat=[
                    CompatEntry(
                        "verified-clean",
                        peft=f"==0.{rng.randint(14, 21)}.0",
                        transformers=f"==5.{rng.randint(5, 23)}.0",
                        evidence="loradoc doctor: real peft dry load, no error finding",
                        source="loradoc doctor 2026-01-01T00:00:00+00:00",
                        recorded="2026-01-01",
                    ),
                    CompatEntry(
                        "known-broken", peft=">=0.18", evidence="Found missing adapter keys", source="a public report"
                    ),
                ][: rng.randint(0, 2)],
                certificates=[
                    CertificateRecord(
                        created="2026-01-02T00:00:00+00:00",
                        passed=True,
                        tool="loradoc 0.1.0",
                        versions={"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
                        device={"type": "cpu", "name": "x86_64", "dtype": "float32"},
                        checks=[CheckResult(n, True, {"value": 1}) for n in ("base-load", "peft-load", "bit-exact")],
                    )
                ][: rng.randint(0, 1)],
            )
        )
    lineage = [LineageStep("r0", ["drop-tower-loras"], "r1", path="/tmp/out", dropped=296)] if len(revs) == 2 else []
    return AdapterManifest(
        id=ident,
        repo_id=ident,
        base=BaseRef(bases[i % len(bases)]),
        revisions=revs,
        current=revs[-1].label,
        architecture="Gemma4ForConditionalGeneration",
        description=f"benchmark adapter {i}",
        lineage=lineage,
    )


def generate(root: Path, n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    bases = [f"bench/base-{b:02d}" for b in range(40)]
    (root / "adapters").mkdir(parents=True)
    for b in bases:
        d = root / "bases" / b.replace("/", "--")
        d.mkdir(parents=True)
        m = BaseManifest(id=b, profile=ProfileSummary(architecture="Gemma4ForConditionalGeneration", num_layers=42))
        (d / "manifest.toml").write_text(manifest_to_toml(m))
    ids = []
    for i in range(n):
        m = make_adapter(i, rng, bases)
        ids.append(m.id)
        (root / "adapters" / f"{m.id.replace('/', '--')}.toml").write_text(manifest_to_toml(m))
    return ids, bases


def age(root: Path, seconds: float = 3600) -> None:
    for p in root.rglob("*.toml"):
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def _cpu() -> float:
    """CPU seconds of this process."""
    return time.process_time()


def timed(fn, runs: int) -> tuple[float, float, float, object]:  # noqa: ANN001
    """median wall, max wall, median CPU seconds, last result."""
    walls, cpus, out = [], [], None
    for k in range(runs):
        c0, t0 = _cpu(), time.perf_counter()
        out = fn(k)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), max(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="loradoc-registry-bench-"))
    man = tmp / "manifests"
    t0 = time.perf_counter()
    ids, bases = generate(man, args.n)
    gen_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in man.rglob("*.toml"))
    rows: list[tuple[str, float, float, float, str, str]] = []  # what, median, max, cpu, goal, note

    def sync_row(what: str, reg: Registry, goal: str = "") -> None:
        med, mx, cpu, rep = timed(lambda k: reg.sync(), 1)
        assert not rep.problems, rep.problems[:3]
        note = f"read {len(rep.read)}, parsed {len(rep.added) + len(rep.updated)}"
        rows.append((what, med, mx, cpu, goal, note))

    # right after writing, every file is inside the racy window: the next sync re-hashes each (parses none)
    reg0 = Registry(tmp / "racy.sqlite", [man], user_dir=tmp / "user0")
    reg0.sync()
    sync_row("no-change sync, files < 2 s old", reg0)
    reg0.close()

    age(man)
    reg = Registry(tmp / "registry.sqlite", [man], user_dir=tmp / "user")
    sync_row(f"full sync, new index ({size / 1e6:.0f} MB)", reg, "< 10 s")
    sync_row("no-change sync (stat only)", reg, "< 0.5 s")
    rng = random.Random(1)
    touched = rng.sample(ids, 10)
    for ident in touched:
        os.utime(man / "adapters" / f"{ident.replace('/', '--')}.toml", None)
    one = man / "adapters" / f"{touched[0].replace('/', '--')}.toml"
    one.write_text(one.read_text().replace("benchmark adapter", "benchmark adapter (edited)"))
    sync_row("sync after touching 10 files, 1 edited", reg)

    runs = 50
    picks = rng.sample(ids, runs)
    queries = [
        ("list --base", lambda k: reg.list(base=bases[k % len(bases)]), "< 50 ms", lambda o: f"{len(o)} rows"),
        (
            "list --status",
            lambda k: reg.list(status=STATUSES[k % len(STATUSES)]),
            "< 50 ms",
            lambda o: f"{len(o)} rows",
        ),
        ("show ID (case-insensitive)", lambda k: reg.show(picks[k].upper()), "< 50 ms", lambda o: ""),
        (
            "compat ID --peft --transformers",
            lambda k: reg.compat(picks[k], peft="0.19.1", transformers="5.7.0"),
            "< 50 ms",
            lambda o: f"last: {o.verdict}",
        ),
        ("compat ID@rev (installed versions)", lambda k: reg.compat(f"{picks[k]}@r0"), "< 50 ms", lambda o: ""),
        ("list (all adapters)", lambda k: reg.list(), "", lambda o: f"{len(o)} rows"),
    ]
    for what, fn, goal, note in queries:
        med, mx, cpu, out = timed(fn, runs if goal else 5)
        rows.append((what, med, mx, cpu, goal, note(out)))
    cert = {
        "created": "2026-02-01T00:00:00+00:00",
        "tool": "bench",
        "passed": True,
        "versions": {"peft": "0.21.2", "transformers": "5.23.0", "torch": "2.13.0"},
        "device": {"type": "cpu"},
        "checks": [{"name": "bit-exact", "passed": True, "figures": {"n": 1}}],
    }
    med, mx, cpu, _ = timed(lambda k: reg.record_certificate({**cert, "created": f"c{k}"}, adapter_id=picks[k]), 20)
    rows.append(("record_certificate", med, mx, cpu, "", "lock + TOML rewrite + fsync + re-index"))
    reg.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# loradoc registry: {args.n} adapter manifests + {len(bases)} bases, generated in {gen_s:.1f} s; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end"
    )
    print(f"{'what':<40} {'median':>9} {'max':>9} {'cpu':>9}  {'goal':<8} note  (cpu: this process only)")
    for what, med, mx, cpu, goal, note in rows:
        print(f"{what:<40} {_fmt(med):>9} {_fmt(mx):>9} {_fmt(cpu):>9}  {goal:<8} {note}")
    print(f"(workdir: {tmp})")


def _fmt(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


if __name__ == "__main__":
    main()
