"""loradoc convert merged: the merged checkpoint, loaded with transformers, must compute what the PeftModel does.

Every comparison is against real peft (``PeftModel.from_pretrained`` onto the real tiny base), on the fixture
adapters and on variants built here with real peft (rslora, rank/alpha patterns, DoRA, embedding LoRA, tied
lm_head, modules_to_save, lora_bias on SigLIP, ensure_weight_tying).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from loradoc.convert.checkpoint import cached_sha256, decode_f32, encode_f32, remember_sha256
from loradoc.convert.merge import MANIFEST_NAME, MergeResult, merge_adapter
from loradoc.convert.shards import DEFAULT_SHARD_SIZE, parse_shard_size, plan_shards, shard_name
from loradoc.demo.builder import ADAPTER_SPECS, LM_REGEX, ExampleSet, rewrite_adapter
from loradoc.diagnose.doctor import diagnose
from loradoc.errors import BadInputError, LoradocError, PickleRefusedError
from loradoc.io.safetensors import read_header
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import apply_plan
from loradoc.repair.passes import build_plan

IDS = torch.tensor([[2, 10, 20, 30, 40, 50, 60, 70]])
FIXTURE_CASES = [
    "healthy-gemma4-e4b",
    "healthy-gemma4-text",
    "healthy-gemma3",
    "gemma3-old-layout",
    "seed-cliniq-gemma4-e2b",
    "seed-medgemma-full-lora",
]
# variant -> (tiny base, LoraConfig kwargs); built with real peft, LoRA weights randomised
PEFT_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rank-alpha-pattern": (
        "tiny-gemma4-text",
        {
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "rank_pattern": {"q_proj": 4, r"layers\.1\.mlp\.down_proj": 2},
            "alpha_pattern": {"o_proj": 64, "up_proj": 3},
        },
    ),
    "dora": ("tiny-gemma4-text", {"target_modules": ["q_proj", "v_proj", "down_proj"], "use_dora": True}),
    "embedding-lora": ("tiny-gemma4-text", {"target_modules": ["embed_tokens", "q_proj"]}),
    "embedding-dora": ("tiny-gemma4-text", {"target_modules": ["embed_tokens", "o_proj"], "use_dora": True}),
    "tied-lm-head-lora": ("tiny-gemma4-text", {"target_modules": ["lm_head", "q_proj"]}),
    "tied-embed-modules-to-save": (
        "tiny-gemma4-text",
        {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]},
    ),
    "tied-embed-ensure-tying": (
        "tiny-gemma4-text",
        {"target_modules": ["embed_tokens", "v_proj"], "ensure_weight_tying": True},
    ),
    "gemma3-tied-lm-head": ("tiny-gemma3", {"target_modules": rf"{LM_REGEX}|lm_head"}),
    "gemma3-siglip-lora-bias": (
        "tiny-gemma3",
        {"target_modules": r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1)", "lora_bias": True, "bias": "all"},
    ),
}
UNTIED = {"embedding-lora", "embedding-dora", "tied-lm-head-lora", "tied-embed-modules-to-save", "gemma3-tied-lm-head"}


# ----------------------------------------------------------------------------------------------------------
# helpers


def tree_hash(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def load_model(d: Path, dtype: torch.dtype = torch.float32) -> Any:
    import transformers

    arch = json.loads((d / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, arch).from_pretrained(str(d), dtype=dtype, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def peft_model(adapter: Path, base: Path) -> Any:
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load_model(base), str(adapter)).eval()


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits[0, -1].float()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def vision_out(model: Any) -> torch.Tensor:
    px = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tower = model.model.vision_tower
    with torch.no_grad():
        return tower(pixel_values=px).last_hidden_state


def gated_merge(adapter: Path, base: Path, out: Path, **kw: Any) -> MergeResult:
    """merge_adapter through the doctor gate where doctor (--fast) calls the adapter healthy. Doctor refuses some
    adapters that real peft loads completely (DoRA's ``lora_magnitude_vector`` keys, the ``base_layer.weight``
    peft saves for targeted embeddings): those skip the gate; the callers compare with the real PeftModel."""
    get_profile(str(base))
    kw["require_healthy"] = diagnose(str(adapter), str(base), fast=True).verdict == "healthy"
    return merge_adapter(str(adapter), str(base), out, **kw)


def _build_peft_variant(base_dir: Path, out_dir: Path, seed: int, lora_kw: dict[str, Any]) -> Path:
    from peft import LoraConfig, get_peft_model

    model = load_model(base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **lora_kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim == 2 else 0.5))
            elif "modules_to_save" in name or (name.endswith(".bias") and p.requires_grad):  # bias="all" too
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def variants(example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("merge-variants")
    b, a = example_root.bases, example_root.adapters
    out: dict[str, tuple[Path, Path]] = {}
    for i, (name, (base, kw)) in enumerate(PEFT_VARIANTS.items()):
        out[name] = (_build_peft_variant(b[base], root / name, 100 + i, kw), b[base])
    text = a["healthy-gemma4-text"]
    out["rslora"] = (rewrite_adapter(text, root / "rslora", config_update={"use_rslora": True}), b["tiny-gemma4-text"])
    # peft resets fan_in_fan_out on nn.Linear (with a warning): the merge must ignore it too
    out["fan-in-fan-out-on-linear"] = (
        rewrite_adapter(text, root / "fifo", config_update={"fan_in_fan_out": True}),
        b["tiny-gemma4-text"],
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# the merged model equals the PeftModel


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_adapters_merge_to_the_peftmodel(name: str, example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters[name], example_root.base_for(name)
    before = tree_hash(adapter), tree_hash(base)
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="f32")
    assert (tree_hash(adapter), tree_hash(base)) == before, "an input was modified"
    merged = load_model(tmp_path / "merged")
    pm = peft_model(adapter, base)
    got, want = logits(merged), logits(pm)
    with pm.disable_adapter():
        assert rel_diff(logits(pm), want) > 1e-2  # the adapter does something the comparison can see
    assert rel_diff(got, want) < 1e-4, name
    assert res.dtype == "F32" and not res.untied
    n_modules = len({k.split(".lora_")[0] for k in read_header(adapter / "adapter_model.safetensors").tensors})
    assert len(res.merged) == n_modules
    if name == "seed-medgemma-full-lora":  # the SigLIP q/k/v LoRAs are merged into the vision tower
        assert {m["tensor"].split(".")[0] for m in res.merged} == {"language_model", "vision_tower"}
        assert torch.allclose(vision_out(merged), vision_out(pm.base_model.model), rtol=1e-4, atol=1e-5)
        with pm.disable_adapter():
            assert not torch.allclose(vision_out(pm.base_model.model), vision_out(merged), atol=1e-3)


@pytest.mark.parametrize("name", [*PEFT_VARIANTS, "rslora", "fan-in-fan-out-on-linear"])
def test_variants_merge_to_the_peftmodel(name: str, variants: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    adapter, base = variants[name]
    res = gated_merge(adapter, base, tmp_path / "merged", dtype="f32")
    merged = load_model(tmp_path / "merged")
    pm = peft_model(adapter, base)
    want = logits(pm)
    assert rel_diff(logits(merged), want) < 1e-4, name
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert res.untied == (name in UNTIED)
    if name in UNTIED:  # the PeftModel changes one end of the tied embeddings only: the output is untied
        assert (
            cfg["tie_word_embeddings"] is False
            and "lm_head.weight" in read_header(tmp_path / "merged" / "model.safetensors").tensors
        )
        assert any("untied" in n for n in res.notes)
        assert merged.lm_head.weight.data_ptr() != merged.get_input_embeddings().weight.data_ptr()
    else:
        assert cfg.get("tie_word_embeddings", True) is not False
    if name == "gemma3-siglip-lora-bias":  # lora_B.bias added to the SigLIP biases; bias="all" replaces them
        assert all(m["lora_bias"] for m in res.merged) and res.merged
        assert {r["via"] for r in res.replaced} == {"base_layer", "bias"}
        assert torch.allclose(vision_out(merged), vision_out(pm.base_model.model), rtol=1e-4, atol=1e-5)
        with pm.disable_adapter():
            assert not torch.allclose(vision_out(pm.base_model.model), vision_out(merged), atol=1e-3)
    if name in ("dora", "embedding-dora"):
        assert any(m["dora"] for m in res.merged)
    if name == "rank-alpha-pattern":
        ranks = {m["module"].removeprefix("model.layers."): (m["r"], m["alpha"]) for m in res.merged}
        assert ranks["0.self_attn.q_proj"] == (4, 16) and ranks["1.mlp.down_proj"] == (2, 16)
        assert ranks["0.self_attn.o_proj"] == (8, 64) and ranks["0.mlp.up_proj"] == (8, 3)


def test_tied_lm_head_lora_differs_from_peft_merge_and_unload(
    variants: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """peft's merge_and_unload adds an lm_head LoRA to the tensor shared with the input embeddings; loradoc keeps
    the PeftModel's semantics instead (and says so)."""
    adapter, base = variants["tied-lm-head-lora"]
    gated_merge(adapter, base, tmp_path / "merged", dtype="f32")
    pm = peft_model(adapter, base)
    want = logits(pm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_merged = logits(pm.merge_and_unload())
    assert rel_diff(peft_merged, want) > 1e-2
    assert rel_diff(logits(load_model(tmp_path / "merged")), want) < 1e-4


def test_gemma4_tower_loras_at_clippable_linear_are_merged(example_root: ExampleSet, tmp_path: Path) -> None:
    """Tower LoRAs on Gemma4ClippableLinear's inner ``.linear`` (kept by repair --also keep-tower-loras) land in
    ``...q_proj.linear.weight``: equal to peft's own merge, tensor by tensor."""
    adapter = example_root.adapters["seed-clinical-endpoint-extractor"]
    base = example_root.bases["tiny-gemma4-e4b"]
    src = resolve_base(str(base))
    plan = build_plan(open_snapshot(str(adapter)), get_profile(src), also=["keep-tower-loras"])
    fixed = apply_plan(plan, tmp_path / "fixed", src, verify="fast").out
    res = merge_adapter(str(fixed), str(base), tmp_path / "merged", dtype="f32")
    towers = [m for m in res.merged if "_tower." in m["tensor"]]
    assert towers and all(m["tensor"].endswith(".linear.weight") for m in towers)
    merged = load_model(tmp_path / "merged").state_dict()
    pm = peft_model(fixed, base)
    assert rel_diff(logits(load_model(tmp_path / "merged")), logits(pm)) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pm.merge_and_unload().state_dict()
    original = load_model(base).state_dict()
    assert set(ref) == set(merged)
    for k in ref:
        assert torch.allclose(merged[k], ref[k], rtol=1e-5, atol=1e-6), k
    changed = {k for k in ref if "_tower." in k and not torch.equal(original[k], merged[k])}
    assert changed == {m["tensor"] for m in towers}


# ----------------------------------------------------------------------------------------------------------
# bf16, shards, the E2B medical seed after repair


def exact_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``b @ a`` as math.fsum of the exact products, rounded to float32: one value on every machine (a float32
    matmul is not: its rounding depends on the BLAS kernel)."""
    prods = (b.double()[:, None, :] * a.double().T[None, :, :]).reshape(-1, b.shape[1])  # exact in float64
    return torch.tensor([math.fsum(p) for p in prods.tolist()], dtype=torch.float64).reshape(b.shape[0], -1).float()


def test_exact_delta_is_the_exactly_rounded_product_whatever_the_blocks() -> None:
    import numpy as np

    from loradoc.convert.delta import ExactDelta

    gen = torch.Generator().manual_seed(3)
    for n, r, m in ((97, 16, 64), (40, 1, 33), (64, 64, 129)):
        b = torch.randn(n, r, generator=gen) * 0.05
        a = torch.randn(r, m, generator=gen) / 8
        b[0], a[:, 0] = 1.0, 0.0  # a zero column and a heavy row: many exact zeros and near-ties to settle
        if r > 1:
            a[0, 1], a[1, 1] = 1e-3, -1e-3 * (1 + 2**-20)  # cancellation
        want = exact_product(b, a).numpy()
        for block in (1, 7, n):
            e = ExactDelta(b.numpy(), a.numpy())
            got = np.concatenate([e.rows(slice(i, min(n, i + block))) for i in range(0, n, block)])
            assert np.array_equal(got, want), (n, r, m, block)


def test_bf16_is_the_f32_merge_rounded_once(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["healthy-gemma4-e4b"], example_root.bases["tiny-gemma4-e4b"]
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="bf16")
    header = read_header(tmp_path / "merged" / "model.safetensors")
    assert {t.dtype for t in header.tensors.values()} == {"BF16"}
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["text_config"].get("dtype", "bfloat16") == "bfloat16"
    pm = peft_model(adapter, base)
    want = logits(pm)
    got = load_model(tmp_path / "merged", torch.bfloat16).state_dict()
    # peft's merge, W + (B @ A) * scale in float32, with B @ A rounded once from its exact value: peft's own
    # float32 B @ A rounds differently per BLAS kernel, and a few of those last bits change the bf16 rounding
    exact: dict[str, torch.Tensor] = {}
    for name, m in pm.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            a, b, s = m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach(), m.scaling["default"]
            w = m.get_base_layer().weight.detach()
            ref_w = w + exact_product(b, a) * s
            # the reference is peft's merge up to the roundings of peft's float32 matmul (gamma_r), scale and add
            bound = (b.shape[1] + 2) * 2.0**-24 * (b.abs() @ a.abs()) * abs(s) * 1.01 + 2.0**-23 * ref_w.abs()
            assert bool(((w + (b @ a) * s) - ref_w).abs().le(bound).all()), name
            exact[name.removeprefix("base_model.model.") + ".weight"] = ref_w
    assert exact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pm.merge_and_unload().state_dict()
    assert set(got) == set(ref) and set(exact) <= set(ref)
    ref.update(exact)
    for k, v in ref.items():  # peft's f32 merge (exact B @ A) rounded to bf16 == loradoc's bf16, bit for bit
        assert torch.equal(got[k], v.to(torch.bfloat16)), k
    assert rel_diff(logits(load_model(tmp_path / "merged")), want) < 0.1
    assert res.timings["total_s"] > 0 and res.to_json()["dtype"] == "BF16"


def test_sharded_output_loads_and_is_indexed(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["gemma3-old-layout"], example_root.bases["tiny-gemma3"]
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="f32", shard_size=300_000)
    out = tmp_path / "merged"
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    by_file: dict[str, set[str]] = {}
    for k, f in index["weight_map"].items():
        by_file.setdefault(f, set()).add(k)
    assert set(by_file) == set(shards)
    total = 0
    for f, names in by_file.items():
        h = read_header(out / f)
        assert set(h.tensors) == names and h.loadable_by_safetensors
        assert sum(t.nbytes for t in h.tensors.values()) <= 300_000 or len(names) == 1
        total += sum(t.nbytes for t in h.tensors.values())
    assert index["metadata"]["total_size"] == total
    merged_model = load_model(out)
    assert rel_diff(logits(merged_model), logits(peft_model(adapter, base))) < 1e-4
    # the index is laid out as transformers' save_pretrained writes one (same metadata, same text layout)
    merged_model.save_pretrained(tmp_path / "hf", max_shard_size=300_000)
    hf_text = (tmp_path / "hf" / "model.safetensors.index.json").read_text()
    hf_index = json.loads(hf_text)
    assert index["metadata"] == hf_index["metadata"]
    assert hf_text == json.dumps(hf_index, indent=2, sort_keys=True) + "\n"
    assert (out / "model.safetensors.index.json").read_text() == json.dumps(index, indent=2, sort_keys=True) + "\n"
    # a size as Hugging Face writes it gives the same shards ("0.3MB" = 300,000 bytes, decimal)
    again_str = merge_adapter(str(adapter), str(base), tmp_path / "str", dtype="f32", shard_size="0.3MB")
    assert [(f["name"], f["sha256"]) for f in again_str.files if f["name"].startswith("model-")] == [
        (f["name"], f["sha256"]) for f in res.files if f["name"].startswith("model-")
    ]
    assert {f["name"] for f in res.files} >= {*shards, "model.safetensors.index.json", "config.json", MANIFEST_NAME}
    # a sharded checkpoint is a base like any other: merging onto it again equals the PeftModel on it
    again = merge_adapter(str(adapter), str(out), tmp_path / "again", dtype="f32")
    assert set(again.manifest["base"]["weight_hashes"]) == set(shards)
    for f in shards:
        assert again.manifest["base"]["files"][f] == hashlib.sha256((out / f).read_bytes()).hexdigest()
    assert rel_diff(logits(load_model(tmp_path / "again")), logits(peft_model(adapter, out))) < 1e-4


def test_shard_sizes_are_read_as_hugging_face_reads_them() -> None:
    """Decimal units through huggingface_hub's own parser (5GB = 5 * 10**9), its 5GB default; bytes; GiB."""
    import inspect

    from huggingface_hub.serialization._base import MAX_SHARD_SIZE, parse_size_to_int

    for text in ("5GB", "500MB", "2.5 GB", "1kb", "3TB", " 10 MB "):
        assert parse_shard_size(text) == parse_size_to_int(text)
    assert DEFAULT_SHARD_SIZE == parse_size_to_int(MAX_SHARD_SIZE) == 5 * 10**9
    assert inspect.signature(merge_adapter).parameters["shard_size"].default == DEFAULT_SHARD_SIZE
    assert parse_shard_size("4GiB") == 4 * 2**30 and parse_shard_size("1234") == 1234 and parse_shard_size(77) == 77
    for bad in ("5G", "", "GB", "abc", "0GB", "-1GB", "infGB", "nanGB", 0, -5, True, 1.5):
        with pytest.raises(BadInputError) as caught:
            parse_shard_size(bad)  # type: ignore[arg-type]
        assert "\n" not in str(caught.value) and "loradoc convert merged" in (caught.value.hint or "")


def test_shard_plan_is_huggingface_hubs_while_no_tensor_exceeds_the_limit() -> None:
    """The plan equals huggingface_hub's split_state_dict_into_shards_factory (sizes per tensor, same names) unless
    a tensor is larger than the limit: then huggingface_hub moves it before the open shard, and loradoc keeps the
    tensors in order (each base file is read once, front to back)."""
    import random

    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    def hub(sizes: list[int], limit: int) -> Any:
        return split_state_dict_into_shards_factory(
            {f"t{i}": n for i, n in enumerate(sizes)},
            get_storage_size=lambda n: n,
            filename_pattern="model{suffix}.safetensors",
            max_shard_size=limit,
        )

    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.randint(0, 100) for _ in range(rng.randint(1, 40))]
        limit = rng.randint(100, 400)
        ours = plan_shards(sizes, limit)
        named = {f"t{i}": shard_name(j, len(ours)) for j, shard in enumerate(ours) for i in shard}
        assert named == hub(sizes, limit).tensor_to_filename
    sizes, limit = [10, 500, 10, 20], 100
    ours = plan_shards(sizes, limit)
    assert [i for shard in ours for i in shard] == [0, 1, 2, 3] and ours == [[0], [1], [2, 3]]
    assert list(hub(sizes, limit).filename_to_tensors.values())[0] == ["t1"]  # the big one first: out of order


