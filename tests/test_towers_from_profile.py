"""Towers from the model, everywhere: convert (GGUF text-only split, mlx-lm) and the runtime checks classify an
adapter's keys by the base profile's towers (found from the model's structure), not by a list of names.

Bases whose tower roots are not in the name fallback: Qwen2.5-VL's ``visual`` and Idefics3's ``connector``
(tests/multimodal_bases.py builds them tiny). The truth is the real model: a key belongs to the text model iff its
module is inside the module ``get_decoder()`` returns (or is the output head).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from multimodal_bases import ARCHS, LM_TARGETS, _make_adapter, build_base

from loradoc.model.layout import parse_key, tower_of

NAMES = ("qwen2_5_vl", "idefics3")
# the text model's own model type (mlx-lm module names; the prefixes mlx-lm maps are the same for both)
MLX_TYPE = {"qwen2_5_vl": "qwen2", "idefics3": "llama"}


@dataclass
class Case:
    name: str
    base: Path
    adapter: Path
    text_keys: set[str]  # by the real model
    tower_keys: set[str]


def _truth(base: Path, adapter: Path) -> tuple[set[str], set[str]]:
    import torch
    import transformers
    from safetensors import safe_open

    arch = json.loads((base / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(str(base), dtype=torch.float32)
    modules = dict(model.named_modules())
    decoder = model.get_decoder()
    dec_path = next(n for n, m in modules.items() if m is decoder)
    head = model.get_output_embeddings()
    head_path = next(n for n, m in modules.items() if m is head)
    text, towers = set(), set()
    with safe_open(str(adapter / "adapter_model.safetensors"), "np") as fh:
        keys = list(fh.keys())
    for k in keys:
        module = parse_key(k).module
        assert module in modules, k  # peft saved the real model's module names
        inside = module == head_path or module.startswith(dec_path + ".")
        (text if inside else towers).add(k)
    return text, towers


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("towers")
    out = {}
    for name in NAMES:
        base = build_base(name, root / name / "base")
        adapter = _make_adapter(base, root / name / "tower", [*LM_TARGETS, *ARCHS[name].tower_targets], seed=12)
        text, towers = _truth(base, adapter)
        out[name] = Case(name, base, adapter, text, towers)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_name_fallback_misses_these_towers(cases: dict[str, Case], name: str) -> None:
    """What the tests below guard against: by names alone, some of these tower keys pass for text keys."""
    c = cases[name]
    assert c.tower_keys and c.text_keys
    by_names = {k for k in c.tower_keys if tower_of(parse_key(k).module) == "language"}
    assert by_names, f"{name}: the name fallback already knows these towers; the test proves nothing"


@pytest.mark.parametrize("name", NAMES)
def test_gguf_split_uses_the_profile_towers(cases: dict[str, Case], name: str) -> None:
    from loradoc.convert.gguf_io import collect_loras
    from loradoc.convert.gguf_names import base_towers
    from loradoc.io.snapshot import open_snapshot

    c = cases[name]
    bt = base_towers(c.base)
    assert bt.source == "profile" and bt.note is None
    loras = collect_loras(open_snapshot(str(c.adapter)), base_towers=bt.towers)
    assert set(loras.tower_keys) == c.tower_keys
    assert {k for p in loras.pairs for k in (p.a_key, p.b_key)} == c.text_keys


def test_gguf_lora_of_qwen2_5_vl_leaves_out_visual(cases: dict[str, Case], tmp_path: Path) -> None:
    """End to end through llama.cpp's converter classes: the ``visual`` LoRAs are left out of the text adapter
    (by names they were taken for text LoRAs, and the conversion failed on the patch embedding's conv)."""
    import gguf

    from loradoc.convert.gguf_lora import convert_gguf_lora

    c = cases["qwen2_5_vl"]
    res = convert_gguf_lora(str(c.adapter), str(c.base), tmp_path / "a.gguf", check_health=False)
    assert set(res.not_included) == c.tower_keys
    assert res.pairs * 2 == len(c.text_keys)
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors]
    assert len(names) == len(c.text_keys) and all(n.startswith("blk.") for n in names), names[:4]


