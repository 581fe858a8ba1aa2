"""loradoc repair and check-load, judged against real loads and the source bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from realload import real_peft_load
from safetensors.torch import load_file
from test_doctor import _variants

from loradoc.cli import main
from loradoc.demo.builder import ADAPTER_SPECS, ExampleSet
from loradoc.diagnose.doctor import diagnose
from loradoc.errors import BadInputError
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import CERTIFICATE_NAME, REPORT_NAME, apply_plan
from loradoc.repair.passes import build_plan
from loradoc.verify.checkload import check_load

REPAIRABLE = [
    "textonly-on-wrapper",
    "seed-clinical-endpoint-extractor",
    "seed-medical-qlora-e2b",
    "seed-pediatric-support-g4",
    "no-peft-prefix",
    "extra-model",
    "gemma4-v4-style-wrapper",
    "rank-mismatch",
    "exclude-list-footgun",
    "clinical-lm-regex",
]


def tree_hash(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def cases(example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = {n: (example_root.adapters[n], example_root.bases[s.base]) for n, s in ADAPTER_SPECS.items()}
    for n, c in _variants(example_root, tmp_path_factory.mktemp("variants")).items():
        out[n] = (c.adapter, c.base)
    return out


@pytest.fixture(scope="module")
def repaired(cases: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repaired")
    out: dict[str, Path] = {}
    for name in REPAIRABLE:
        adapter, base = cases[name]
        before = tree_hash(adapter)
        snap = open_snapshot(str(adapter))
        src = resolve_base(str(base))
        plan = build_plan(snap, get_profile(src))
        res = apply_plan(plan, root / name, src)
        assert res.verdict == "healthy", (name, res.report["verification"])
        assert tree_hash(adapter) == before, f"{name}: the input was modified"
        out[name] = res.out
    return out


@pytest.mark.parametrize("name", REPAIRABLE)
def test_repaired_output_loads_cleanly_for_real(
    name: str, cases: dict[str, tuple[Path, Path]], repaired: dict[str, Path]
) -> None:
    adapter, base = cases[name]
    out = repaired[name]
    real = real_peft_load(out, base)
    assert real.error is None, real.error
    n = len(load_file(str(out / "adapter_model.safetensors")))
    assert (real.loaded, real.missing, real.unexpected) == (n, 0, 0)
    assert real.effective
    # doctor agrees with the real load on the output
    d = diagnose(str(out), str(base))
    assert d.verdict == "healthy" and (d.peft.loaded, d.peft.missing, d.peft.unexpected) == (n, 0, 0)


@pytest.mark.parametrize("name", REPAIRABLE)
def test_kept_tensors_are_bit_identical_and_reported(
    name: str, cases: dict[str, tuple[Path, Path]], repaired: dict[str, Path]
) -> None:
    adapter, _ = cases[name]
    out = repaired[name]
    report = json.loads((out / REPORT_NAME).read_text())
    src = load_file(str(adapter / "adapter_model.safetensors"))
    dst = load_file(str(out / "adapter_model.safetensors"))
    kept = {r["key"]: r for r in report["kept"]}
    dropped = {r["key"] for r in report["dropped"]}
    assert set(kept) == set(dst)
    assert {r["source_key"] for r in kept.values()} | dropped == set(src)  # nothing dropped silently
    for key, row in kept.items():
        a, b = src[row["source_key"]], dst[key]
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        assert row["sha256"] == hashlib.sha256(b.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    assert all(r["reason"] for r in report["dropped"])
    files = report["source"]["files"]
    assert (
        files["adapter_model.safetensors"]
        == hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("name", REPAIRABLE)
def test_check_load_passes_on_every_repaired_output(
    name: str, cases: dict[str, tuple[Path, Path]], repaired: dict[str, Path], tmp_path: Path
) -> None:
    _, base = cases[name]
    out = repaired[name]
    cert = check_load(str(out), str(base), device="auto", certificate=tmp_path / "cert.json")
    assert cert.passed, [c for c in cert.data["checks"] if not c["passed"]]
    real = real_peft_load(out, base)
    checks = cert.checks
    assert checks["bit-exact"]["figures"]["identical"] == real.loaded
    assert checks["no-missing"]["figures"]["missing"] == real.missing == 0
    assert checks["effect"]["figures"]["max_abs_logit_delta"] > 0
    data = json.loads((tmp_path / "cert.json").read_text())
    assert data["versions"]["peft"] and data["versions"]["torch"] and data["device"]["type"] in ("cpu", "cuda")
    assert (
        data["adapter"]["files"]["adapter_model.safetensors"]
        == hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
    )


def test_check_load_fails_on_a_broken_adapter(example_root: ExampleSet, tmp_path: Path) -> None:
    cert = check_load(
        str(example_root.adapters["textonly-on-wrapper"]),
        str(example_root.bases["tiny-gemma4-e4b"]),
        certificate=tmp_path / "c.json",
    )
    assert not cert.passed
    failed = {c["name"] for c in cert.data["checks"] if not c["passed"]}
    assert {"no-missing", "no-unexpected", "effect"} <= failed
    real = real_peft_load(example_root.adapters["textonly-on-wrapper"], example_root.bases["tiny-gemma4-e4b"])
    assert cert.checks["no-unexpected"]["figures"]["unexpected"] == real.unexpected
    assert cert.checks["no-missing"]["figures"]["missing"] == real.missing


def test_clinical_keeps_exactly_the_lm_tensors_the_base_has(
    cases: dict[str, tuple[Path, Path]], repaired: dict[str, Path]
) -> None:
    import transformers

    adapter, base = cases["seed-clinical-endpoint-extractor"]
    cfg = json.loads((base / "config.json").read_text())
    model = getattr(transformers, cfg["architectures"][0]).from_pretrained(base)
    lm_linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".language_model." in n}
    src = load_file(str(adapter / "adapter_model.safetensors"))
    expected = {k for k in src if k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] in lm_linears}
    out = load_file(str(repaired["seed-clinical-endpoint-extractor"] / "adapter_model.safetensors"))
    assert set(out) == expected
    report = json.loads((repaired["seed-clinical-endpoint-extractor"] / REPORT_NAME).read_text())
    dropped = {d["key"]: d for d in report["dropped"]}
    assert set(dropped) == set(src) - expected
    reasons = {d["pass"] for d in dropped.values()}
    assert reasons == {"drop-orphans", "drop-tower-loras"}
    cfg_out = json.loads((repaired["seed-clinical-endpoint-extractor"] / "adapter_config.json").read_text())
    assert "vision_tower" in cfg_out["exclude_modules"] and "audio_tower" in cfg_out["exclude_modules"]


def test_plan_writes_nothing_and_lists_every_drop(
    cases: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter, base = cases["seed-clinical-endpoint-extractor"]
    with pytest.raises(SystemExit) as e:
        main(["repair", str(adapter), "--base", str(base), "--out", str(tmp_path / "o"), "--plan", "--json"])
    assert e.value.code == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert not (tmp_path / "o").exists()
    src = load_file(str(adapter / "adapter_model.safetensors"))
    assert plan["kept"] + len(plan["dropped"]) == len(src)
    assert all(d["reason"] and d["pass"] for d in plan["dropped"])
    assert set(plan["passes"]) == {"drop-orphans", "drop-tower-loras", "exclude-towers"}
    assert plan["counts"]["drop-orphans"]["dropped"] == 8


def test_warning_passes_run_only_when_named(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["seed-pediatric-support-g4"]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src))
    assert "full-precision-base" not in plan.passes
    assert plan.config["base_model_name_or_path"] == "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit"
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src), also=["full-precision-base"])
    assert plan.config["base_model_name_or_path"] == "google/gemma-4-E4B-it"
    res = apply_plan(plan, tmp_path / "out", src)
    d = diagnose(str(res.out), str(base))
    assert d.verdict == "healthy" and "quantized-base" not in {f.code for f in d.findings}


def test_tower_loras_that_load_are_dropped_only_on_request(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["seed-medgemma-full-lora"]
    src = resolve_base(str(base))
    default = build_plan(open_snapshot(str(adapter)), get_profile(src))
    assert default.passes == [] and not default.dropped()
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src), also=["drop-tower-loras"])
    assert plan.dropped() and all(a.pass_name == "drop-tower-loras" for a in plan.dropped())
    assert "exclude-towers" in plan.passes  # the 7 names would otherwise re-inject SigLIP q/k/v empty
    res = apply_plan(plan, tmp_path / "out", src)
    assert res.verdict == "healthy"


def test_keep_tower_loras_makes_inner_linear_loras_load(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["seed-clinical-endpoint-extractor"]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src), also=["keep-tower-loras"])
    assert "drop-tower-loras" not in plan.passes
    res = apply_plan(plan, tmp_path / "out", src)
    assert res.verdict == "healthy"
    real = real_peft_load(res.out, base)
    n = len(load_file(str(res.out / "adapter_model.safetensors")))
    assert (real.loaded, real.missing, real.unexpected) == (n, 0, 0)
    assert any(".vision_tower." in k for k in load_file(str(res.out / "adapter_model.safetensors")))


def test_pickle_to_safetensors(example_root: ExampleSet, tmp_path: Path) -> None:
    src_dir = tmp_path / "pickled"
    src_dir.mkdir()
    a = example_root.adapters["healthy-gemma4-text"]
    state = load_file(str(a / "adapter_model.safetensors"))
    torch.save(state, src_dir / "adapter_model.bin")
    (src_dir / "adapter_config.json").write_text((a / "adapter_config.json").read_text())
    base = str(example_root.bases["tiny-gemma4-text"])
    with pytest.raises(BadInputError):
        open_snapshot(str(src_dir))
    with pytest.raises(SystemExit) as e:
        main(
            ["repair", str(src_dir), "--base", base, "--out", str(tmp_path / "out"), "--only", "pickle-to-safetensors"]
        )
    assert e.value.code == 0
    out = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert set(out) == set(state) and all(torch.equal(out[k], state[k]) for k in state)
    assert not (tmp_path / "out" / "adapter_model.bin").exists()


def test_out_must_be_new_and_apart_from_the_input(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["textonly-on-wrapper"]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src))
    with pytest.raises(BadInputError):
        apply_plan(plan, adapter, src)
    with pytest.raises(BadInputError):
        apply_plan(plan, adapter / "inside", src)
    (tmp_path / "exists").mkdir()
    with pytest.raises(BadInputError):
        apply_plan(plan, tmp_path / "exists", src)


def test_unknown_pass_is_a_clear_error(cases: dict[str, tuple[Path, Path]]) -> None:
    adapter, base = cases["textonly-on-wrapper"]
    with pytest.raises(BadInputError, match="unknown repair pass"):
        build_plan(open_snapshot(str(adapter)), get_profile(str(base)), only=["no-such-pass"])


def test_sigkill_mid_write_leaves_no_complete_output(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["seed-clinical-endpoint-extractor"]
    before = tree_hash(adapter)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "loradoc.cli",
        "repair",
        str(adapter),
        "--base",
        str(base),
        "--out",
        str(out),
        "--verify",
        "none",
    ]
    env = {**os.environ, "LORADOC_FAULT_SLOW_WRITE": "0.05"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    partial = None
    while time.time() < deadline:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
        files = [f for t in temps for f in t.rglob("*adapter_model.safetensors*")]
        if files:
            partial = files[0]
            break
        time.sleep(0.01)
    assert partial is not None, "the repair never started writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())
    assert tree_hash(adapter) == before
    # re-running succeeds
    done = subprocess.run(cmd[:-2], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / REPORT_NAME).is_file() and not (out / CERTIFICATE_NAME).exists()


def test_progress_is_reported_and_a_cancel_leaves_nothing(cases: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = cases["textonly-on-wrapper"]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src))
    seen: list[tuple[int, int]] = []

    class Cancelled(Exception):
        pass

    def progress(done: int, total: int, name: str) -> None:
        seen.append((done, total))
        if done == 10:
            raise Cancelled

    with pytest.raises(Cancelled):
        apply_plan(plan, tmp_path / "out", src, progress=progress, verify="none")
    assert seen[-1] == (10, len(plan.kept())) and seen[0][0] == 1
    assert list(tmp_path.iterdir()) == []
