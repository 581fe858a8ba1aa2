"""Two real OS processes record into one registry at the same time: no row is lost, in TOML or in SQLite."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from loradoc.registry import AdapterManifest, BaseRef, PeftInfo, Registry, Revision, load_manifest

N = 20

_WORKER = r"""
import hashlib, sys, time
from pathlib import Path
from loradoc.registry import Registry

db, user, who, n, go = sys.argv[1:]
reg = Registry(Path(db), [], user_dir=Path(user))
reg.sync()
Path(user, f"ready-{who}").touch()
while not Path(go).exists():
    time.sleep(0.002)
for i in range(int(n)):
    cert = {
        "created": f"{who}-{i}", "tool": "worker", "passed": i % 2 == 0,
        "versions": {"peft": f"0.{i}.0", "transformers": f"5.{i}.0"},
        "device": {"type": "cpu", "worker": who},
        "checks": [{"name": "n", "passed": True, "figures": {"i": i, "who": who}}],
    }
    reg.record_certificate(cert, adapter_id="conc/shared")
    reg.record_hub_revision(f"conc/{who}", commit=hashlib.sha1(f"{who}{i}".encode()).hexdigest(), pr=i + 1)
    if who == "b" and i % 5 == 0:
        reg.sync()  # a sync racing the other process's writes
print("done", who)
"""


def _manifest(ident: str) -> AdapterManifest:
    return AdapterManifest(
        id=ident,
        repo_id=ident,
        base=BaseRef("google/gemma-4-E2B-it"),
        current="main",
        revisions=[Revision("main", peft=PeftInfo(type="LORA"))],
    )


def test_two_processes_lose_nothing(tmp_path: Path) -> None:
    db, user, go = tmp_path / "registry.sqlite", tmp_path / "user", tmp_path / "go"
    reg = Registry(db, [], user_dir=user)
    for ident in ("conc/shared", "conc/a", "conc/b"):
        reg.put(_manifest(ident))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db), str(user), who, str(N), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all((user / f"ready-{w}").exists() for w in ("a", "b")) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both start writing at once
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]

    reg.sync()
    shared = reg.show("conc/shared")
    assert isinstance(shared, AdapterManifest)
    created = sorted(c.created for c in shared.current_revision.certificates)
    assert created == sorted(f"{w}-{i}" for w in ("a", "b") for i in range(N))
    assert reg.count_records("conc/shared", "certificate") == 2 * N
    for who in ("a", "b"):
        m = reg.show(f"conc/{who}")
        assert sorted(h.pr for h in m.current_revision.hub) == list(range(1, N + 1))
        assert reg.count_records(f"conc/{who}", "hub") == N
    # the files agree with the index, and a fresh index built from them too
    assert load_manifest(reg.locate("conc/shared")[2]) == shared
    fresh = Registry(tmp_path / "fresh.sqlite", [], user_dir=user)
    assert fresh.show("conc/shared") == shared
    assert fresh.count_records("conc/a", "hub") == N
    assert not fresh.last_sync.problems
    fresh.close()
    reg.close()
