"""The workflow layer: the CLI and the TUI record the same registry rows for the same action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradoc.cli import main
from loradoc.demo.builder import ExampleSet
from loradoc.registry import Registry
from loradoc.tui import jobs


@pytest.fixture(autouse=True)
def _manifests_beside_each_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each registry keeps its manifests beside its own index (no shared LORADOC_MANIFESTS)."""
    monkeypatch.delenv("LORADOC_MANIFESTS", raising=False)


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def _artifacts(reg_path: Path, adapter: Path) -> list[dict]:
    reg = Registry(reg_path)
    try:
        rows = [a.to_dict() for a in reg.show(str(adapter.resolve())).current_revision.artifacts]
    finally:
        reg.close()
    for r in rows:  # where and when differ by construction
        r.pop("path"), r.pop("created", None)
    return rows


@pytest.mark.parametrize(("kind", "dtype"), [("gguf-lora", None), ("merged", "f32")])
def test_cli_and_tui_record_the_same_artifact(
    kind: str, dtype: str | None, example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = example_root.adapters["healthy-gemma4-text"]
    base = str(example_root.bases["tiny-gemma4-text"])
    cli_reg, tui_reg = tmp_path / "cli" / "registry.sqlite", tmp_path / "tui" / "registry.sqlite"
    for reg in (cli_reg, tui_reg):
        assert _cli(["registry", "add", str(adapter), "--base", base, "--registry", str(reg)]) == 0
    out_cli = tmp_path / "cli-out" / ("a.gguf" if kind == "gguf-lora" else "merged")
    args = [
        "convert",
        kind,
        str(adapter),
        "--base",
        base,
        "--out",
        str(out_cli),
        "--record",
        "--registry",
        str(cli_reg),
    ]
    assert _cli(args + (["--dtype", dtype] if dtype else [])) == 0
    registry = Registry(tui_reg)
    try:
        out_tui = tmp_path / "tui-out" / out_cli.name
        jobs.run_convert(kind, str(adapter), base, out_tui, registry, lambda done, total, what: None, dtype=dtype)
    finally:
        registry.close()
    capsys.readouterr()
    from_cli, from_tui = _artifacts(cli_reg, adapter), _artifacts(tui_reg, adapter)
    assert len(from_cli) == 1 and from_cli == from_tui, json.dumps([from_cli, from_tui], indent=1)
    assert from_cli[0]["sha256"] != "unknown" and from_cli[0]["format"]


def test_base_defaults_to_what_the_registry_or_the_config_knows(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`loradoc example` records each adapter with its tiny base; then --base may be left out (said on stderr).
    Else the base adapter_config.json names is used when it is a shipped id; else a one-line error."""
    reg = tmp_path / "registry.sqlite"
    assert _cli(["example", str(example_root.root), "--registry", str(reg), "--json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert set(pairs) == set(example_root.adapters)
    name = "healthy-gemma4-text"
    assert pairs[name]["base"] == str(example_root.base_for(name).resolve())
    assert _cli(["doctor", pairs[name]["adapter"], "--registry", str(reg)]) == 0
    err = capsys.readouterr().err
    assert f"base: {pairs[name]['base']} (from registry" in err
    # check-load needs weights: the registry's tiny base has them
    assert (
        _cli(["check-load", pairs[name]["adapter"], "--registry", str(reg), "--certificate", str(tmp_path / "c.json")])
        == 0
    )
    assert f"base: {pairs[name]['base']} (from registry" in capsys.readouterr().err
    # unknown to a fresh registry: the config's base id, when shipped (a seed replica names the real Hub base)
    seed = example_root.adapters["seed-cliniq-gemma4-e2b"]
    declared = json.loads((seed / "adapter_config.json").read_text())["base_model_name_or_path"]
    fresh = tmp_path / "fresh" / "registry.sqlite"  # its own manifests folder: knows nothing
    code = _cli(["doctor", str(seed), "--fast", "--registry", str(fresh)])
    err = capsys.readouterr().err
    if declared.lower() in {"google/gemma-4-e2b-it", "google/gemma-4-e4b-it", "google/medgemma-4b-it"}:
        assert code in (0, 1) and "(from adapter_config.json" in err
    else:
        assert code == 2 and "no --base given" in err
    # nothing known at all: one line naming the next step
    lone = tmp_path / "lone"
    lone.mkdir()
    cfg = json.loads((seed / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "somebody/unknown-base"
    (lone / "adapter_config.json").write_text(json.dumps(cfg))
    (lone / "adapter_model.safetensors").write_bytes((seed / "adapter_model.safetensors").read_bytes())
    code = _cli(["doctor", str(lone), "--registry", str(fresh)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert (
        len(lines) == 1
        and "no --base given" in lines[0]
        and "somebody/unknown-base" in lines[0]
        and "next:" in lines[0]
    )
