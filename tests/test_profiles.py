"""Base profiles: shipped configs, their provenance, meta-device inventories and the cache."""

from __future__ import annotations

import json
import tomllib

import pytest

from loradoc.errors import LoradocError, UnknownBaseError
from loradoc.fixtures import ExampleSet
from loradoc.profiles import (
    BaseProfile,
    build_profile,
    cache_dir,
    get_profile,
    installed_version,
    resolve_base,
    shipped_bases,
)

KNOWN = {
    # repo id: (layers, hidden, heads, kv heads, kv-shared layers)
    "google/gemma-4-E2B-it": (35, 1536, 8, 1, 20),
    "google/gemma-4-E4B-it": (42, 2560, 8, 2, 18),
}


def test_three_bases_are_shipped_with_provenance() -> None:
    assert set(shipped_bases()) == {"google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "google/medgemma-4b-it"}
    for repo_id in shipped_bases():
        src = resolve_base(repo_id)
        prov = src.provenance or {}
        assert prov["repo_id"] == repo_id
        assert prov["source_kind"] in ("verbatim-copy", "reconstructed")
        assert prov["sources"], repo_id
        if prov["source_kind"] == "reconstructed":
            assert prov["reconstructed_fields"], f"{repo_id}: reconstructed values must be listed"


@pytest.mark.parametrize("repo_id", sorted(KNOWN))
def test_gemma4_profiles_match_the_known_facts(repo_id: str) -> None:
    layers, hidden, heads, kv_heads, shared = KNOWN[repo_id]
    p = get_profile(repo_id, allow_build=False)
    assert p.num_layers == layers
    assert p.text_config["hidden_size"] == hidden
    assert (p.text_config["num_attention_heads"], p.text_config["num_key_value_heads"]) == (heads, kv_heads)
    assert p.kv_shared_layers == list(range(layers - shared, layers))
    assert {"vision", "audio"} <= set(p.towers)
    q = p.modules["model.language_model.layers.0.self_attn.q_proj"]
    assert q.kind == "linear" and q.in_features == hidden
    clip = p.modules["model.vision_tower.encoder.layers.0.self_attn.q_proj"]
    assert clip.cls == "Gemma4ClippableLinear" and clip.kind == "clippable"


def test_medgemma_is_gemma3_with_a_siglip_tower() -> None:
    p = get_profile("google/medgemma-4b-it", allow_build=False)
    assert p.architecture == "Gemma3ForConditionalGeneration" and p.num_layers == 34
    assert "vision" in p.towers and p.kv_shared_layers == []
    # peft's load-time conversion of transformers-4.x paths, learned by probing peft
    assert ("language_model.model", "model.language_model") in p.load_rewrites


@pytest.mark.parametrize("repo_id", ["google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "google/medgemma-4b-it"])
def test_shipped_profile_equals_a_fresh_meta_build(repo_id: str) -> None:
    shipped = json.loads((resolve_base(repo_id).directory / "profile.json").read_text())
    if shipped["transformers_version"] != installed_version("transformers"):
        pytest.skip("shipped profiles were built with another transformers version")
    fresh = build_profile(resolve_base(repo_id)).to_json()
    fresh["name"] = shipped["name"]
    assert fresh == shipped


def test_ids_resolve_case_insensitively_and_unknown_ids_name_the_shipped_ones() -> None:
    assert resolve_base("GOOGLE/GEMMA-4-e4b-IT").name == "google/gemma-4-E4B-it"
    with pytest.raises(UnknownBaseError) as e:
        resolve_base("someone/unknown-base")
    assert "google/medgemma-4b-it" in str(e.value)


def test_profile_cache_is_keyed_by_config_hash_and_transformers_version(example_root: ExampleSet) -> None:
    base = example_root.bases["tiny-gemma4-e4b"]
    prof = get_profile(str(base))
    cached = list((cache_dir() / "profiles").glob(f"{prof.config_sha256[:24]}-transformers-*.json"))
    assert len(cached) == 1 and installed_version("transformers") in cached[0].name
    again = get_profile(str(base), allow_build=False)  # must come from the cache
    assert again.to_json() == prof.to_json()
    assert BaseProfile.from_json(json.loads(cached[0].read_text())).modules == prof.modules


def test_uncached_profile_without_build_is_a_clear_error(example_root: ExampleSet, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORADOC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(LoradocError, match="no cached profile"):
        get_profile(str(example_root.bases["tiny-gemma3"]), allow_build=False)


def test_repacks_data_is_well_formed() -> None:
    from loradoc.profiles import manifests_dir
    from loradoc.repacks import full_precision_original, lookup_repack

    data = tomllib.loads((manifests_dir() / "repacks.toml").read_text())
    assert data["repack"]
    assert full_precision_original("unsloth/gemma-4-e4b-it-unsloth-bnb-4bit") == "google/gemma-4-E4B-it"
    mirror = lookup_repack("unsloth/gemma-4-E2B-it")
    assert mirror is not None and not mirror.quantized and mirror.original == "google/gemma-4-E2B-it"