@pytest.mark.parametrize("name", NAMES)
def test_mlx_conversion_leaves_out_the_profile_towers(cases: dict[str, Case], name: str, tmp_path: Path) -> None:
    from safetensors import safe_open

    from loradoc.convert.mlx_lm import MLX_WEIGHTS, peft_to_mlx
    from loradoc.errors import BadInputError

    c = cases[name]
    res = peft_to_mlx(c.adapter, tmp_path / "mlx", model_type=MLX_TYPE[name], base=str(c.base))
    assert set(res.not_included) == c.tower_keys
    with safe_open(str(tmp_path / "mlx" / MLX_WEIGHTS), "np") as fh:
        assert len(list(fh.keys())) == len(c.text_keys)
    assert not any("name only" in n for n in res.notes), res.notes
    # the same adapter with no base to be had: the names decide, and the result says so
    cfg = json.loads((c.adapter / "adapter_config.json").read_text())
    alone = tmp_path / "alone"
    shutil.copytree(c.adapter, alone)
    (alone / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=None)))
    if name == "qwen2_5_vl":
        # by names, the ``visual`` patch embedding's conv LoRA passes for a text linear's: refused
        with pytest.raises(BadInputError, match="2-D LoRA factor"):
            peft_to_mlx(alone, tmp_path / "mlx2", model_type=MLX_TYPE[name])
    else:
        res2 = peft_to_mlx(alone, tmp_path / "mlx2", model_type=MLX_TYPE[name])
        assert any("by name only" in n for n in res2.notes), res2.notes
        assert set(res2.not_included) < c.tower_keys  # names miss the connector: written as text keys


@pytest.mark.parametrize("name", NAMES)
def test_runtimes_classify_towers_by_the_profile(cases: dict[str, Case], name: str) -> None:
    from loradoc.model.profiles import get_profile
    from loradoc.runtimes import check_runtimes

    c = cases[name]
    get_profile(str(c.base))  # runtimes build nothing: a cached profile (`loradoc base profile`) or a shipped one
    rep = check_runtimes(c.adapter, str(c.base))
    assert rep.towers == "profile"
    mlx = next(h for h in rep.get("mlx_lm").hits if h.rule == "mlx_lm.towers")
    assert mlx.message.startswith(f"{len(c.tower_keys)} tower LoRA tensors")
    llama = next(h for h in rep.get("llama_cpp").hits if h.rule == "llama_cpp.towers")
    assert any(k.replace("base_model.model.", "", 1) in llama.message or k in llama.message for k in c.tower_keys)
    for r in rep.results:
        assert not any("by name only" in n for n in r.notes), (r.runtime, r.notes)


def test_runtimes_say_when_names_decide(
    cases: dict[str, Case], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loradoc.runtimes import check_runtimes

    c = cases["qwen2_5_vl"]
    monkeypatch.setenv("LORADOC_CACHE_DIR", str(tmp_path / "empty-cache"))  # no profile of this base anywhere
    rep = check_runtimes(c.adapter, str(c.base))
    assert rep.towers == "names" and rep.to_json()["towers"] == "names"
    for r in rep.results:
        assert any("by name only" in n and "loradoc base profile" in n for n in r.notes), (r.runtime, r.notes)


def test_runtimes_use_the_shipped_profile_of_a_base_id(cases: dict[str, Case], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Only a base id (no directory): the shipped profile of that id gives the towers, with no torch and no cache."""
    from loradoc.model.profiles import shipped_bases
    from loradoc.runtimes import check_runtimes

    monkeypatch.setenv("LORADOC_CACHE_DIR", str(tmp_path / "empty-cache"))
    base_id = next(iter(shipped_bases()))
    ad = tmp_path / "ad"
    shutil.copytree(cases["qwen2_5_vl"].adapter, ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=base_id)))
    assert check_runtimes(ad).towers == "shipped profile"  # the id the adapter's config names
    assert check_runtimes(ad, base_id).towers == "shipped profile"
