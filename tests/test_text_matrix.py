"""Doctor, repair, check-load and convert merged on the popular text families, judged by real peft loads.

Tiny random Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 2 (tests/tiny_families.py) and GPT-2 (Conv1D layers,
``fan_in_fan_out``) bases, built from transformers' own config classes, with adapters made by real peft and the
broken layouts people really publish:

- ``healthy``:       LoRA on every attention / MLP projection;
- ``noprefix``:      the healthy file without peft's ``base_model.model.`` prefix;
- ``doubled``:       the prefix written twice;
- ``wrapper_lm``:    keys under a multimodal wrapper's ``model.language_model.`` where the base has ``model.``
                     (GPT-2: ``transformer.``);
- ``wrapper_tf``:    keys under ``transformer.`` where the base has ``model.`` (GPT-2: ``model.`` where it has
                     ``transformer.``);
- ``stale_base``:    the healthy adapter with a foreign ``base_model_name_or_path``;
- ``bias_saved``:    ``bias="lora_only"`` saved by peft; ``bias_unsaved``: the same file without the biases;
                     ``bias_noprefix``: without peft's prefix (LoRAs and biases);
- ``lm_head_saved``: ``modules_to_save=["lm_head"]`` saved by peft; ``mts_unsaved``: the same file without it.

For every adapter the truth is a real ``PeftModel.from_pretrained`` onto the real base, computed here
(tests/realload.py): doctor's verdict is healthy exactly when the real load is (trained parts that are not loaded
count as not healthy, though peft raises nothing), its counts are the real ones, and ``--fast`` agrees or says why
it cannot. Every layout doctor calls repairable is repaired to a clean real load whose tensors are the healthy
adapter's, bit for bit, at its keys; check-load and ``convert merged`` pass on every healthy adapter, the merged
checkpoint equal to peft's ``merge_and_unload``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import rewrite_adapter
from realload import Truth, assert_kept_bit_for_bit, load_base, per_variant, probe_logits, truth_of
from safetensors.torch import load_file
from tiny_families import FAMILIES
from tiny_families import build_base as build_family_base

from loradoc.convert.merge import merge_adapter
from loradoc.diagnose.doctor import diagnose, spec_of
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import REPORT_NAME, apply_plan
from loradoc.repair.passes import build_plan, dry_load_judge
from loradoc.verify.checkload import check_load

pytestmark = pytest.mark.slow

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gpt2")
VARIANTS = (
    "healthy",
    "noprefix",
    "doubled",
    "wrapper_lm",
    "wrapper_tf",
    "stale_base",
    "bias_saved",
    "bias_unsaved",
    "bias_noprefix",
    "lm_head_saved",
    "mts_unsaved",
)
#: renamed copies of the healthy adapter: what a repair must give back
SOURCE = {v: "healthy" for v in ("noprefix", "doubled", "wrapper_lm", "wrapper_tf")} | {"bias_noprefix": "bias_saved"}
CASES = [(a, v) for a in ARCHS for v in VARIANTS]
PREFIX = "base_model.model."
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
FOREIGN_BASE = {"llama": "Qwen/Qwen2.5-0.5B-Instruct"}  # everyone else: a Llama id


def _build_gpt2(out: Path) -> Path:
    import transformers

    torch.manual_seed(7)
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _build_base(arch: str, out: Path) -> Path:
    if arch == "gpt2":
        return _build_gpt2(out)
    overrides: dict[str, Any] = {"vocab_size": 256}
    if arch == "phi3":  # its pad id is past a 256-token vocabulary
        overrides.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return build_family_base(arch, out, **overrides)


def _targets(arch: str) -> list[str]:
    return GPT2_TARGETS if arch == "gpt2" else FAMILIES[arch].targets


def _make_adapter(base: Path, out: Path, arch: str, seed: int, **extra: Any) -> Path:
    """A real peft LoRA on ``base`` with seeded random A and B (and biases / saved modules changed from the
    base's, so that what was trained differs from what the base has)."""
    import transformers
    from peft import LoraConfig, get_peft_model

    cls = json.loads((base / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, cls).from_pretrained(str(base), dtype=torch.float32).eval()
    if arch == "gpt2":
        extra["fan_in_fan_out"] = True
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=_targets(arch), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if ".lora_" in name or "modules_to_save" in name or (extra.get("bias") and name.endswith(".bias")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    pm.save_pretrained(str(out))
    data = json.loads((out / "adapter_config.json").read_text())
    data["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    return out


def _reroot(old: str, new: str) -> Callable[[str], str]:
    return lambda k: PREFIX + new + k[len(PREFIX + old) :] if k.startswith(PREFIX + old) else k


def build_adapters(arch: str, base: Path, root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    out["healthy"] = _make_adapter(base, root / "healthy", arch, seed=11)
    out["noprefix"] = rewrite_adapter(out["healthy"], root / "noprefix", rename=lambda k: k.removeprefix(PREFIX))
    out["doubled"] = rewrite_adapter(out["healthy"], root / "doubled", rename=lambda k: PREFIX + k)
    root_path = "transformer." if arch == "gpt2" else "model."
    wrong_tf = "model." if arch == "gpt2" else "transformer."
    out["wrapper_lm"] = rewrite_adapter(
        out["healthy"], root / "wrapper_lm", rename=_reroot(root_path, "model.language_model.")
    )
    out["wrapper_tf"] = rewrite_adapter(out["healthy"], root / "wrapper_tf", rename=_reroot(root_path, wrong_tf))
    out["stale_base"] = rewrite_adapter(
        out["healthy"],
        root / "stale_base",
        config_update={"base_model_name_or_path": FOREIGN_BASE.get(arch, "meta-llama/Llama-2-7b-hf")},
    )
    out["bias_saved"] = _make_adapter(base, root / "bias_saved", arch, seed=12, bias="lora_only")
    out["bias_unsaved"] = rewrite_adapter(
        out["bias_saved"], root / "bias_unsaved", rename=lambda k: k if ".lora_" in k else None
    )
    out["bias_noprefix"] = rewrite_adapter(
        out["bias_saved"], root / "bias_noprefix", rename=lambda k: k.removeprefix(PREFIX)
    )
    out["lm_head_saved"] = _make_adapter(base, root / "lm_head_saved", arch, seed=13, modules_to_save=["lm_head"])
    out["mts_unsaved"] = rewrite_adapter(
        out["lm_head_saved"], root / "mts_unsaved", rename=lambda k: k if ".lora_" in k else None
    )
    return out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("text-matrix")
    out = {}
    for arch in ARCHS:
        base = _build_base(arch, root / arch / "base")
        out[arch] = (base, build_adapters(arch, base, root / arch))
    return out




@pytest.fixture(scope="module")
def truths(matrix: dict[str, tuple[Path, dict[str, Path]]]) -> Callable[[str, str], Truth]:
    return per_variant(matrix, truth_of)


@pytest.fixture(scope="module")
def doctors(matrix: dict[str, tuple[Path, dict[str, Path]]]) -> Callable[[str, str], Any]:
    """The full doctor of each adapter (run once, read by the checks below)."""
    cache: dict[tuple[str, str], Any] = {}

    def get(arch: str, variant: str) -> Any:
        if (arch, variant) not in cache:
            base, adapters = matrix[arch]
            cache[(arch, variant)] = diagnose(str(adapters[variant]), str(base))
        return cache[(arch, variant)]

    return get


def _codes(d: Any) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in d.findings]


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_doctor_agrees_with_a_real_load(
    arch: str,
    variant: str,
    matrix: dict[str, tuple[Path, dict[str, Path]]],
    truths: Callable[[str, str], Truth],
    doctors: Callable[[str, str], Any],
) -> None:
    base, adapters = matrix[arch]
    truth = truths(arch, variant)
    d = doctors(arch, variant)
    # healthy exactly when the real load is: nothing missing, unexpected or raised, every trained part loaded
    assert (d.verdict == "healthy") == truth.healthy, (d.verdict, truth, _codes(d))
    if truth.error is None:
        assert (d.peft.loaded, d.peft.missing, d.peft.unexpected) == (truth.loaded, truth.missing, truth.unexpected)
    else:
        assert d.peft.error is not None and d.peft.error.split(":")[0] == truth.error.split(":")[0], d.peft.error
    if variant in SOURCE and not truth.healthy:  # a layout: repairable, never broken
        assert d.verdict == "repairable", _codes(d)
    # --fast (static only) predicts the same verdict and counts (unsaved biases included: the profile knows which
    # targeted layers have one)
    fast = diagnose(str(adapters[variant]), str(base), fast=True)
    assert fast.mode == "static"
    assert fast.verdict == d.verdict, (fast.verdict, d.verdict, _codes(fast))
    if truth.error is None:
        assert (fast.peft.loaded, fast.peft.missing, fast.peft.unexpected) == (
            truth.loaded,
            truth.missing,
            truth.unexpected,
        )


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_every_repairable_adapter_repairs_to_a_clean_real_load(
    arch: str,
    variant: str,
    matrix: dict[str, tuple[Path, dict[str, Path]]],
    truths: Callable[[str, str], Truth],
    doctors: Callable[[str, str], Any],
    tmp_path: Path,
) -> None:
    base, adapters = matrix[arch]
    d = doctors(arch, variant)
    snap = open_snapshot(str(adapters[variant]))
    src = resolve_base(str(base))
    plan = build_plan(snap, get_profile(src, spec=spec_of(snap)), judge=dry_load_judge(src, spec_of(snap)))
    if d.verdict != "repairable":
        # healthy: nothing to rename or drop; not healthy and not repairable: a trained part is not in the file
        assert not plan.renamed() and not plan.dropped(), plan.passes
        assert d.verdict == "healthy" or not truths(arch, variant).healthy
        return
    res = apply_plan(plan, tmp_path / "fixed", src)
    assert res.verdict == "healthy", res.report.get("verification")
    report = json.loads((res.out / REPORT_NAME).read_text())
    fixed = assert_kept_bit_for_bit(adapters[variant], res.out, report)
    after = truth_of(res.out, base)
    assert after.healthy and (after.loaded, after.missing, after.unexpected) == (len(fixed), 0, 0), after
    # the tensors are the healthy adapter's, at its keys
    want = load_file(str(adapters[SOURCE.get(variant, "healthy")] / "adapter_model.safetensors"))
    assert set(fixed) == set(want)
    for key, t in want.items():
        assert torch.equal(fixed[key], t), key


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_check_load_and_merge_pass_on_every_healthy_adapter(
    arch: str,
    variant: str,
    matrix: dict[str, tuple[Path, dict[str, Path]]],
    truths: Callable[[str, str], Truth],
    tmp_path: Path,
) -> None:
    from peft import PeftModel

    base, adapters = matrix[arch]
    adapter = adapters[variant]
    if not truths(arch, variant).healthy:
        with pytest.raises(Exception):  # noqa: B017 - merged refuses what doctor does not call healthy
            merge_adapter(str(adapter), str(base), tmp_path / "refused", dtype="f32")
        assert not (tmp_path / "refused").exists()
        return
    cert = check_load(str(adapter), str(base), device="cpu", write=False)
    assert cert.passed, [c for c in cert.data["checks"] if not c["passed"]]
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="f32")
    merged = load_base(tmp_path / "merged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base(base), str(adapter)).eval()
    want = probe_logits(pm)
    with pm.disable_adapter():
        assert float((probe_logits(pm) - want).abs().max()) > 1e-4  # the adapter acts: the comparison can see it
    got = probe_logits(merged)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pm.merge_and_unload().state_dict()
    mine = merged.state_dict()
    assert set(mine) == set(ref) or res.untied, set(mine) ^ set(ref)
    for k in set(mine) & set(ref):
        assert torch.allclose(mine[k], ref[k], rtol=1e-5, atol=1e-6), k
