"""Inputs are never modified: outputs that are, contain or lie inside an input are refused (exit 2), existing
outputs are replaced only with --overwrite (atomically), check-load's certificate goes to the registry's data
directory, symlinks out of an adapter are not followed into outputs, and the temps of killed runs are cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loradoc.cli import main
from loradoc.demo.builder import ExampleSet
from loradoc.errors import BadInputError

HEALTHY = "healthy-gemma4-e4b"
REPAIRABLE = "seed-clinical-endpoint-extractor"
BASE = "tiny-gemma4-e4b"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out + err


def _copy(example_root: ExampleSet, tmp_path: Path, adapter: str = HEALTHY) -> tuple[Path, Path]:
    """Private copies: a test that fails must not destroy the session's shared example tree."""
    a = tmp_path / "adapter"
    b = tmp_path / "base"
    shutil.copytree(example_root.adapters[adapter], a)
    shutil.copytree(example_root.bases[BASE], b)
    return a, b


def _state(*roots: Path) -> dict[str, tuple[str, str]]:
    """Every entry under the roots: (kind, sha256 of the content followed through symlinks, or the link target)."""
    out: dict[str, tuple[str, str]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    content = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
                    out[str(p)] = ("link", os.readlink(p) + ":" + content)
                elif p.is_dir():
                    out[str(p)] = ("dir", "")
                else:
                    out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ---------------------------------------------------------------------------------------------------------------
# refused outputs


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("gguf-lora", "base/model.safetensors"),  # replaced the base weights
        ("gguf-lora", "adapter/adapter_config.json"),  # replaced the adapter config
        ("gguf", "base/config.json"),  # replaced the base config
        ("merged", "adapter"),  # the adapter directory itself
        ("merged", "adapter/merged"),  # inside the adapter
        ("merged", "."),  # contains both inputs
    ],
)
def test_convert_refuses_outputs_on_the_inputs(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, target: str
) -> None:
    a, b = _copy(example_root, tmp_path)
    before = _state(a, b)
    out = tmp_path / target
    extra = ["--overwrite"] if out.exists() else []
    code, text = run(["convert", kind, str(a), "--base", str(b), "--out", str(out), *extra], capsys)
    assert code == 2, text
    assert "refusing to write --out" in text and "inputs are never modified" in text and "Traceback" not in text
    assert _state(a, b) == before