def test_medical_seed_converts_to_bf16_after_repair(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["seed-medical-qlora-e2b"], example_root.bases["tiny-gemma4-e2b"]
    with pytest.raises(BadInputError, match="loradoc repair"):
        merge_adapter(str(adapter), str(base), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    src = resolve_base(str(base))
    fixed = apply_plan(build_plan(open_snapshot(str(adapter)), get_profile(src)), tmp_path / "fixed", src).out
    res = merge_adapter(str(fixed), str(base), tmp_path / "merged")
    assert res.dtype == "BF16" and len(res.merged) > 0
    want = logits(peft_model(fixed, base))
    assert rel_diff(logits(load_model(tmp_path / "merged")), want) < 0.1


# ----------------------------------------------------------------------------------------------------------
# refusals, manifest, files


def test_unhealthy_adapter_is_refused_naming_repair(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter = example_root.adapters["textonly-on-wrapper"]
    with pytest.raises(BadInputError) as e:
        merge_adapter(str(adapter), str(example_root.base_for("textonly-on-wrapper")), tmp_path / "o")
    assert "loradoc repair" in str(e.value) and "\n" not in str(e.value)
    assert "mispathed-keys" in e.value.message
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


def test_quantized_base_is_refused_naming_the_original(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter = example_root.adapters["seed-pediatric-support-g4"]  # trained on unsloth/...-unsloth-bnb-4bit
    base = tmp_path / "bnb-base"
    shutil.copytree(example_root.bases["tiny-gemma4-e4b"], base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as e:
        merge_adapter(str(adapter), str(base), tmp_path / "o")
    assert "google/gemma-4-E4B-it" in str(e.value) and "bitsandbytes" in e.value.message
    with pytest.raises(BadInputError, match="google/gemma-4-E4B-it"):
        merge_adapter(str(adapter), "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit", tmp_path / "o")
    with pytest.raises(BadInputError, match="shipped base profile without weights"):
        merge_adapter(str(adapter), "google/gemma-4-E4B-it", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unsupported_adapters_and_arguments_are_refused(example_root: ExampleSet, tmp_path: Path) -> None:
    text, base = example_root.adapters["healthy-gemma4-text"], example_root.bases["tiny-gemma4-text"]
    qa = rewrite_adapter(text, tmp_path / "qalora", config_update={"use_qalora": True})
    with pytest.raises(BadInputError, match="use_qalora"):
        merge_adapter(str(qa), str(base), tmp_path / "o", require_healthy=False)
    with pytest.raises(BadInputError, match="unknown output dtype"):
        merge_adapter(str(text), str(base), tmp_path / "o", dtype="int4")
    with pytest.raises(BadInputError, match="lies inside the base directory"):
        merge_adapter(str(text), str(base), base / "merged")
    (tmp_path / "exists").mkdir()
    with pytest.raises(BadInputError, match="already exists"):
        merge_adapter(str(text), str(base), tmp_path / "exists")
    # an adapter tensor that maps to no base tensor is named (doctor would refuse it first)
    orphan = rewrite_adapter(
        text,
        tmp_path / "orphan",
        rename=lambda k: k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.nope_proj"),
    )
    with pytest.raises(BadInputError, match=r"nope_proj\.lora_A\.weight maps to no tensor"):
        merge_adapter(str(orphan), str(base), tmp_path / "o", require_healthy=False)
    assert not (tmp_path / "o").exists()


def test_manifest_records_sources_and_outputs(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["healthy-gemma3"], example_root.bases["tiny-gemma3"]
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="f32")
    out = tmp_path / "merged"
    man = json.loads((out / MANIFEST_NAME).read_text())

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert man["adapter"]["files"] == {
        p.name: sha(p) for p in adapter.iterdir() if p.is_file() and not p.name.startswith(".")
    }
    assert man["base"]["files"]["model.safetensors"] == sha(base / "model.safetensors")
    assert man["base"]["files"]["config.json"] == sha(base / "config.json")
    assert man["base"]["files"]["tokenizer.json"] == sha(base / "tokenizer.json")
    outputs = {p.name: sha(p) for p in out.iterdir() if p.name != MANIFEST_NAME}
    assert man["outputs"] == outputs
    assert man["dtype"] == "F32" and man["merged_modules"] == [m["module"] for m in res.merged]
    assert len(man["merged_modules"]) == 28
    # side files: the base's tokenizer / generation / processor config, byte for byte; README not copied
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json"):
        assert sha(out / name) == sha(base / name)
    assert res.tokenizer_source == "base" and not (out / "README.md").exists()
    # per-tensor rows: every output tensor (the output is committed to by each file's sha256 above: one hash
    # pass, not per-tensor digests as well)
    header = read_header(out / "model.safetensors")
    assert {r["name"] for r in res.tensors} == set(header.tensors)
    assert {r["op"] for r in res.tensors} >= {"merge"}
    assert json.loads(json.dumps(res.to_json()))["files"]


def test_tokenizer_files_shipped_with_the_adapter_win(example_root: ExampleSet, tmp_path: Path) -> None:
    base = example_root.bases["tiny-gemma4-text"]
    adapter = rewrite_adapter(example_root.adapters["healthy-gemma4-text"], tmp_path / "with-tok")
    tok = json.loads((base / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 4242
    (adapter / "tokenizer_config.json").write_text(json.dumps(tok))
    shutil.copy(base / "tokenizer.json", adapter / "tokenizer.json")
    (adapter / "chat_template.jinja").write_text("{{ messages }}")
    res = merge_adapter(str(adapter), str(base), tmp_path / "merged", dtype="f32")
    assert res.tokenizer_source == "adapter" and any("tokenizer files from the adapter" in n for n in res.notes)
    out = tmp_path / "merged"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 4242
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    assert {f["name"]: f["from"] for f in res.files}["tokenizer_config.json"] == "adapter"


def test_pickle_adapter_merges_only_with_consent(example_root: ExampleSet, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    text, base = example_root.adapters["healthy-gemma4-text"], example_root.bases["tiny-gemma4-text"]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(text / "adapter_config.json", pickled / "adapter_config.json")
    torch.save(load_file(str(text / "adapter_model.safetensors")), pickled / "adapter_model.bin")
    with pytest.raises(PickleRefusedError):
        merge_adapter(str(pickled), str(base), tmp_path / "refused")
    merge_adapter(str(pickled), str(base), tmp_path / "from-pickle", dtype="f32", allow_pickle=True)
    merge_adapter(str(text), str(base), tmp_path / "from-safetensors", dtype="f32")
    a = (tmp_path / "from-pickle" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "from-safetensors" / "model.safetensors").read_bytes()


def test_base_hashes_come_from_the_hf_cache_or_loradoc_cache(example_root: ExampleSet, tmp_path: Path) -> None:
    """A base in a Hugging Face cache is named by sha256 (blobs/<sha256>): nothing to hash. A plain directory is
    hashed once, then the digest is reused while the file's path, size, mtime and inode are unchanged."""
    src = example_root.bases["tiny-gemma4-text"]
    adapter = example_root.adapters["healthy-gemma4-text"]
    blobs, snap = tmp_path / "models--x--y" / "blobs", tmp_path / "models--x--y" / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("."):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copy(f, blobs / digest)
            (snap / f.name).symlink_to(blobs / digest)
    res = merge_adapter(str(adapter), str(snap), tmp_path / "m1", dtype="f32")
    man = res.manifest["base"]
    assert man["weight_hashes"] == {"model.safetensors": "hf-cache-blob-name"}
    assert man["files"]["model.safetensors"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()

    plain = tmp_path / "plain"
    shutil.copytree(src, plain)
    first = merge_adapter(str(adapter), str(plain), tmp_path / "m2", dtype="f32").manifest["base"]
    second = merge_adapter(str(adapter), str(plain), tmp_path / "m3", dtype="f32").manifest["base"]
    assert first["weight_hashes"] == {"model.safetensors": "computed"}
    assert second["weight_hashes"] == {"model.safetensors": "loradoc-cache"}
    assert (
        first["files"] == second["files"] == {**second["files"], "model.safetensors": man["files"]["model.safetensors"]}
    )
    # a changed file is hashed again
    digest = second["files"]["model.safetensors"]
    os.utime(plain / "model.safetensors", ns=(1, 1))
    assert cached_sha256(plain / "model.safetensors") is None
    remember_sha256(plain / "model.safetensors", digest)
    assert cached_sha256(plain / "model.safetensors") == digest
    # hash_base=False: a digest nobody knows yet is not computed
    fresh = tmp_path / "fresh"
    shutil.copytree(src, fresh)
    skipped = merge_adapter(str(adapter), str(fresh), tmp_path / "m4", dtype="f32", hash_base=False).manifest["base"]
    assert "model.safetensors" not in skipped["files"] and skipped["weight_hashes"] == {}


def test_bf16_and_f16_encoding_match_torch() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    a = np.concatenate(
        [
            rng.standard_normal(100_000, dtype=np.float32) * 10.0 ** rng.integers(-30, 30, 100_000),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 65504.0, 65520.0], dtype=np.float32),
            np.array([0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x00008000], dtype=np.uint32).view(np.float32),
        ]
    ).astype(np.float32)
    t = torch.from_numpy(a.copy())
    assert np.array_equal(encode_f32(a, "BF16"), t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    with np.errstate(over="ignore"):
        assert np.array_equal(encode_f32(a, "F16").view(np.uint16), t.to(torch.float16).numpy().view(np.uint16))
    assert encode_f32(a, "F32") is not a and np.array_equal(encode_f32(a, "F32"), a)
    nan = encode_f32(np.array([np.nan, 1.0], dtype=np.float32), "BF16")
    assert nan[0] == 0x7FC0 and nan[1] == 0x3F80
    back = decode_f32("BF16", encode_f32(a, "BF16").tobytes(), a.shape)
    assert np.array_equal(back, t.to(torch.bfloat16).float().numpy())


# ----------------------------------------------------------------------------------------------------------
# crashes


def test_a_failure_half_way_leaves_nothing(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["healthy-gemma4-text"], example_root.bases["tiny-gemma4-text"]
    before = tree_hash(base)
    calls: list[str] = []

    def boom(done: int, total: int, name: str) -> None:
        calls.append(name)
        if len(calls) == 20:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        merge_adapter(str(adapter), str(base), tmp_path / "out", dtype="f32", progress=boom)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    # a truncated base: refused, nothing is left
    cut = tmp_path / "cut-base"
    shutil.copytree(base, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoradocError):
        merge_adapter(str(adapter), str(cut), tmp_path / "out2", dtype="f32")
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cut-base"]
    assert tree_hash(base) == before


def test_sigkill_mid_write_leaves_no_complete_looking_output(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter, base = example_root.adapters["healthy-gemma4-text"], example_root.bases["tiny-gemma4-text"]
    get_profile(str(base))  # cached for the child
    out = tmp_path / "out"
    code = (
        f"from loradoc.convert.merge import merge_adapter; merge_adapter({str(adapter)!r}, {str(base)!r}, {str(out)!r})"
    )
    env = {**os.environ, "LORADOC_FAULT_SLOW_WRITE": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/.model.safetensors.*")):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and all(p.name.startswith(".") for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------
# memory


def test_a_262144x2048_bf16_embedding_merges_in_under_1gb(tmp_path: Path) -> None:
    """An embedding LoRA on a real-vocabulary (262144 x 2048 bf16 = 1 GiB) embed_tokens: peak RSS of the whole
    merge process (wait4) stays far below the tensor size."""
    from safetensors.torch import save_file

    vocab, dim, r = 262144, 2048, 8
    base = tmp_path / "base"
    base.mkdir()
    cfg = {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "hidden_size": dim,
        "hidden_size_per_layer_input": 8,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "layer_types": ["full_attention"],
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    (base / "config.json").write_text(json.dumps(cfg))
    # a bf16 safetensors file written by hand: the 1 GiB tensor is a sparse run of zeros (fast to make)
    name = "model.embed_tokens.weight"
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            name: {"dtype": "BF16", "shape": [vocab, dim], "data_offsets": [0, vocab * dim * 2]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(base / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + vocab * dim * 2)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["embed_tokens"],
             "base_model_name_or_path": "google/gemma-4-E4B-it", "task_type": "CAUSAL_LM"}
        )
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    key = "base_model.model.model.embed_tokens"
    save_file(
        {
            f"{key}.lora_embedding_A": torch.randn(r, vocab, generator=gen),
            f"{key}.lora_embedding_B": torch.randn(dim, r, generator=gen),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    get_profile(str(base))  # the profile is built (torch, meta device) here, not in the measured child
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import json, sys
        from loradoc.convert.merge import merge_adapter
        res = merge_adapter({str(adapter)!r}, {str(base)!r}, {str(out)!r}, dtype="bf16", hash_base=False)
        json.dump({{"merged": len(res.merged), "torch": "torch" in sys.modules}}, sys.stdout)
        """
    )
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (tmp_path / "stderr").read_text()
    info = json.loads((tmp_path / "stdout").read_text())
    peak_mb = usage.ru_maxrss / 1024
    assert info == {"merged": 1, "torch": False}
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    h = read_header(out / "model.safetensors")
    assert h.tensors[name].shape == (vocab, dim) and h.tensors[name].dtype == "BF16"
    # spot-check a row: zeros + (B @ A).T * alpha / r
    import numpy as np

    row = 123457
    with open(out / "model.safetensors", "rb") as fh:
        fh.seek(h.data_start + h.tensors[name].begin + row * dim * 2)
        got = decode_f32("BF16", fh.read(dim * 2), (dim,))
    from safetensors.numpy import load_file

    ad = load_file(str(adapter / "adapter_model.safetensors"))
    want = (ad[f"{key}.lora_embedding_B"] @ ad[f"{key}.lora_embedding_A"][:, row]) * 2.0
    assert np.allclose(got, want, rtol=1e-2, atol=1e-2)


def test_adapter_specs_cover_the_cases() -> None:
    assert set(FIXTURE_CASES) <= set(ADAPTER_SPECS)


def test_a_base_with_nan_weights_is_refused_and_nothing_is_written(example_root: ExampleSet, tmp_path: Path) -> None:
    """A NaN in a base tensor the adapter does not touch (a plain copy) and one it merges into: both refused."""
    from safetensors.torch import load_file, save_file

    src = example_root.bases["tiny-gemma4-text"]
    adapter = example_root.adapters["healthy-gemma4-text"]
    for which in ("model.norm.weight", "model.layers.0.self_attn.q_proj.weight"):
        base = tmp_path / f"base-{which}"
        shutil.copytree(src, base)
        weights = load_file(base / "model.safetensors")
        assert which in weights
        weights[which] = weights[which].clone()
        weights[which].view(-1)[3] = float("nan")
        save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
        out = tmp_path / f"out-{which}"
        with pytest.raises(BadInputError, match=f"{which}: the merged tensor holds NaN"):
            merge_adapter(str(adapter), str(base), out, dtype="bf16")
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".out-{which}")]
