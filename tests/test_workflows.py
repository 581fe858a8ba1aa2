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


# ---------------------------------------------------------------------------------------------------------
# every recorded action: the CLI and the TUI write the same registry rows


def _normalised(reg_path: Path, ident: str, swaps: dict[str, str]) -> dict:
    """The manifest of ``ident`` as JSON, with what differs by construction between two runs replaced: the output
    directory, the registry's own directory, the Hub repo and commit (``swaps``), timestamps, the revision labels
    derived from output paths, and each certificate file's own sha256 (checked against the file first: it holds
    the time it was written)."""
    import hashlib
    import re

    reg = Registry(reg_path)
    try:
        data = reg.show(ident).to_json()
        rows = [r.to_json() for r in reg.list() if r.id == ident]
    finally:
        reg.close()
    for rev in data.get("revisions", []):
        for cert in rev.get("certificates", []):
            assert cert["sha256"] == hashlib.sha256(Path(cert["path"]).read_bytes()).hexdigest()
            cert["sha256"] = "CERT-SHA256"
    text = json.dumps({"manifest": data, "index": rows}, sort_keys=True, default=str)
    for old, new in sorted(swaps.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "TIME", text)
    text = re.sub(r"repaired-[0-9a-f]{8}", "repaired-LABEL", text)
    text = re.sub(r"certificates/([0-9a-f]{64})/[0-9a-f]{64}\.json", r"certificates/\1/CERT.json", text)
    return json.loads(text)


def test_cli_and_tui_record_the_same_rows_for_every_recorded_action(
    example_root: ExampleSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor --record, repair --record, check-load --record and publish (on the loopback Hub), run once from the
    CLI and once through the TUI's jobs, each into a registry of its own: after every step both registries hold
    the same rows for the source adapter and for the repaired one (convert: the test above)."""
    from hubserver import HubServer

    token = "hf_loradocWORKFLOWtoken0000111122"
    srv = HubServer(tmp_path / "hub")
    srv.add_token(token, "alice")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    adapter = example_root.adapters["seed-clinical-endpoint-extractor"]
    base = str(example_root.bases["tiny-gemma4-e4b"])
    src = str(adapter.resolve())
    cli_reg, tui_reg = tmp_path / "cli" / "registry.sqlite", tmp_path / "tui" / "registry.sqlite"
    cli_out, tui_out = tmp_path / "cli" / "fixed", tmp_path / "tui" / "fixed"
    swaps = {
        "cli": {str(cli_out): "OUT", str(cli_reg.parent): "REG", "alice/wf-cli": "REPO"},
        "tui": {str(tui_out): "OUT", str(tui_reg.parent): "REG", "alice/wf-tui": "REPO"},
    }

    def nothing(done: int, total: int, what: str) -> None:
        return None

    def same(*idents: tuple[str, str]) -> None:
        for cli_id, tui_id in idents:
            from_cli = _normalised(cli_reg, cli_id, swaps["cli"])
            from_tui = _normalised(tui_reg, tui_id, swaps["tui"])
            assert from_cli == from_tui, json.dumps([from_cli, from_tui], indent=1)

    with srv:
        tui = Registry(tui_reg)
        try:
            # doctor --record
            assert _cli(["doctor", src, "--base", base, "--record", "--registry", str(cli_reg), "--json"]) == 1
            assert jobs.run_doctor(src, base, tui, nothing).verdict == "repairable"
            same((src, src))
            # repair --record
            args = ["repair", src, "--base", base, "--out", str(cli_out), "--record", "--registry", str(cli_reg)]
            assert _cli([*args, "--json"]) == 0
            assert jobs.apply_repair(jobs.plan_repair(src, base), tui_out, tui, nothing).ok
            same((src, src), (str(cli_out), str(tui_out)))
            # check-load --record (the certificate goes to each registry's own store)
            args = ["check-load", str(cli_out), "--base", base, "--device", "cpu", "--record", "--json"]
            assert _cli([*args, "--registry", str(cli_reg)]) == 0
            assert jobs.run_check_load(str(tui_out), base, "cpu", tui, nothing).passed
            same((src, src), (str(cli_out), str(tui_out)))
            # publish (records the new commit unless --no-record), one repo each
            capsys.readouterr()
            args = ["publish", str(cli_out), "--repo", "alice/wf-cli", "--endpoint", srv.url, "--json"]
            assert _cli([*args, "--registry", str(cli_reg)]) == 0
            pushed = json.loads(capsys.readouterr().out)
            plan = jobs.plan_publish(str(tui_out), "alice/wf-tui", None, srv.url, tui)
            result = jobs.run_publish(plan, srv.url, tui, nothing)
        finally:
            tui.close()
        from huggingface_hub import HfApi

        api = HfApi(endpoint=srv.url)
        heads = {"cli": api.repo_info("alice/wf-cli").sha, "tui": api.repo_info("alice/wf-tui").sha}
    assert result.commit_sha == heads["tui"] and pushed["commit_sha"] == heads["cli"] and pushed["recorded"]
    swaps["cli"][heads["cli"]] = "COMMIT"
    swaps["tui"][heads["tui"]] = "COMMIT"
    same((src, src), (str(cli_out), str(tui_out)))
    revisions = _normalised(cli_reg, str(cli_out), swaps["cli"])["manifest"]["revisions"]
    assert [h["commit"] for rv in revisions for h in rv.get("hub", [])] == ["COMMIT"]


def test_a_progress_callback_that_raises_cancelled_stops_the_step_before_it_writes_or_records(
    example_root: ExampleSet, tmp_path: Path
) -> None:
    """The one cancel protocol: a step whose progress callback raises Cancelled leaves no output and no row."""
    from loradoc import workflows
    from loradoc.errors import Cancelled

    adapter = str(example_root.adapters["healthy-gemma4-text"].resolve())
    base = str(example_root.bases["tiny-gemma4-text"])
    reg_path = tmp_path / "registry.sqlite"
    calls: list[str] = []

    def cancel(done: int, total: int, what: str) -> None:
        calls.append(what)
        raise Cancelled("cancelled by the test", hint="run it again with loradoc doctor ADAPTER --record")

    with pytest.raises(Cancelled):
        workflows.diagnose(adapter, base, record=True, registry=reg_path, progress=cancel)
    out = tmp_path / "lora.gguf"
    with pytest.raises(Cancelled):
        workflows.convert("gguf-lora", adapter, base, out, record=True, registry=reg_path, progress=cancel)
    assert calls and not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "registry.sqlite"]
    reg = Registry(reg_path)
    try:
        assert workflows.adapter_id(reg, adapter) is None  # nothing was recorded
    finally:
        reg.close()
    # the same steps, not cancelled, do write and record
    done = workflows.convert("gguf-lora", adapter, base, out, record=False, registry=reg_path)
    assert out.is_file() and done.format == "gguf-lora" and done.recorded is None
    assert workflows.diagnose(adapter, base, record=True, registry=reg_path).recorded is not None
