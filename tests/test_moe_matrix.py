"""Mixture-of-experts bases: LoRA on fused expert parameters (peft's ``target_parameters``), judged by real peft.

Tiny random Qwen3-MoE, Mixtral and gpt-oss bases from transformers' own config classes. In transformers 5 all
three keep their experts fused in 3-D parameters (``mlp.experts.gate_up_proj`` / ``down_proj``; gpt-oss stores
them transposed), so there is no per-expert ``nn.Linear`` to target: a LoRA on the experts is peft's
``lora.ParamWrapper`` over those parameters (several on one module nest, saved under ``experts.base_layer``).
Adapters made by real peft:

- ``attn_experts``:  attention projections + both expert parameters;
- ``experts_only``:  ``target_modules=[]``, both expert parameters;
- ``down_only``:     attention + ``mlp.experts.down_proj`` only;
- ``reordered``:     ``attn_experts`` with ``target_parameters`` listed the other way round (peft nests the
                     wrappers in the module's parameter order, not the list's);
- ``noprefix`` / ``wrapper_lm``: ``attn_experts`` without ``base_model.model.`` / under ``model.language_model.``;
- ``no_target_parameters``: ``attn_experts`` with ``target_parameters`` removed from its config (a config
                     re-saved by a peft older than 0.17 loses the field); ``lost_gate_up``: with only
                     ``down_proj`` left in it: repaired by naming the parameters the file has LoRAs for;
- ``dropout``:       ``attn_experts`` with ``lora_dropout`` 0.1 (peft's ParamWrapper refuses it).

doctor (full) and ``doctor --fast`` (static only) must agree with a real ``PeftModel.from_pretrained``.
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
from realload import Truth, load_base, per_variant, truth_of
from safetensors.torch import load_file

from loradoc.diagnose.doctor import diagnose, spec_of
from loradoc.errors import LoradocError
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import apply_plan
from loradoc.repair.passes import build_plan, dry_load_judge

pytestmark = pytest.mark.slow

_COMMON = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
ARCHS = ("qwen3_moe", "mixtral", "gpt_oss")
VARIANTS = (
    "attn_experts",
    "experts_only",
    "down_only",
    "reordered",
    "noprefix",
    "wrapper_lm",
    "no_target_parameters",
    "lost_gate_up",
    "dropout",
)
#: copies of attn_experts with a broken layout or config: what a repair must give back (same tensors, same keys)
SOURCE = {v: "attn_experts" for v in ("noprefix", "wrapper_lm", "no_target_parameters", "lost_gate_up")}
CASES = [(a, v) for a in ARCHS for v in VARIANTS]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
PREFIX = "base_model.model."


def _config(arch: str) -> Any:
    import transformers as T

    if arch == "qwen3_moe":
        return T.Qwen3MoeConfig(**_COMMON, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, head_dim=8)
    if arch == "mixtral":
        return T.MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2)
    return T.GptOssConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2, head_dim=8)


def build_base(arch: str, out: Path) -> Path:
    import transformers

    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(_config(arch)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _make_adapter(base: Path, out: Path, seed: int, **lora: Any) -> Path:
    from peft import LoraConfig, get_peft_model

    model = load_base(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    pm.save_pretrained(str(out))
    data = json.loads((out / "adapter_config.json").read_text())
    data["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    return out


def build_adapters(base: Path, root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    out["attn_experts"] = _make_adapter(base, root / "attn_experts", 21, target_modules=ATTN, target_parameters=EXPERTS)
    out["experts_only"] = _make_adapter(base, root / "experts_only", 22, target_modules=[], target_parameters=EXPERTS)
    out["down_only"] = _make_adapter(base, root / "down_only", 23, target_modules=ATTN, target_parameters=EXPERTS[1:])
    src = out["attn_experts"]
    out["reordered"] = rewrite_adapter(src, root / "reordered", config_update={"target_parameters": EXPERTS[::-1]})
    out["noprefix"] = rewrite_adapter(src, root / "noprefix", rename=lambda k: k.removeprefix(PREFIX))
    out["wrapper_lm"] = rewrite_adapter(
        src, root / "wrapper_lm", rename=lambda k: k.replace(f"{PREFIX}model.", f"{PREFIX}model.language_model.", 1)
    )
    out["no_target_parameters"] = rewrite_adapter(src, root / "no_target_parameters", config_drop=["target_parameters"])
    out["lost_gate_up"] = rewrite_adapter(
        src, root / "lost_gate_up", config_update={"target_parameters": ["mlp.experts.down_proj"]}
    )
    out["dropout"] = rewrite_adapter(src, root / "dropout", config_update={"lora_dropout": 0.1})
    return out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("moe-matrix")
    out = {}
    for arch in ARCHS:
        base = build_base(arch, root / arch / "base")
        out[arch] = (base, build_adapters(base, root / arch))
    return out




@pytest.fixture(scope="module")
def truths(matrix: dict[str, tuple[Path, dict[str, Path]]]) -> Callable[[str, str], Truth]:
    return per_variant(matrix, truth_of)


def _codes(d: Any) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in d.findings]


def _counts(c: Any) -> tuple[Any, ...]:
    return (c.loaded, c.missing, c.unexpected)


@pytest.mark.parametrize("arch", ARCHS)
def test_experts_are_fused_parameters_the_profile_records(
    arch: str, matrix: dict[str, tuple[Path, dict[str, Path]]]
) -> None:
    """No per-expert nn.Linear to target in transformers 5: the profile records the fused 3-D parameters."""
    base, _ = matrix[arch]
    model = load_base(base)
    profile = get_profile(resolve_base(str(base)))
    assert profile.parameters is not None
    for name, module in model.named_modules():
        if name.endswith("mlp.experts"):
            want = [(p, tuple(t.shape)) for p, t in module.named_parameters(recurse=False) if t.dim() in (2, 3)]
            assert [(p, s) for p, s, _ in profile.parameters[name]] == want
            assert not any(isinstance(m, torch.nn.Linear) for m in module.modules())


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_doctor_and_fast_agree_with_a_real_load(
    arch: str, variant: str, matrix: dict[str, tuple[Path, dict[str, Path]]], truths: Callable[[str, str], Truth]
) -> None:
    base, adapters = matrix[arch]
    truth = truths(arch, variant)
    for fast in (False, True):
        d = diagnose(str(adapters[variant]), str(base), fast=fast)
        assert (d.verdict == "healthy") == truth.healthy, (fast, d.verdict, truth, _codes(d))
        if truth.error is None:
            assert _counts(d.peft) == _counts(truth), (fast, d.peft, truth)
        else:
            assert d.peft.error is not None and d.peft.error.split(":")[0] == truth.error.split(":")[0], (
                fast,
                d.peft.error,
                truth.error,
            )
        # the static side knows these parameters: no hedging, no disagreement with peft
        assert not any(f.code in ("params-unchecked", "static-disagrees") for f in d.findings), _codes(d)
    if variant in SOURCE and not truth.healthy:  # a layout: repairable, never broken
        assert d.verdict == "repairable", _codes(d)


@pytest.mark.parametrize(("arch", "variant"), [(a, v) for a in ARCHS for v in SOURCE])
def test_expert_lora_layouts_repair_to_the_adapter_they_came_from(
    arch: str,
    variant: str,
    matrix: dict[str, tuple[Path, dict[str, Path]]],
    truths: Callable[[str, str], Truth],
    tmp_path: Path,
) -> None:
    base, adapters = matrix[arch]
    snap = open_snapshot(str(adapters[variant]))
    src = resolve_base(str(base))
    plan = build_plan(snap, get_profile(src, spec=spec_of(snap)), judge=dry_load_judge(src, spec_of(snap)))
    if truths(arch, variant).healthy:
        # peft's load-time key mapping places these keys (Qwen3-MoE, Mixtral without the prefix): nothing to repair
        assert not plan.renamed() and not plan.dropped() and not plan.changes, plan.passes
        return
    res = apply_plan(plan, tmp_path / "fixed", src)
    assert res.verdict == "healthy", res.report.get("verification")
    fixed = load_file(str(res.out / "adapter_model.safetensors"))
    want = load_file(str(adapters[SOURCE[variant]] / "adapter_model.safetensors"))
    assert set(fixed) == set(want)
    for key, t in want.items():  # bit for bit, at the keys peft saved
        assert torch.equal(fixed[key].view(torch.uint8), t.view(torch.uint8)), key
    after = truth_of(res.out, base)
    assert after.healthy and _counts(after) == (len(fixed), 0, 0), after
    if variant in ("no_target_parameters", "lost_gate_up"):  # the config names every parameter with a LoRA
        cfg = json.loads((res.out / "adapter_config.json").read_text())
        assert {t.rsplit(".", 1)[-1] for t in cfg["target_parameters"]} == {"gate_up_proj", "down_proj"}


def test_a_profile_without_a_parameter_inventory_says_so(
    matrix: dict[str, tuple[Path, dict[str, Path]]], truths: Callable[[str, str], Truth]
) -> None:
    """A profile cached before parameters were recorded: --fast says it did not check the expert LoRAs (and
    predicts that they load); with torch at hand the profile is rebuilt."""
    from loradoc.model.profiles import _cache_path

    base, adapters = matrix["qwen3_moe"]
    prof = get_profile(resolve_base(str(base)))
    old = prof.to_json()
    old["parameters"] = None
    old.pop("biased", None)
    path = _cache_path(prof.config_sha256, prof.transformers_version)
    path.write_text(json.dumps(old))
    fast = diagnose(str(adapters["attn_experts"]), str(base), fast=True)
    note = next(f for f in fast.findings if f.code == "params-unchecked")
    assert note.severity == "info" and "loradoc doctor" in note.message
    truth = truths("qwen3_moe", "attn_experts")
    assert truth.healthy and fast.verdict == "healthy" and _counts(fast.peft) == _counts(truth)
    assert get_profile(resolve_base(str(base))).parameters is not None  # rebuilt
    assert json.loads(path.read_text())["parameters"]


def test_merge_refuses_expert_loras_rather_than_merging_them_wrong(
    matrix: dict[str, tuple[Path, dict[str, Path]]], tmp_path: Path
) -> None:
    from loradoc.convert.merge import merge_adapter

    base, adapters = matrix["mixtral"]
    with pytest.raises(LoradocError, match="target_parameters"):
        merge_adapter(str(adapters["attn_experts"]), str(base), tmp_path / "merged", dtype="f32")
    assert not (tmp_path / "merged").exists()


def test_cli_doctor_fast_maps_expert_loras(
    matrix: dict[str, tuple[Path, dict[str, Path]]],
    truths: Callable[[str, str], Truth],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from loradoc.cli import main

    base, adapters = matrix["gpt_oss"]
    with pytest.raises(SystemExit) as e:
        main(["doctor", str(adapters["attn_experts"]), "--base", str(base), "--fast", "--json"])
    got = json.loads(capsys.readouterr().out)
    truth = truths("gpt_oss", "attn_experts")
    assert truth.healthy and e.value.code == 0 and got["verdict"] == "healthy" and got["prediction"] is True
    assert (got["peft"]["loaded"], got["peft"]["missing"], got["peft"]["unexpected"]) == _counts(truth)


@pytest.mark.parametrize("arch", ARCHS)
def test_check_load_passes_on_expert_loras(
    arch: str, matrix: dict[str, tuple[Path, dict[str, Path]]], truths: Callable[[str, str], Truth]
) -> None:
    from loradoc.verify.checkload import check_load

    base, adapters = matrix[arch]
    assert truths(arch, "attn_experts").healthy
    cert = check_load(str(adapters["attn_experts"]), str(base), device="cpu", write=False)
    assert cert.passed, [c for c in cert.data["checks"] if not c["passed"]]
    assert cert.checks["bit-exact"]["passed"] and cert.checks["effect"]["passed"]
