"""Base profiles: shipped configs, their provenance, meta-device inventories and the cache."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from loradoc.demo.builder import ExampleSet
from loradoc.errors import LoradocError, UnknownBaseError
from loradoc.model.profiles import (
    BaseProfile,
    BaseSource,
    ModuleInfo,
    build_profile,
    cache_dir,
    get_profile,
    installed_version,
    profile_drift,
    resolve_base,
    shipped_bases,
    shipped_profiles,
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
    assert p.towers == {
        "model.audio_tower": "audio",
        "model.embed_audio": "projector",
        "model.embed_vision": "projector",
        "model.vision_tower": "vision",
    }
    q = p.modules["model.language_model.layers.0.self_attn.q_proj"]
    assert q.kind == "linear" and q.in_features == hidden
    clip = p.modules["model.vision_tower.encoder.layers.0.self_attn.q_proj"]
    assert clip.cls == "Gemma4ClippableLinear" and clip.kind == "clippable"


def test_medgemma_is_gemma3_with_a_siglip_tower() -> None:
    p = get_profile("google/medgemma-4b-it", allow_build=False)
    assert p.architecture == "Gemma3ForConditionalGeneration" and p.num_layers == 34
    assert p.towers == {"model.multi_modal_projector": "projector", "model.vision_tower": "vision"}
    assert p.kv_shared_layers == []
    # peft's load-time conversion of transformers-4.x paths, learned by probing peft, with and without peft's prefix
    assert ("base_model.model.language_model.model", "model.language_model") in p.load_rewrites
    assert ("model.language_model", "model.language_model") in p.load_rewrites
    assert not any(a.startswith("base_model.model.model.layers") for a, _ in p.load_rewrites)


SHIPPED = ["google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "google/medgemma-4b-it"]
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("repo_id", SHIPPED)
def test_shipped_profile_equals_a_fresh_meta_build(repo_id: str) -> None:
    """A build under the installed transformers has the content of the shipped profile nearest to it; a drift in
    the modeling code is reported with its first difference (then: python scripts/refresh_profiles.py)."""
    source = resolve_base(repo_id)
    fresh = build_profile(source)
    nearest = get_profile(source, allow_build=False)
    drift = profile_drift(nearest, fresh)
    assert drift is None, f"{repo_id}: the profile drifted under transformers {fresh.transformers_version}: {drift}"


@pytest.mark.parametrize("repo_id", SHIPPED)
def test_the_pinned_transformers_is_verified_for_every_shipped_profile(repo_id: str) -> None:
    """constraints.txt (what CI installs) names a transformers that every shipped profile was verified under."""
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    pinned = pins["transformers"].strip()
    assert any(pinned in p.verified_transformers for p in shipped_profiles(resolve_base(repo_id)))


def test_profile_drift_names_the_first_differing_module() -> None:
    a = get_profile("google/medgemma-4b-it", allow_build=False)
    assert profile_drift(a, a) is None
    b = BaseProfile.from_json(a.to_json())
    name = "model.language_model.layers.3.mlp.up_proj"
    b.modules[name] = ModuleInfo("Linear", "linear", 1, 2)
    assert profile_drift(a, b) == f"module {name}: {a.modules[name]} became {b.modules[name]}"
    c = BaseProfile.from_json(a.to_json())
    del c.modules[name]
    assert profile_drift(a, c) == f"module {name} is missing from the new build"
    d = BaseProfile.from_json(a.to_json())
    d.kv_shared_layers = [33]
    assert profile_drift(a, d) == "kv_shared_layers: [] became [33]"
    e = BaseProfile.from_json(a.to_json())
    e.transformers_version, e.verified_transformers = "0.0.1", ["0.0.1"]  # versions are not content
    assert profile_drift(a, e) is None


def test_unverified_transformers_uses_the_nearest_shipped_profile_with_a_note(tmp_path: Path) -> None:
    """A shipped base whose profiles were verified under other versions still works offline: the nearest one is
    used, and its note names the gap and the command that rebuilds it."""
    src = resolve_base("google/medgemma-4b-it")
    base_dir = tmp_path / "google--medgemma-4b-it"
    base_dir.mkdir()
    shutil.copy(src.config_path, base_dir / "config.json")
    current = installed_version("transformers")
    prof = get_profile(src, allow_build=False)
    for version in ("5.6.0", "5.30.1"):
        other = BaseProfile.from_json(prof.to_json())
        other.transformers_version, other.verified_transformers = version, [version]
        other.kv_shared_layers = [int(version.split(".")[1])]  # marks which file was picked
        (base_dir / f"profile-transformers-{version}.json").write_text(json.dumps(other.to_json()))
    fake = BaseSource("google/medgemma-4b-it", base_dir / "config.json", base_dir, shipped=True)
    picked = get_profile(fake, allow_build=False)
    minor = int(current.split(".")[1])
    assert picked.kv_shared_layers == [6 if abs(minor - 6) < abs(minor - 30) else 30]
    assert picked.note and current in picked.note and "loradoc base profile google/medgemma-4b-it" in picked.note
    # a verified one is used silently
    verified = BaseProfile.from_json(prof.to_json())
    verified.verified_transformers = [current]
    (base_dir / "profile.json").write_text(json.dumps(verified.to_json()))
    exact = get_profile(fake, allow_build=False)
    assert exact.note is None and exact.kv_shared_layers == []


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


def test_uncached_local_profile_without_build_is_a_clear_error(example_root: ExampleSet, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORADOC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(LoradocError, match="no cached profile"):
        get_profile(str(example_root.bases["tiny-gemma3"]), allow_build=False)


def test_repacks_data_is_well_formed() -> None:
    from loradoc.model.profiles import manifests_dir
    from loradoc.model.repacks import full_precision_original, lookup_repack

    data = tomllib.loads((manifests_dir() / "repacks.toml").read_text())
    assert data["repack"]
    assert full_precision_original("unsloth/gemma-4-e4b-it-unsloth-bnb-4bit") == "google/gemma-4-E4B-it"
    mirror = lookup_repack("unsloth/gemma-4-E2B-it")
    assert mirror is not None and not mirror.quantized and mirror.original == "google/gemma-4-E2B-it"


def test_a_format_2_profile_is_read_with_towers_by_name_and_prefixed_rewrites() -> None:
    """Profiles written before towers were found from the model (format 2) still load."""
    p = get_profile("google/medgemma-4b-it", allow_build=False)
    old = p.to_json()
    old["format"] = 2
    old["towers"] = {"vision": "model.vision_tower", "projector": "model.multi_modal_projector"}
    old["load_rewrites"] = [["language_model.model", "model.language_model"]]
    q = BaseProfile.from_json(old)
    assert q.format == 3 and q.towers == p.towers
    assert q.load_rewrites == [("base_model.model.language_model.model", "model.language_model")]


def test_refresh_keeps_one_profile_per_verified_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drifted build under a version another shipped profile claims takes the claim; a profile left verified
    under no version is removed."""
    from loradoc.model import base_config, profile_versions
    from loradoc.model.base_profile import load_json_profile

    src = resolve_base("google/medgemma-4b-it")
    d = tmp_path / "bases" / "google--medgemma-4b-it"
    d.mkdir(parents=True)
    shutil.copy(src.config_path, d / "config.json")
    fresh = get_profile(src, allow_build=False)
    current = installed_version("transformers")
    stale = BaseProfile.from_json(fresh.to_json())
    stale.kv_shared_layers = [1]  # differs from any fresh build
    stale.transformers_version, stale.verified_transformers = "5.0.0", ["5.0.0", current]
    (d / "profile.json").write_text(json.dumps(stale.to_json()))
    older = BaseProfile.from_json(stale.to_json())
    older.transformers_version, older.verified_transformers = "4.0.0", [current]
    (d / "profile-transformers-4.0.0.json").write_text(json.dumps(older.to_json()))
    monkeypatch.setattr(base_config, "manifests_dir", lambda: tmp_path)
    made = BaseProfile.from_json(fresh.to_json())
    made.transformers_version, made.verified_transformers = current, [current]
    monkeypatch.setattr(profile_versions, "build_profile", lambda source: BaseProfile.from_json(made.to_json()))
    path, drift = profile_versions.refresh_shipped_profile("google/medgemma-4b-it")
    assert path.name == "profile.json" and drift
    names = sorted(p.name for p in d.glob("profile*.json"))
    assert names == ["profile-transformers-5.0.0.json", "profile.json"]
    claims = {p.name: load_json_profile(p).verified_transformers for p in d.glob("profile*.json")}
    assert claims == {"profile-transformers-5.0.0.json": ["5.0.0"], "profile.json": [current]}
