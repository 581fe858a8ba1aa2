"""Doctor and repair on multimodal bases other than Gemma, judged by real peft loads computed here.

Tiny random Qwen2.5-VL, LLaVA, PaliGemma, Idefics3 and Mistral3 bases (tests/multimodal_bases.py) with adapters
made by real peft: healthy, tower-LoRA, text-only paths, transformers-4.x paths (text model; text model, towers and
projector), no ``base_model.model.`` prefix.
For every adapter: doctor's verdict, its dry-load counts and its static prediction equal a real
``PeftModel.from_pretrained``; every adapter the real load refuses is repaired to a clean real load whose tensors
are those of the adapter it was made from, bit for bit, at that adapter's keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from multimodal_bases import ARCHS, SOURCE, VARIANTS, build_adapters, build_base, expected_verdict
from realload import assert_kept_bit_for_bit, per_variant, real_peft_load
from safetensors.torch import load_file

from loradoc.cli import main
from loradoc.diagnose.doctor import diagnose
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import REPORT_NAME, apply_plan
from loradoc.repair.passes import build_plan

pytestmark = pytest.mark.slow

CASES = [(a, v) for a in ARCHS for v in VARIANTS]
DERIVED = [(a, v) for a, v in CASES if v in SOURCE]  # renamed copies of the healthy or the tower adapter

# The modules peft really wraps in each tower (names as the model has them): towers found from the structure.
TOWER_ROOTS = {
    "qwen2_5_vl": {"model.visual": "vision"},
    "llava": {"model.vision_tower": "vision", "model.multi_modal_projector": "projector"},
    "paligemma": {"model.vision_tower": "vision", "model.multi_modal_projector": "projector"},
    "idefics3": {"model.vision_model": "vision", "model.connector": "projector"},
    "mistral3": {"model.vision_tower": "vision", "model.multi_modal_projector": "projector"},
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("multimodal")
    out = {}
    for name in ARCHS:
        base = build_base(name, root / name / "base")
        out[name] = (base, build_adapters(name, base, root / name))
    return out


@pytest.fixture(scope="module")
def reals(matrix: dict[str, tuple[Path, dict[str, Path]]]) -> Any:
    return per_variant(matrix, real_peft_load)


def _counts(c: Any) -> tuple[Any, ...]:
    return (c.loaded, c.missing, c.unexpected)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_towers_are_found_from_the_model(arch: str, matrix: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    base, _ = matrix[arch]
    profile = get_profile(resolve_base(str(base)))
    assert profile.towers == TOWER_ROOTS[arch]
    # every module peft could wrap in a tower has a tower address; the text model's layers do not collide with it
    for name, info in profile.modules.items():
        inside = any(name.startswith(p + ".") for p in profile.towers)
        if info.kind in ("linear", "conv") and inside:
            assert profile.address_of(name).tower != "language", name
    assert profile.num_layers == 2


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_doctor_agrees_with_a_real_load(
    arch: str, variant: str, matrix: dict[str, tuple[Path, dict[str, Path]]], reals: Any
) -> None:
    base, adapters = matrix[arch]
    real = reals(arch, variant)
    assert real.error is None, real.error
    d = diagnose(str(adapters[variant]), str(base))
    assert d.verdict == expected_verdict(real), [f.message for f in d.findings]
    assert _counts(d.peft) == _counts(real)
    assert d.peft.effective == real.effective
    # the static analysis explains the load, it does not contradict it
    assert _counts(d.static) == _counts(real), [f.message for f in d.findings]
    assert not any(f.code == "static-disagrees" for f in d.findings)
    if variant in ("tower", "tower4x") and d.verdict == "healthy":
        towers = {f.tower for f in d.findings if f.code == "tower-lora"}
        assert towers and towers <= {"vision", "projector"}
        assert all(f.severity != "error" for f in d.findings)


@pytest.mark.parametrize(("arch", "variant"), DERIVED)
def test_every_refused_layout_repairs_to_the_adapter_it_was_made_from(
    arch: str, variant: str, matrix: dict[str, tuple[Path, dict[str, Path]]], reals: Any, tmp_path: Path
) -> None:
    base, adapters = matrix[arch]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapters[variant])), get_profile(src))
    if expected_verdict(reals(arch, variant)) == "healthy":
        # peft loads it as saved (its load-time conversion maps these paths): nothing to repair
        assert not plan.renamed() and not plan.dropped() and not plan.changes, plan.passes
        return
    res = apply_plan(plan, tmp_path / "fixed", src)
    assert res.verdict == "healthy", res.report.get("verification")
    report = json.loads((res.out / REPORT_NAME).read_text())
    fixed = assert_kept_bit_for_bit(adapters[variant], res.out, report)
    after = real_peft_load(res.out, base)
    assert after.error is None and _counts(after) == (len(fixed), 0, 0) and after.effective
    # and each tensor lands on the module it was trained for (not on a tower module of the same shape)
    want = load_file(str(adapters[SOURCE[variant]] / "adapter_model.safetensors"))
    got = _loaded_lora_params(res.out, base)
    assert set(got) == {_param_name(k) for k in want}
    for key, t in want.items():
        assert torch.equal(got[_param_name(key)], t), key


def _param_name(key: str) -> str:
    for stem in ("lora_A", "lora_B"):
        key = key.replace(f".{stem}.weight", f".{stem}.default.weight")
    return key


def _loaded_lora_params(adapter: Path, base: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from realload import load_base

    pm = PeftModel.from_pretrained(load_base(base), str(adapter))
    return {n: p.detach().clone() for n, p in pm.named_parameters() if ".lora_" in n}


def test_cli_repair_reroots_text_paths_on_qwen2_5_vl(
    matrix: dict[str, tuple[Path, dict[str, Path]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, adapters = matrix["qwen2_5_vl"]
    out = tmp_path / "fixed"
    with pytest.raises(SystemExit) as e:
        main(["repair", str(adapters["textpath"]), "--base", str(base), "--out", str(out), "--json"])
    assert e.value.code == 0
    got = json.loads(capsys.readouterr().out)
    assert got["verdict"] == "healthy"
    real = real_peft_load(out, base)
    assert _counts(real) == (len(load_file(str(out / "adapter_model.safetensors"))), 0, 0)


def test_a_cached_format_2_profile_is_rebuilt_when_torch_is_at_hand(
    matrix: dict[str, tuple[Path, dict[str, Path]]],
) -> None:
    """Profiles cached before towers were found from the model knew Qwen2.5-VL's `visual` by no name."""
    from loradoc.model.profiles import _cache_path

    base, _ = matrix["qwen2_5_vl"]
    prof = get_profile(resolve_base(str(base)))
    old = prof.to_json()
    old["format"], old["towers"], old["load_rewrites"] = 2, {}, []
    path = _cache_path(prof.config_sha256, prof.transformers_version)
    path.write_text(json.dumps(old))
    assert get_profile(resolve_base(str(base)), allow_build=False).towers == {}  # offline: read as it is
    assert get_profile(resolve_base(str(base))).towers == {"model.visual": "vision"}  # rebuilt
    assert json.loads(path.read_text())["format"] == 3