def test_check_load_refuses_a_certificate_over_an_input(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _copy(example_root, tmp_path)
    before = _state(a, b)
    for target in (a / "adapter_model.safetensors", b / "config.json", a / "notes.json"):
        code, text = run(["check-load", str(a), "--base", str(b), "--certificate", str(target), "--overwrite"], capsys)
        assert code == 2 and "refusing to write --certificate" in text, text
    assert _state(a, b) == before


def test_existing_gguf_is_replaced_only_with_overwrite(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = example_root.adapters[HEALTHY], example_root.bases[BASE]
    out = tmp_path / "unrelated.gguf"
    out.write_bytes(b"someone else's file")
    code, text = run(["convert", "gguf-lora", str(a), "--base", str(b), "--out", str(out)], capsys)
    assert code == 2 and "already exists" in text and "--overwrite" in text, text
    assert out.read_bytes() == b"someone else's file"
    # a hard link to the old file shows it was replaced (temp + os.replace), not truncated and rewritten in place
    os.link(out, tmp_path / "old-link")
    code, text = run(["convert", "gguf-lora", str(a), "--base", str(b), "--out", str(out), "--overwrite"], capsys)
    assert code == 0, text
    assert (tmp_path / "old-link").read_bytes() == b"someone else's file"
    assert out.read_bytes()[:4] == b"GGUF"


def test_convert_merged_overwrite_exists(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = example_root.adapters[HEALTHY], example_root.bases[BASE]
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, text = run(["convert", "merged", str(a), "--base", str(b), "--out", str(out)], capsys)
    assert code == 2 and "pass --overwrite" in text, text
    code, text = run(["convert", "merged", str(a), "--base", str(b), "--out", str(out), "--overwrite"], capsys)
    assert code == 0, text
    assert not (out / "old.txt").exists() and (out / "loradoc-merge.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# nothing in the inputs changes: an HF-cache-like snapshot (symlinks into blobs/) through every command


def _as_hf_snapshot(src: Path, cache: Path, repo: str) -> Path:
    """``cache/models--org--name/snapshots/<sha>/`` whose files are relative symlinks into ``blobs/``."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / ("ab" * 20)
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, repo_dir / "blobs" / digest)
            (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))
    return snap


def test_no_command_modifies_its_inputs(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORADOC_REGISTRY", str(tmp_path / "data" / "registry.sqlite"))
    cache = tmp_path / "hf-cache"
    a = _as_hf_snapshot(example_root.adapters[HEALTHY], cache, "alice/healthy")
    b = _as_hf_snapshot(example_root.bases[BASE], cache, "google/tiny")
    before = _state(cache)
    assert all(kind == "link" for p, (kind, _) in before.items() if "/snapshots/" in p and not p.endswith("ab" * 20))
    outs = tmp_path / "outs"
    steps = [
        ["doctor", str(a), "--base", str(b)],
        ["repair", str(a), "--base", str(b), "--out", str(outs / "fixed")],
        ["check-load", str(a), "--base", str(b), "--device", "cpu", "--json"],
        ["convert", "merged", str(a), "--base", str(b), "--out", str(outs / "merged")],
        ["convert", "gguf-lora", str(a), "--base", str(b), "--out", str(outs / "a.gguf")],
    ]
    for args in steps:
        code, text = run(args, capsys)
        assert code == 0, (args, text)
        assert _state(cache) == before, f"{args[0]} changed or added something in the inputs"
        if args[0] == "check-load":
            cert_path = Path(json.loads(text)["certificate_path"])
    assert cert_path.is_relative_to(tmp_path / "data" / "certificates")
    # an explicit certificate inside a cache snapshot is refused as well
    code, text = run(
        ["check-load", str(a), "--base", str(b), "--certificate", str(a / "loradoc-certificate.json")], capsys
    )
    assert code == 2 and "Hugging Face cache folder" in text, text
    assert _state(cache) == before


def test_certificate_goes_to_the_registry_store_keyed_by_the_files(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loradoc.verify.checkload import adapter_file_hashes, stored_certificate_path

    a = example_root.adapters[HEALTHY]
    reg = tmp_path / "elsewhere" / "r.sqlite"
    code, text = run(
        ["check-load", str(a), "--base", str(example_root.bases[BASE]), "--device", "cpu", "--registry", str(reg)],
        capsys,
    )
    assert code == 0, text
    expected = stored_certificate_path(adapter_file_hashes(a), reg)
    assert expected.is_file() and expected.is_relative_to(tmp_path / "elsewhere" / "certificates")
    assert f"certificate: {expected}" in text.replace("\n", "")
    assert not (a / "loradoc-certificate.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# symlinks out of the adapter


def test_repair_does_not_follow_a_symlink_out_of_the_adapter(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _copy(example_root, tmp_path, REPAIRABLE)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    (a / "README.md").unlink(missing_ok=True)
    (a / "README.md").symlink_to(secret)
    (a / "notes.md").write_text("inside\n")
    out = tmp_path / "fixed"
    code, text = run(["repair", str(a), "--base", str(b), "--out", str(out), "--verify", "fast"], capsys)
    assert code == 0, text
    assert not (out / "README.md").exists() and (out / "notes.md").read_text() == "inside\n"
    report = json.loads((out / "loradoc-repair.json").read_text())
    assert report["skipped_links"] == [
        {
            "name": "README.md",
            "target": str(secret),
            "reason": "symlink pointing outside the adapter directory: not followed",
        }
    ]
    assert "README.md" not in report["source"]["files"]
    assert "host secret" not in "".join(p.read_text(errors="ignore") for p in out.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# temps of killed runs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_killed_runs_are_removed_by_the_next_run(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = example_root.adapters[HEALTHY], example_root.bases[BASE]
    old = time.time() - 7200
    dead = _dead_pid()
    stale = [tmp_path / f".m.gguf.p{dead}.abc_1234.tmp", tmp_path / ".m.gguf.x9y8z7w6.tmp"]  # ours / older naming
    kept = [
        tmp_path / f".m.gguf.p{os.getpid()}.live1234.tmp",  # a live writer
        tmp_path / f".other.gguf.p{dead}.abcd1234.tmp",  # another target
        tmp_path / ".m.gguf.notes.tmp",  # not our pattern
    ]
    for p in stale + kept:
        p.write_bytes(b"partial")
        os.utime(p, (old, old))
    fresh = tmp_path / f".m.gguf.p{dead}.fresh123.tmp"  # a dead writer, but changed a moment ago: left alone
    fresh.write_bytes(b"partial")
    code, text = run(["convert", "gguf-lora", str(a), "--base", str(b), "--out", str(tmp_path / "m.gguf")], capsys)
    assert code == 0, text
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in [*kept, fresh])


def test_stale_temp_directories(tmp_path: Path) -> None:
    from loradoc.io.outputs import remove_stale_temps

    old = time.time() - 7200
    dead = _dead_pid()
    target = tmp_path / "merged"
    tmp_dir = tmp_path / f".merged.tmp-p{dead}-abcd1234"
    (tmp_dir / "sub").mkdir(parents=True)
    (tmp_dir / "sub" / "model.safetensors").write_bytes(b"x")
    aside = tmp_path / f".merged.old-p{dead}-abcd1234"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    for p in (tmp_dir / "sub" / "model.safetensors", tmp_dir / "sub", tmp_dir, aside / "config.json", aside):
        os.utime(p, (old, old))
    # the target is missing: the moved-aside copy is the only complete one and stays; the temp goes
    assert remove_stale_temps(target) == [tmp_dir]
    assert aside.is_dir()
    target.mkdir()
    assert remove_stale_temps(target) == [aside]
    # a temp dir whose newest file changed just now is being written: kept
    busy = tmp_path / f".merged.tmp-p{dead}-busy1234"
    busy.mkdir()
    (busy / "model.safetensors").write_bytes(b"x")
    os.utime(busy, (old, old))
    assert remove_stale_temps(target) == [] and busy.is_dir()


def test_guard_allows_the_certificate_beside_a_plain_adapter(tmp_path: Path) -> None:
    from loradoc.io.outputs import guard_outputs

    a = tmp_path / "a"
    a.mkdir()
    (a / "adapter_config.json").write_text("{}")
    cert = a / "loradoc-certificate.json"
    guard_outputs([("--certificate", cert)], adapter=a, allow_inside=[cert])
    with pytest.raises(BadInputError, match="lies inside the adapter directory"):
        guard_outputs([("--certificate", a / "other.json")], adapter=a, allow_inside=[cert])
    (a / "link.json").symlink_to(a / "adapter_config.json")
    with pytest.raises(BadInputError, match="it is the adapter file"):
        guard_outputs([("--certificate", a / "link.json")], adapter=a, allow_inside=[a / "link.json"], overwrite=True)
