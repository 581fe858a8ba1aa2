"""Shipped bases keep working offline under every transformers the ranges allow, not only the installed one.

The oldest allowed transformers (the lower bound in pyproject.toml) is installed from the package registry into a
private folder (``pip install --no-deps --target``, cached between runs) and put first on ``sys.path`` of a real
``loradoc`` process, with an empty Hub cache, an empty profile cache and ``HF_HUB_OFFLINE=1``. The newest allowed
version is what constraints.txt pins and CI installs (and ``scripts/test-newest`` takes whatever is newest today)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from hubserver import HubServer, generate_scan_adapters
from packaging.requirements import Requirement

from loradoc.demo.builder import ExampleSet
from loradoc.hub import scan_hub
from loradoc.model.profiles import installed_version

REPO = Path(__file__).resolve().parent.parent
E4B = "google/gemma-4-E4B-it"


def _oldest(dist: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == dist)
    lows = [s.version for s in req.specifier if s.operator == ">="]
    assert lows, f"{dist} has no lower bound in pyproject.toml"
    return lows[0]


def _test_cache() -> Path:
    return Path(os.environ.get("LORADOC_TEST_CACHE") or Path.home() / ".cache" / "loradoc-tests")


@pytest.fixture(scope="module")
def oldest_transformers() -> tuple[str, Path]:
    version = _oldest("transformers")
    site = _test_cache() / f"transformers-{version}"
    site.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(site) + ".lock"):
        if not (site / f"transformers-{version}.dist-info").is_dir():
            tmp = site.with_name(site.name + ".partial")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(tmp)]
                + ["--upgrade", f"transformers=={version}"],
                check=True,
                timeout=600,
            )
            if site.exists():
                import shutil

                shutil.rmtree(site)
            tmp.rename(site)
    return version, site


def _run(args: list[str], tmp: Path, site: Path | None) -> subprocess.CompletedProcess[str]:
    """A real loradoc process, offline, with empty caches (and ``site`` first on sys.path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp / "hf-home"), LORADOC_CACHE_DIR=str(tmp / "cache"))
    env["LORADOC_REGISTRY"] = str(tmp / "registry.sqlite")
    if args[:2] != ["registry", "scan-hub"]:  # scan-hub talks to the loopback Hub, and to nothing else
        env["HF_HUB_OFFLINE"] = "1"
    prefix = f"sys.path.insert(0, {str(site)!r})\n" if site is not None else ""
    code = (
        "import sys\n" + prefix + "import importlib.metadata as m\n"
        "print('transformers', m.version('transformers'), file=sys.stderr)\n"
        "from loradoc.cli import main; main(sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=300
    )


def _summary(report: dict) -> tuple:
    codes = sorted(
        (f["code"], f["severity"], f["count"]) for f in report["findings"] if f["code"] != "profile-version-gap"
    )
    return report["verdict"], codes, report["peft"], report["base"]["layers"], report["base"]["kv_shared_layers"]


def test_fast_doctor_on_a_shipped_base_works_offline_under_the_oldest_transformers(
    example_root: ExampleSet, oldest_transformers: tuple[str, Path], tmp_path: Path
) -> None:
    version, site = oldest_transformers
    adapter = str(example_root.adapters["healthy-gemma4-e4b"])
    args = ["doctor", adapter, "--base", E4B, "--fast", "--json"]
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = _run(args, tmp_path / "old", site)
    new = _run(args, tmp_path / "new", None)
    assert f"transformers {version}" in old.stderr, old.stderr
    assert f"transformers {installed_version('transformers')}" in new.stderr
    assert old.returncode == new.returncode == 1, (old.stderr, new.stderr)  # tiny adapter vs real E4B: broken
    old_report, new_report = json.loads(old.stdout), json.loads(new.stdout)
    assert _summary(old_report) == _summary(new_report)
    assert old_report["base"]["layers"] == 42 and len(old_report["base"]["kv_shared_layers"]) == 18
    gap = [f for f in old_report["findings"] if f["code"] == "profile-version-gap"]
    from loradoc.model.profiles import resolve_base, shipped_profiles

    verified = {v for p in shipped_profiles(resolve_base(E4B)) for v in p.verified_transformers}
    if version in verified:
        assert not gap
    else:  # a prediction, said plainly, with the command that rebuilds it
        assert gap and gap[0]["severity"] == "info" and f"loradoc base profile {E4B}" in gap[0]["message"]


@pytest.fixture()
def small_hub(tmp_path: Path) -> Iterator[HubServer]:
    srv = HubServer(tmp_path / "store")
    generate_scan_adapters(srv.store, E4B, 6, tmp_path / "gen", broken_every=3)
    with srv:
        yield srv


def test_scan_hub_works_with_empty_caches_under_the_oldest_transformers(
    small_hub: HubServer, oldest_transformers: tuple[str, Path], tmp_path: Path
) -> None:
    version, site = oldest_transformers
    proc = _run(["registry", "scan-hub", "--base", E4B, "--endpoint", small_hub.url, "--json"], tmp_path, site)
    assert f"transformers {version}" in proc.stderr
    assert proc.returncode == 0, proc.stderr
    got = {r["repo_id"]: (r["verdict"], r["error"] is None) for r in json.loads(proc.stdout)["rows"]}
    expected = {r.repo_id: (r.verdict, r.error is None) for r in scan_hub(E4B, endpoint=small_hub.url).rows}
    assert got == expected and len(got) == 6
