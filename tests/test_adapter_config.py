"""adapter_config.json understanding: 214 real configs from public repos, plus hand-written edge cases.

The fixture ``fixtures/real_adapter_configs.jsonl`` is a verbatim copy of the project's shared data file
(one ``{"repo", "path", "commit", "config"}`` object per line). The expected counts below are the ones its
README publishes; everything else is computed by the parser.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from loradoc.errors import LoradocError, MalformedConfigError, MissingFileError, NotPeftConfigError
from loradoc.io.adapter_config import (
    FIELD_INTRODUCED,
    KNOWN_PEFT_TYPES,
    MAX_LIST_ENTRIES,
    MAX_STRING_CHARS,
    AdapterConfig,
    ConfigFieldsError,
    era_from_keys,
    fields_unsupported_by,
    is_local_path,
    load_adapter_config,
    parse_adapter_config,
    required_peft_specifier,
    unknown_field_behaviour,
)

FIXTURE = Path(__file__).parent / "fixtures" / "real_adapter_configs.jsonl"
ROWS: list[dict[str, Any]] = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def _source(row: dict[str, Any]) -> str:
    return f"{row['repo']}@{row['commit'][:8]}:{row['path']}"


def _parse(row: dict[str, Any]) -> AdapterConfig | LoradocError:
    try:
        return parse_adapter_config(row["config"], source=_source(row))
    except LoradocError as exc:
        return exc


PARSED = [(row, _parse(row)) for row in ROWS]
PEFT = [(row, cfg) for row, cfg in PARSED if isinstance(cfg, AdapterConfig)]
FAILED = [(row, exc) for row, exc in PARSED if isinstance(exc, LoradocError)]


def _id(row: dict[str, Any]) -> str:
    return f"{row['repo']}:{row['path']}"


# ---------------------------------------------------------------------------------------------------------
# the fixture itself
# ---------------------------------------------------------------------------------------------------------


def test_fixture_is_complete_and_keeps_provenance() -> None:
    assert len(ROWS) == 214
    for row in ROWS:
        assert set(row) == {"repo", "path", "commit", "config"}
        assert row["repo"].count("/") == 1
        assert len(row["commit"]) == 40 and all(c in "0123456789abcdef" for c in row["commit"])


# ---------------------------------------------------------------------------------------------------------
# every real config: parses, or raises a loradoc error with a one-line message
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_every_real_config_parses_or_raises_a_loradoc_error(row: dict[str, Any]) -> None:
    try:
        cfg = parse_adapter_config(row["config"], source=_source(row))
    except LoradocError as exc:
        text = str(exc)
        assert "\n" not in text
        assert exc.message.startswith(_source(row) + ":")
        assert exc.hint
        return
    assert isinstance(cfg, AdapterConfig)
    assert cfg.raw is row["config"]
    Version(cfg.min_peft_version)  # a real version
    assert required_peft_specifier(cfg).startswith(f">={cfg.min_peft_version}")
    assert all("\n" not in n for n in cfg.notes)


def test_the_seven_non_peft_files_raise_not_peft_config_error() -> None:
    assert len(FAILED) == 7
    for row, exc in FAILED:
        assert isinstance(exc, NotPeftConfigError), _id(row)
        assert "not a PEFT adapter config" in exc.message
        assert "peft_type" not in row["config"]
    kinds = Counter()
    for _row, exc in FAILED:
        msg = exc.message
        if "MLX-LM" in msg:
            kinds["mlx"] += 1
        elif "AdapterHub" in msg:
            kinds["adapterhub"] += 1
        elif "JAX/Tunix" in msg:
            kinds["jax"] += 1
        elif "transformers model config" in msg:
            kinds["model-config"] += 1
        elif "one-key stub" in msg:
            kinds["stub"] += 1
    # README: MLX-LM-style x3, AdapterHub x1, JAX/Tunix x1, a transformers model config x1, a one-key stub x1
    assert kinds == {"mlx": 3, "adapterhub": 1, "jax": 1, "model-config": 1, "stub": 1}


@pytest.mark.parametrize(("row", "cfg"), PEFT, ids=[_id(r) for r, _ in PEFT])
def test_peft_configs_agree_with_their_raw_json(row: dict[str, Any], cfg: AdapterConfig) -> None:
    raw = row["config"]
    assert cfg.peft_type == raw["peft_type"].upper()
    base = raw.get("base_model_name_or_path")
    assert cfg.base_model == (base if base else None)
    if cfg.base_model is not None:
        assert cfg.base_model_is_local_path == is_local_path(cfg.base_model)
    tm = raw.get("target_modules")
    if isinstance(tm, str):
        assert isinstance(cfg.target_modules, str) and cfg.target_modules == tm  # regex stays a string
    else:
        assert cfg.target_modules == tm
    ex = raw.get("exclude_modules")
    assert cfg.exclude_modules == ex
    assert cfg.r == raw.get("r")
    if raw.get("lora_alpha") is not None:
        assert cfg.lora_alpha == float(raw["lora_alpha"])
    assert cfg.task_type == raw.get("task_type")
    assert cfg.peft_version_recorded == raw.get("peft_version")
    assert cfg.use_dora == bool(raw.get("use_dora"))
    assert cfg.use_rslora == bool(raw.get("use_rslora"))
    assert cfg.modules_to_save == raw.get("modules_to_save")
    assert cfg.known_peft_type == (cfg.peft_type in KNOWN_PEFT_TYPES)
    # field_versions covers exactly the present fields introduced after 0.3
    for name, version in cfg.field_versions.items():
        assert name in raw
        assert Version(version) > Version("0.3.0")
        assert Version(cfg.min_peft_version) >= Version(version)


def test_regex_targets_stay_strings() -> None:
    regex = [(row, cfg) for row, cfg in PEFT if isinstance(row["config"].get("target_modules"), str)]
    assert regex, "the fixture has regex-string targets"
    for row, cfg in regex:
        assert cfg.target_modules == row["config"]["target_modules"]
        assert cfg.targets_regex or cfg.targets_all_linear


def test_exclude_modules_needs_peft_0_14() -> None:
    with_ex = [cfg for _row, cfg in PEFT if "exclude_modules" in cfg.raw]
    assert len(with_ex) == 116
    for cfg in with_ex:
        assert Version(cfg.min_peft_version) >= Version("0.14.0")
        assert cfg.field_versions["exclude_modules"] == "0.14.0"
        assert "exclude_modules" in fields_unsupported_by(cfg, "0.13.0")
        assert "exclude_modules" not in fields_unsupported_by(cfg, "0.14.0")
        assert required_peft_specifier(cfg).startswith(">=0.14") or Version(cfg.min_peft_version) > Version("0.14")


def test_configs_written_by_recent_peft_load_in_the_installed_line() -> None:
    """Configs that recorded peft_version have nothing a release >= their own version lacks."""
    for _row, cfg in PEFT:
        if cfg.peft_version_recorded and cfg.known_peft_type and not cfg.unknown_fields:
            assert fields_unsupported_by(cfg, "0.21.2") == [], cfg.source
            assert Version(cfg.min_peft_version) <= Version(cfg.peft_version_recorded.partition("@")[0])


# ---------------------------------------------------------------------------------------------------------
# the README's published counts, recomputed by the parser
# ---------------------------------------------------------------------------------------------------------


def test_readme_counts_by_peft_type() -> None:
    counts = Counter(cfg.peft_type for _row, cfg in PEFT)
    assert counts == {
        "LORA": 191, "PROMPT_TUNING": 3, "IA3": 2, "PREFIX_TUNING": 2, "ADALORA": 1, "LOHA": 1, "LOKR": 1,
        "OFT": 1, "VERA": 1, "OSF": 1, "P_TUNING": 1, "TRAINABLE_TOKENS": 1, "DIAG": 1,
    }  # fmt: skip
    unknown = [cfg.peft_type for _row, cfg in PEFT if not cfg.known_peft_type]
    assert unknown == ["DIAG"]
    assert len(PEFT) == 207 and len(FAILED) == 7


def test_readme_counts_by_peft_version_and_era() -> None:
    recorded = Counter(cfg.peft_version_recorded for _row, cfg in PEFT if cfg.peft_version_recorded)
    assert recorded == {"0.18.0": 11, "0.18.1": 16, "0.19.0": 1, "0.19.1": 17, "0.20.0": 2}
    for _row, cfg in PEFT:
        if cfg.peft_version_recorded:
            assert cfg.era == cfg.peft_version_recorded
    unrecorded = [cfg for _row, cfg in PEFT if not cfg.peft_version_recorded]
    assert len(unrecorded) == 160
    # The README sorted files "by their key sets", i.e. with the LoRA field table for every type.
    by_keys = Counter(era_from_keys(set(cfg.raw), "LORA") for cfg in unrecorded)
    assert by_keys == {"<=0.2": 8, "0.3-0.5": 30, "0.6-0.9": 18, "0.10-0.13": 34, "0.14-0.17": 70}
    # For LoRA files the type-aware era is that same key-set era.
    for cfg in unrecorded:
        if cfg.peft_type == "LORA":
            assert cfg.era == era_from_keys(set(cfg.raw), "LORA")


def test_readme_counts_by_task_type() -> None:
    counts = Counter(cfg.task_type or "null/absent" for _row, cfg in PEFT)
    assert counts == {"CAUSAL_LM": 153, "null/absent": 31, "SEQ_CLS": 12, "SEQ_2_SEQ_LM": 9, "TOKEN_CLS": 2}


def test_pre_0_3_configs_are_flagged() -> None:
    old = [cfg for _row, cfg in PEFT if cfg.era == "<=0.2"]
    assert len(old) == 8
    for cfg in old:
        assert set(cfg.removed_fields) <= {"enable_lora", "merge_weights"}
        assert cfg.removed_fields
        if cfg.raw.get("enable_lora"):  # a per-slice mask peft >= 0.3 cannot honour
            assert "enable_lora" in fields_unsupported_by(cfg, "0.21.2")
            assert required_peft_specifier(cfg).endswith(",<0.3.0")


# ---------------------------------------------------------------------------------------------------------
# the version table
# ---------------------------------------------------------------------------------------------------------


def test_field_table_spot_checks() -> None:
    expected = {
        "init_lora_weights": "0.3.0", "layers_to_transform": "0.4.0", "rank_pattern": "0.6.0",
        "loftq_config": "0.7.0", "use_rslora": "0.8.0", "use_dora": "0.9.0", "layer_replication": "0.10.0",
        "exclude_modules": "0.14.0", "lora_bias": "0.14.0", "eva_config": "0.14.0", "corda_config": "0.15.0",
        "trainable_token_indices": "0.15.0", "use_qalora": "0.16.0", "qalora_group_size": "0.16.0",
        "target_parameters": "0.17.0", "alora_invocation_tokens": "0.18.0", "arrow_config": "0.18.0",
        "ensure_weight_tying": "0.18.0", "peft_version": "0.18.0", "lora_ga_config": "0.19.0",
        "use_bdlora": "0.19.0", "velora_config": "0.20.0", "monteclora_config": "0.20.0",
        "kasa_config": "0.21.0",
    }  # fmt: skip
    for name, version in expected.items():
        assert FIELD_INTRODUCED[name] == version, name


def test_tables_match_the_installed_peft() -> None:
    """Drift guard: the hard-coded facts equal what the installed peft 0.21.x really has."""
    peft = pytest.importorskip("peft")
    if not peft.__version__.startswith("0.21."):
        pytest.skip(f"tables describe peft 0.21; installed {peft.__version__}")
    import dataclasses

    from peft.utils import PeftType

    from loradoc.io import peft_facts as ac

    assert {p.value for p in PeftType} == set(KNOWN_PEFT_TYPES)
    classes = {
        "LORA": peft.LoraConfig, "ADALORA": peft.AdaLoraConfig, "IA3": peft.IA3Config,
        "LOHA": peft.LoHaConfig, "LOKR": peft.LoKrConfig, "OFT": peft.OFTConfig, "BOFT": peft.BOFTConfig,
        "VERA": peft.VeraConfig,
        "PROMPT_TUNING": peft.PromptTuningConfig, "PREFIX_TUNING": peft.PrefixTuningConfig,
        "P_TUNING": peft.PromptEncoderConfig, "TRAINABLE_TOKENS": peft.TrainableTokensConfig,
        "OSF": peft.OSFConfig,
    }  # fmt: skip
    assert set(classes) == set(ac.TYPE_INTRODUCED)
    for peft_type, cls in classes.items():
        actual = {f.name for f in dataclasses.fields(cls)}
        removed = set(ac.FIELDS_REMOVED.get(peft_type, {}))
        assert set(ac.TYPE_INTRODUCED[peft_type]) - removed == actual, peft_type
    common = {f.name for f in dataclasses.fields(peft.PeftConfig)}
    assert set(ac.COMMON_INTRODUCED) == common


def test_unknown_fields_are_what_the_installed_peft_would_drop() -> None:
    peft = pytest.importorskip("peft")
    if not peft.__version__.startswith("0.21."):
        pytest.skip("tables describe peft 0.21")
    import inspect

    params = set(inspect.signature(peft.LoraConfig.__init__).parameters) - {"self"}
    for _row, cfg in PEFT:
        if cfg.peft_type != "LORA":
            continue
        dropped = set(cfg.raw) - params
        assert set(cfg.unknown_fields) | set(cfg.removed_fields) == dropped, cfg.source
        listed = set(fields_unsupported_by(cfg, peft.__version__))
        assert listed <= dropped


# ---------------------------------------------------------------------------------------------------------
# fields_unsupported_by / behaviour of old peft
# ---------------------------------------------------------------------------------------------------------


def _lora(**extra: Any) -> AdapterConfig:
    d: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": "google/gemma-3-270m",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }
    d.update(extra)
    return parse_adapter_config(d, source="test.json")


def test_unknown_field_behaviour_by_release() -> None:
    assert unknown_field_behaviour("0.5.0") == "ignored"
    assert unknown_field_behaviour("0.6.0") == "type_error"
    assert unknown_field_behaviour("0.13.2") == "type_error"
    assert unknown_field_behaviour("0.14.0") == "dropped_with_warning"
    assert unknown_field_behaviour("0.21.2") == "dropped_with_warning"


def test_fields_unsupported_by_respects_defaults_only_where_peft_drops_quietly() -> None:
    cfg = _lora(use_dora=False, lora_bias=False, exclude_modules=None, peft_version="0.18.0")
    # 0.6 - 0.13 raise TypeError for any unknown key, whatever its value
    assert fields_unsupported_by(cfg, "0.13.0") == ["lora_bias", "exclude_modules", "peft_version"]
    assert fields_unsupported_by(cfg, "0.8.0") == ["use_dora", "lora_bias", "exclude_modules", "peft_version"]
    # >= 0.14 drops unknown keys with a warning: only non-default values matter
    assert fields_unsupported_by(cfg, "0.17.0") == []
    dora = _lora(use_dora=True, target_parameters=["mlp.experts.gate_up_proj"])
    assert fields_unsupported_by(dora, "0.16.0") == ["target_parameters"]
    assert fields_unsupported_by(dora, "0.5.0") == ["use_dora", "target_parameters"]
    assert fields_unsupported_by(dora, "0.17.0") == []
    assert fields_unsupported_by(dora, "0.17.0.dev0@abc123") == []
    assert required_peft_specifier(dora) == ">=0.17.0"


def test_fields_unsupported_by_unknown_and_removed_types() -> None:
    osf = parse_adapter_config({"peft_type": "OSF", "target_modules": ["q_proj"]})
    assert fields_unsupported_by(osf, "0.17.0") == ["peft_type"]
    assert fields_unsupported_by(osf, "0.18.0") == []
    bone = parse_adapter_config({"peft_type": "BONE", "r": 64, "target_modules": ["q_proj"]})
    assert not bone.known_peft_type
    assert "peft_type" in fields_unsupported_by(bone, "0.19.0")
    assert "peft_type" not in fields_unsupported_by(bone, "0.14.0")
    assert required_peft_specifier(bone) == ">=0.14.0,<0.19.0"


def test_unknown_lora_fields_are_reported() -> None:
    cfg = _lora(task="qa", use_dora=False)
    assert cfg.unknown_fields == ("task",)
    assert fields_unsupported_by(cfg, "0.21.2") == ["task"]
    assert fields_unsupported_by(cfg, "99.0") == []  # a future peft: unknown
    assert any("task" in n for n in cfg.notes)


def test_bad_version_argument_is_a_loradoc_error() -> None:
    with pytest.raises(MalformedConfigError, match="not a peft version"):
        fields_unsupported_by(_lora(), "latest")


# ---------------------------------------------------------------------------------------------------------
# base model: local path or Hub id
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "local"),
    [
        ("google/gemma-3-270m", False),
        ("unsloth/gemma-4-E4B-it-unsloth-bnb-4bit", False),
        ("gpt2", False),
        ("Meta-Llama-3-8B-Instruct", False),
        ("/content/gemma3-270m", True),
        ("./gemma3-270m", True),
        ("../../Llama2-7b-chat/", True),
        ("models/gemma-3-270m", True),
        ("model", True),
        ("base_model", True),
        ("~/models/gemma", True),
        ("C:\\Users\\me\\gemma", True),
        ("D:/models/gemma", True),
        ("your/download/path/to/codonbert", True),
        ("/Users/halid/Desktop/Arapça HTR Eğitimi/models/x", True),
        ("org/name with space", True),
        ("org/checkpoint-500", True),
        ("google/gemma-3-270m/", True),
    ],
)
def test_is_local_path(ref: str, local: bool) -> None:
    assert is_local_path(ref) is local


def test_bare_non_canonical_base_gets_a_note() -> None:
    assert any("no organisation" in n for n in _lora(base_model_name_or_path="gemma3-270m-it").notes)
    assert not any("no organisation" in n for n in _lora(base_model_name_or_path="gpt2").notes)


# ---------------------------------------------------------------------------------------------------------
# hand-written edge cases
# ---------------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, blob: bytes, name: str = "adapter_config.json") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_git_lfs_pointer(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 812\n",
    )
    with pytest.raises(MalformedConfigError) as ei:
        load_adapter_config(p)
    assert "Git LFS pointer" in ei.value.message and str(p) in ei.value.message
    assert ei.value.hint and "git lfs pull" in ei.value.hint


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(MalformedConfigError, match="is empty"):
        load_adapter_config(_write(tmp_path, b"  \n"))


def test_not_json(tmp_path: Path) -> None:
    with pytest.raises(MalformedConfigError, match="not valid JSON") as ei:
        load_adapter_config(_write(tmp_path, b'{"peft_type": "LORA",'))
    assert "\n" not in str(ei.value)


def test_html_page(tmp_path: Path) -> None:
    with pytest.raises(MalformedConfigError, match="HTML page"):
        load_adapter_config(_write(tmp_path, b"<!DOCTYPE html><html><body>blob</body></html>"))


def test_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(MalformedConfigError, match="not UTF-8"):
        load_adapter_config(_write(tmp_path, b'{"peft_type": "\xff\xfe"}'))


def test_list_json(tmp_path: Path) -> None:
    with pytest.raises(NotPeftConfigError, match="not a PEFT adapter config .a JSON array"):
        load_adapter_config(_write(tmp_path, b'[{"peft_type": "LORA"}]'))


@pytest.mark.parametrize("value", ["LORA", 3, None, True, 1.5])
def test_scalar_json(value: object) -> None:
    with pytest.raises(NotPeftConfigError, match="not a PEFT adapter config"):
        parse_adapter_config(value)


def test_bom_is_read_and_flagged(tmp_path: Path) -> None:
    body = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    cfg = load_adapter_config(_write(tmp_path, b"\xef\xbb\xbf" + body.encode()))
    assert cfg.r == 4 and cfg.targets_all_linear
    assert any("BOM" in n for n in cfg.notes)


def test_duplicate_keys_are_flagged(tmp_path: Path) -> None:
    cfg = load_adapter_config(_write(tmp_path, b'{"peft_type": "LORA", "r": 4, "r": 16, "target_modules": null}'))
    assert cfg.r == 16
    assert any("duplicate keys" in n and "r" in n for n in cfg.notes)


def test_directory_and_missing_paths(tmp_path: Path) -> None:
    _write(tmp_path, json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}).encode())
    assert load_adapter_config(tmp_path).r == 8
    assert load_adapter_config(str(tmp_path / "adapter_config.json")).source.endswith("adapter_config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError) as ei:
        load_adapter_config(empty)
    assert "adapter_config.json" in ei.value.message and ei.value.hint
    with pytest.raises(MissingFileError):
        load_adapter_config(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("r", "16", "r"),
        ("r", 16.0, "r"),
        ("r", True, "r"),
        ("target_modules", 5, "target_modules"),
        ("target_modules", ["q_proj", 3], "target_modules[1]"),
        ("lora_alpha", "32", "lora_alpha"),
        ("use_dora", "false", "use_dora"),
        ("modules_to_save", "lm_head", "modules_to_save"),
        ("layers_to_transform", ["0"], "layers_to_transform[0]"),
        ("rank_pattern", {"q_proj": "8"}, 'rank_pattern["q_proj"]'),
        ("bias", "some", "bias"),
        ("base_model_name_or_path", 7, "base_model_name_or_path"),
        ("init_lora_weights", 1, "init_lora_weights"),
        ("peft_type", 5, "peft_type"),
        ("peft_type", "", "peft_type"),
        ("lora_alpha", 10**400, "lora_alpha"),
        ("alpha_pattern", {"q_proj": 10**400}, 'alpha_pattern["q_proj"]'),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object, where: str) -> None:
    d: dict[str, Any] = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    d[field] = value
    with pytest.raises(MalformedConfigError) as ei:
        parse_adapter_config(d, source="x/adapter_config.json")
    assert ei.value.message.startswith(f"x/adapter_config.json: field {where!r} ")
    assert "\n" not in str(ei.value)
    assert ei.value.hint and repr(where) in ei.value.hint and "loradoc doctor" in ei.value.hint
    assert isinstance(ei.value, ConfigFieldsError) and [p.where for p in ei.value.problems] == [where]


def test_every_problem_is_reported_with_its_key_path() -> None:
    d: dict[str, Any] = {
        "peft_type": 5,
        "r": "8",
        "target_modules": ["q_proj", 3, "v_proj", None],
        "use_dora": "yes",
        "rank_pattern": {"q_proj": 8, "k_proj": "4"},
        "lora_alpha": 16,
    }
    with pytest.raises(ConfigFieldsError) as ei:
        parse_adapter_config(d, source="x.json")
    wheres = [p.where for p in ei.value.problems]
    assert wheres == ["peft_type", "r", "use_dora", "target_modules[1]", "target_modules[3]", 'rank_pattern["k_proj"]']
    msg = ei.value.message
    assert "field 'target_modules[1]' must be a string, got 3" in msg
    assert "field 'target_modules[3]' must be a string, got null" in msg
    assert "field 'r' must be an integer, got \"8\"" in msg
    assert "; and 1 more" in msg and "\n" not in msg  # five spelled out, the rest counted


def test_problems_name_the_line_of_the_file(tmp_path: Path) -> None:
    text = (
        '{\n  "peft_type": "LORA",\n  "r": 8,\n  "target_modules": [\n    "q_proj",\n    3\n  ],\n'
        '  "rank_pattern": {"q": 1, "k": "x"},\n  "bias": "some"\n}\n'
    )
    with pytest.raises(ConfigFieldsError) as ei:
        load_adapter_config(_write(tmp_path, text.encode()))
    got = {p.where: p.line for p in ei.value.problems}
    lines = text.splitlines()
    assert got == {"target_modules[1]": 6, 'rank_pattern["k"]': 8, "bias": 9}
    assert lines[5].strip() == "3" and '"k": "x"' in lines[7] and '"bias"' in lines[8]
    assert "line 6: field 'target_modules[1]' must be a string, got 3; line 8: field 'rank_pattern[" in ei.value.message


def test_oversized_fields_are_all_reported_with_their_limits() -> None:
    d: dict[str, Any] = {
        "peft_type": "LORA",
        "target_modules": [f"m{i}" for i in range(MAX_LIST_ENTRIES + 1)],
        "exclude_modules": "x" * (MAX_STRING_CHARS + 1),
    }
    with pytest.raises(ConfigFieldsError) as ei:
        parse_adapter_config(d, source="x.json")
    assert f"field 'target_modules' has {MAX_LIST_ENTRIES + 1} entries (limit {MAX_LIST_ENTRIES})" in ei.value.message
    assert f"a string of {MAX_STRING_CHARS + 1} characters (limit {MAX_STRING_CHARS})" in ei.value.message
    assert ei.value.hint and "no real adapter needs that much" in ei.value.hint


def test_fields_of_other_releases_are_kept_as_extras() -> None:
    cfg = _lora(use_qalora=True, eva_config={"rho": 2.0}, task="qa")
    assert cfg.extras == {"use_qalora": True, "eva_config": {"rho": 2.0}, "task": "qa"}
    assert "r" not in cfg.extras and cfg.r == 8


def test_nonpositive_r_and_nonfinite_alpha_pattern_parse_for_doctor_to_report() -> None:
    d: dict[str, Any] = {"peft_type": "LORA", "r": 0, "lora_alpha": 16, "target_modules": ["q_proj"]}
    assert parse_adapter_config(d).r == 0
    d.update(r=8, alpha_pattern={"q_proj": math.nan})
    assert math.isnan(parse_adapter_config(d).alpha_pattern["q_proj"])


def test_legacy_config_without_peft_type_is_lora_with_a_note() -> None:
    cfg = parse_adapter_config({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    assert cfg.peft_type == "LORA"
    assert any("no peft_type" in n for n in cfg.notes)
    assert fields_unsupported_by(cfg, "0.21.2") == ["peft_type"]


def test_lower_case_peft_type_is_normalised_and_flagged() -> None:
    cfg = parse_adapter_config({"peft_type": "lora", "r": 8, "target_modules": ["q_proj"]})
    assert cfg.peft_type == "LORA" and cfg.known_peft_type
    assert any("upper-case" in n for n in cfg.notes)
    assert fields_unsupported_by(cfg, "0.21.2") == ["peft_type"]  # peft's lookup is case-sensitive


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        ({"fine_tune_type": "lora", "num_layers": 16, "lora_parameters": {"rank": 8}}, "MLX-LM"),
        (
            {"model_type": "gemma3", "architectures": ["Gemma3ForCausalLM"], "hidden_size": 640},
            "model config",
        ),
        ({"base_model": "google/gemma-3-1b-it"}, "one-key stub"),
        ({}, "empty object"),
        ({"framework": "jax-tunix-qwix", "lora_rank": 8, "lora_alpha": 8.0}, "JAX/Tunix"),
        (
            {"config": {"architecture": "lora", "reduction_factor": 16}, "name": "x", "model_name": "bert"},
            "AdapterHub",
        ),
        ({"foo": 1, "bar": 2}, "no peft_type"),
    ],
)
def test_look_alikes(data: dict[str, Any], looks_like: str) -> None:
    with pytest.raises(NotPeftConfigError) as ei:
        parse_adapter_config(data, source="a/adapter_config.json")
    assert ei.value.message.startswith("a/adapter_config.json: not a PEFT adapter config (")
    assert looks_like in ei.value.message
    assert ei.value.hint


def test_adalora_rank_pattern_masks_become_ranks() -> None:
    cfg = parse_adapter_config(
        {
            "peft_type": "ADALORA",
            "r": 8,
            "target_modules": ["q"],
            "rank_pattern": {"l.0.q": [True, False, True]},
        }
    )
    assert cfg.rank_pattern == {"l.0.q": 2}


def test_module_imports_no_heavy_stack() -> None:
    code = (
        "import sys, loradoc.io.adapter_config; "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------------------------------------

_json_scalars = (
    st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats(allow_nan=True) | st.text(max_size=12)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_peft_keys = st.sampled_from(
    ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "modules_to_save",
     "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "use_dora", "use_rslora",
     "bias", "init_lora_weights", "base_model_name_or_path", "revision", "task_type", "peft_version",
     "fan_in_fan_out", "enable_lora", "merge_weights", "lora_parameters", "model_type", "config", "framework",
     "target_parameters", "lora_bias", "qalora_group_size"]
)  # fmt: skip
_peft_types = st.sampled_from(["LORA", "lora", "ADALORA", "OFT", "BONE", "DIAG", "OSF", "IA3", "PeftType.LORA"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=10) | _peft_keys, _json_values, max_size=8))
def test_any_json_object_parses_or_raises_a_loradoc_error(data: dict[str, Any]) -> None:
    _check_any(data)


@settings(max_examples=400, deadline=None)
@given(_peft_types, st.dictionaries(_peft_keys, _json_values, max_size=10))
def test_peft_like_objects_parse_or_raise_a_loradoc_error(peft_type: str, data: dict[str, Any]) -> None:
    _check_any({"peft_type": peft_type, **data})


def _check_any(data: dict[str, Any]) -> None:
    try:
        cfg = parse_adapter_config(data, source="h.json")
    except LoradocError as exc:
        assert "\n" not in str(exc)
        return
    for version in ("0.2.0", "0.9.0", "0.13.0", "0.14.0", "0.21.2", "1.0"):
        unsupported = fields_unsupported_by(cfg, version)
        assert all(isinstance(n, str) and (n in data or n == "peft_type") for n in unsupported)
    assert required_peft_specifier(cfg).startswith(">=")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | _json_values.map(lambda v: json.dumps(v).encode()))
def test_any_file_content_loads_or_raises_a_loradoc_error(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "adapter_config.json"
        p.write_bytes(blob)
        try:
            load_adapter_config(p)
        except LoradocError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=6), st.sampled_from([None, 2]))
def test_json_lines_finds_each_key_and_entry(data: dict[str, Any], indent: int | None) -> None:
    from loradoc.io.config_problems import json_lines

    text = json.dumps({"peft_type": "LORA", **data}, indent=indent)
    lines = text.splitlines()
    found = json_lines(text)
    for key, value in json.loads(text).items():
        line = found[(key,)]
        assert json.dumps(key) + ":" in lines[line - 1]  # the key's own line (the last one written, as json keeps)
        if isinstance(value, list) and value and indent:
            for i, item in enumerate(value):
                first = json.dumps(item, indent=indent).splitlines()[0]
                assert lines[found[(key, i)] - 1].strip().startswith(first.strip())
