"""loradoc doctor, judged by real peft on real tiny weights.

Every count doctor reports is compared with what a real ``PeftModel.from_pretrained`` does on the same files
(see realload.py); nothing is hard-coded from a previous run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from builders import rewrite_adapter
from realload import real_peft_load

from loradoc.demo.builder import ADAPTER_SPECS, LM_REGEX, TOWER_EXCLUDE_REGEX, ExampleSet
from loradoc.diagnose.doctor import Diagnosis, diagnose

PREFIX = "base_model.model."


@dataclass(frozen=True)
class Case:
    adapter: Path
    base: Path


def _variants(ex: ExampleSet, root: Path) -> dict[str, Case]:
    a, b = ex.adapters, ex.bases
    text, e4b, e2b = a["healthy-gemma4-text"], a["healthy-gemma4-e4b"], b["tiny-gemma4-e2b"]
    out: dict[str, Case] = {}

    def make(name: str, src: Path, base: Path, **kw: object) -> None:
        out[name] = Case(rewrite_adapter(src, root / name, **kw), base)  # type: ignore[arg-type]

    make("no-peft-prefix", text, b["tiny-gemma4-text"], rename=lambda k: k.removeprefix(PREFIX))
    make(
        "extra-model",
        text,
        b["tiny-gemma4-text"],
        rename=lambda k: k.replace(f"{PREFIX}model.", f"{PREFIX}model.model.", 1),
    )
    make(
        "gemma4-v4-style-wrapper",
        e4b,
        b["tiny-gemma4-e4b"],
        rename=lambda k: k.replace(f"{PREFIX}model.language_model.", f"{PREFIX}language_model.model.", 1),
    )
    make("wrong-base", e4b, e2b)
    cfg = json.loads((text / "adapter_config.json").read_text())
    make("rank-mismatch", text, b["tiny-gemma4-text"], config_update={"r": int(cfg["r"]) // 2})
    make(
        "untrained",
        text,
        b["tiny-gemma4-text"],
        transform=lambda k, t: torch.zeros_like(t) if ".lora_B." in k else t,
    )
    make(
        "nonfinite",
        text,
        b["tiny-gemma4-text"],
        transform=lambda k, t: (
            torch.full_like(t, float("nan")) if k.endswith("layers.0.self_attn.q_proj.lora_A.weight") else t
        ),
    )
    make(
        "exclude-list-footgun",
        a["seed-medical-qlora-e2b"],
        e2b,
        config_update={"exclude_modules": ["vision_tower", "audio_tower"]},
    )
    make(
        "clinical-lm-regex",
        a["seed-clinical-endpoint-extractor"],
        b["tiny-gemma4-e4b"],
        config_update={"target_modules": LM_REGEX, "exclude_modules": TOWER_EXCLUDE_REGEX},
    )
    out["dora"] = Case(
        _peft_adapter(b["tiny-gemma4-text"], root / "dora", ["q_proj", "v_proj"], use_dora=True), b["tiny-gemma4-text"]
    )
    out["embedding-targets"] = Case(
        _peft_adapter(b["tiny-gemma4-text"], root / "embed", ["q_proj", "embed_tokens", "lm_head"]),
        b["tiny-gemma4-text"],
    )
    return out


def _peft_adapter(base: Path, out: Path, targets: list[str], **kw: object) -> Path:
    """A real peft adapter on ``base`` with every adapter tensor randomised (so that it has an effect)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw))  # type: ignore[arg-type]
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.05)
        pm.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cases(example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    out = {n: Case(example_root.adapters[n], example_root.bases[s.base]) for n, s in ADAPTER_SPECS.items()}
    out.update(_variants(example_root, tmp_path_factory.mktemp("variants")))
    return out


@pytest.fixture(scope="module")
def full(cases: dict[str, Case]) -> dict[str, Diagnosis]:
    return {n: diagnose(str(c.adapter), str(c.base)) for n, c in cases.items()}


ALL = [
    *ADAPTER_SPECS,
    "no-peft-prefix",
    "extra-model",
    "gemma4-v4-style-wrapper",
    "wrong-base",
    "rank-mismatch",
    "untrained",
    "nonfinite",
    "exclude-list-footgun",
    "clinical-lm-regex",
    "dora",
    "embedding-targets",
]


@pytest.mark.parametrize("name", ALL)
def test_doctor_counts_equal_a_real_peft_load(name: str, cases: dict[str, Case], full: dict[str, Diagnosis]) -> None:
    case = cases[name]
    real = real_peft_load(case.adapter, case.base)
    got = full[name].peft
    if real.error is not None:
        assert got.error is not None, f"peft raises {real.error} but doctor predicted a load"
        assert got.error.split(":")[0] == real.error.split(":")[0]
        return
    assert got.error is None, got.error
    assert (got.loaded, got.missing, got.unexpected) == (real.loaded, real.missing, real.unexpected)
    assert got.effective == real.effective


def _codes(d: Diagnosis) -> list[tuple[str, str, int, str | None]]:
    return sorted((f.code, f.severity, f.count, f.tower) for f in d.findings if f.code != "static-disagrees")


@pytest.mark.parametrize("name", ALL)
def test_fast_agrees_with_full(name: str, cases: dict[str, Case], full: dict[str, Diagnosis]) -> None:
    case = cases[name]
    fast = diagnose(str(case.adapter), str(case.base), fast=True)
    f = full[name]
    assert not any(x.code == "static-disagrees" for x in f.findings)
    assert fast.verdict == f.verdict
    assert _codes(fast) == _codes(f)
    assert (fast.peft.loaded, fast.peft.missing, fast.peft.unexpected) == (
        f.peft.loaded,
        f.peft.missing,
        f.peft.unexpected,
    )
    assert (fast.peft.error is None) == (f.peft.error is None)


def test_clinical_replica_reports_tower_and_orphans(full: dict[str, Diagnosis]) -> None:
    d = full["seed-clinical-endpoint-extractor"]
    codes = {f.code for f in d.findings}
    assert {"tower-lora", "orphan-keys", "tower-injection"} <= codes
    assert d.verdict == "repairable"
    orphan = next(f for f in d.findings if f.code == "orphan-keys")
    shared = set(d.profile.kv_shared_layers)
    assert orphan.keys and all(any(f"layers.{i}.self_attn." in k for i in shared) for k in orphan.keys)
    towers = {f.tower for f in d.findings if f.code == "tower-lora"}
    assert towers == {"vision", "audio"}


def test_old_gemma3_layout_is_healthy(full: dict[str, Diagnosis]) -> None:
    d = full["gemma3-old-layout"]
    assert d.verdict == "healthy"
    assert d.peft.missing == 0 and d.peft.unexpected == 0 and d.peft.loaded == len(d.snapshot.tensors)


def test_text_only_paths_on_wrapper_are_repairable(full: dict[str, Diagnosis]) -> None:
    d = full["textonly-on-wrapper"]
    assert d.verdict == "repairable"
    assert d.peft.loaded == 0
    mis = next(f for f in d.findings if f.code == "mispathed-keys")
    assert mis.severity == "error" and mis.count == len(d.snapshot.tensors)
    assert "model.language_model.layers" in mis.message


@pytest.mark.parametrize(
    ("name", "verdict", "code"),
    [
        ("no-peft-prefix", "repairable", "mispathed-keys"),
        ("extra-model", "repairable", "mispathed-keys"),
        ("gemma4-v4-style-wrapper", "repairable", "mispathed-keys"),
        ("wrong-base", "broken", "shape-mismatch"),
        ("rank-mismatch", "repairable", "rank-mismatch"),
        ("untrained", "broken", "untrained-lora"),
        ("nonfinite", "broken", "nonfinite-weights"),
        ("exclude-list-footgun", "repairable", "tower-injection"),
        ("clinical-lm-regex", "repairable", "orphan-keys"),
    ],
)
def test_variant_verdicts(name: str, verdict: str, code: str, full: dict[str, Diagnosis]) -> None:
    d = full[name]
    assert d.verdict == verdict
    assert code in {f.code for f in d.findings if f.severity == "error"}


def test_exclude_list_footgun_is_explained(full: dict[str, Diagnosis]) -> None:
    f = next(f for f in full["exclude-list-footgun"].findings if f.code == "tower-injection")
    assert "is a list" in f.message


def test_clinical_with_lm_targets_loads_silently_but_doctor_sees_the_drops(
    full: dict[str, Diagnosis],
) -> None:
    d = full["clinical-lm-regex"]
    assert d.peft.error is None and d.peft.missing == 0 and d.peft.unexpected > 0
    assert {"orphan-keys", "tower-lora"} <= {f.code for f in d.findings if f.severity == "error"}


def test_healthy_fixtures_have_no_error(full: dict[str, Diagnosis]) -> None:
    for name, spec in ADAPTER_SPECS.items():
        if spec.expect == "healthy":
            assert full[name].verdict == "healthy", (name, [f.code for f in full[name].findings])


def test_quantized_base_is_a_warning(full: dict[str, Diagnosis]) -> None:
    d = full["seed-pediatric-support-g4"]
    q = next(f for f in d.findings if f.code == "quantized-base")
    assert q.severity == "warning" and "google/gemma-4-E4B-it" in q.message
