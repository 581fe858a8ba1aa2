"""The CLI shell: exit codes, one-line errors for bad input, the --json contract, import discipline."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loradoc.cli import main
from loradoc.demo.builder import ExampleSet

ADAPTER = "healthy-gemma4-text"
BASE = "tiny-gemma4-text"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _copy(ex: ExampleSet, tmp: Path, name: str = ADAPTER) -> Path:
    dst = tmp / "adapter"
    shutil.copytree(ex.adapters[name], dst)
    return dst


def _assert_one_line_exit2(code: int, err: str) -> None:
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "next:" in lines[0]
    assert "Traceback" not in err


def _rewrite_header(path: Path, header: dict | bytes, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# -- bad input: exit 2 with one line -----------------------------------------------------------------------


def test_truncated_safetensors(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    st = a / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)
    assert "truncated" in err or "past the end" in err


def test_header_length_past_end(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    st = a / "adapter_model.safetensors"
    st.write_bytes(struct.pack("<Q", 10**7) + b"{}")
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)


def test_overlapping_offsets(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    header = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {
            "dtype": "F32",
            "shape": [2, 2],
            "data_offsets": [0, 16],
        },
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": {
            "dtype": "F32",
            "shape": [2, 2],
            "data_offsets": [8, 24],
        },
    }
    _rewrite_header(a / "adapter_model.safetensors", header, bytes(24))
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)
    assert "overlap" in err


def test_out_of_range_offsets(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    header = {"x.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    _rewrite_header(a / "adapter_model.safetensors", header, bytes(8))
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)


def test_header_not_json(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    _rewrite_header(a / "adapter_model.safetensors", b"this is not json{", b"")
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)


def test_missing_config(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    (a / "adapter_config.json").unlink()
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)
    assert "adapter_config.json" in err


def test_missing_weights(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    (a / "adapter_model.safetensors").unlink()
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)


def test_missing_adapter_dir(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["doctor", str(tmp_path / "nope"), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)


def test_unknown_architecture(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(example_root.bases[BASE], base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (base / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["doctor", str(example_root.adapters[ADAPTER]), "--base", str(base)], capsys)
    _assert_one_line_exit2(code, err)
    assert "NoSuchModelForCausalLM" in err


def test_unknown_model_type(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(example_root.bases[BASE], base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["model_type"] = "gemma99"
    (base / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["doctor", str(example_root.adapters[ADAPTER]), "--base", str(base)], capsys)
    _assert_one_line_exit2(code, err)


def test_unknown_base_id(example_root: ExampleSet, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["doctor", str(example_root.adapters[ADAPTER]), "--base", "nobody/nothing"], capsys)
    _assert_one_line_exit2(code, err)
    assert "google/gemma-4-E4B-it" in err  # names the shipped ids


def test_pickle_bin_is_not_unpickled_without_consent(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    a = _copy(example_root, tmp_path)
    st = a / "adapter_model.safetensors"
    torch.save(load_file(str(st)), a / "adapter_model.bin")
    st.unlink()
    base = str(example_root.bases[BASE])
    code, _, err = run_cli(["doctor", str(a), "--base", base], capsys)
    _assert_one_line_exit2(code, err)
    assert "--allow-pickle" in err
    code, out, _ = run_cli(["doctor", str(a), "--base", base, "--allow-pickle", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "healthy"
    assert [f["code"] for f in report["findings"]] == ["pickle-weights"]
    assert report["findings"][0]["severity"] == "warning"


def test_malicious_pickle_is_refused(
    example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    a = _copy(example_root, tmp_path)
    (a / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    with open(a / "adapter_model.bin", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE]), "--allow-pickle"], capsys)
    _assert_one_line_exit2(code, err)
    assert not marker.exists()


def test_not_a_peft_config(example_root: ExampleSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _copy(example_root, tmp_path)
    (a / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 16, "lora_parameters": {"rank": 8, "scale": 20.0}})
    )
    code, _, err = run_cli(["doctor", str(a), "--base", str(example_root.bases[BASE])], capsys)
    _assert_one_line_exit2(code, err)
    assert "not a PEFT adapter config" in err


# -- the --json contract and exit codes --------------------------------------------------------------------


def test_json_contract_and_exit_codes(example_root: ExampleSet, capsys: pytest.CaptureFixture[str]) -> None:
    ex = example_root
    code, out, _ = run_cli(["doctor", str(ex.adapters[ADAPTER]), "--base", str(ex.bases[BASE]), "--json"], capsys)
    healthy = json.loads(out)
    assert code == 0 and healthy["verdict"] == "healthy"
    code, out, _ = run_cli(
        [
            "doctor",
            str(ex.adapters["seed-clinical-endpoint-extractor"]),
            "--base",
            str(ex.bases["tiny-gemma4-e4b"]),
            "--json",
        ],
        capsys,
    )
    broken = json.loads(out)
    assert code == 1 and broken["verdict"] == "repairable"
    for report in (healthy, broken):
        assert set(report) >= {"verdict", "findings", "peft"}
        assert set(report["peft"]) >= {"loaded", "missing", "unexpected", "effective"}
        for f in report["findings"]:
            assert set(f) >= {"code", "severity", "count", "message", "repair"}
            assert f["severity"] in ("error", "warning", "info")


def test_human_output_ends_with_the_fix(example_root: ExampleSet, capsys: pytest.CaptureFixture[str]) -> None:
    ex = example_root
    code, out, _ = run_cli(
        ["doctor", str(ex.adapters["textonly-on-wrapper"]), "--base", str(ex.bases["tiny-gemma4-e4b"])],
        capsys,
    )
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("fix: loradoc repair")


def test_shipped_base_id_works_offline(example_root: ExampleSet, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny adapter against the real E4B config: every tensor has the wrong shape, doctor says so."""
    code, out, _ = run_cli(
        [
            "doctor",
            str(example_root.adapters["healthy-gemma4-e4b"]),
            "--base",
            "google/gemma-4-E4B-it",
            "--json",
            "--fast",
        ],
        capsys,
    )
    report = json.loads(out)
    assert report["base"]["layers"] == 42 and len(report["base"]["kv_shared_layers"]) == 18
    assert report["verdict"] == "broken" and "shape-mismatch" in {f["code"] for f in report["findings"]}


# -- import discipline -------------------------------------------------------------------------------------


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_imports_no_heavy_library() -> None:
    mods = _modules_after("from loradoc.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not mods & {"torch", "transformers", "peft", "textual", "numpy"}


def test_fast_doctor_imports_no_torch(example_root: ExampleSet) -> None:
    a, b = example_root.adapters[ADAPTER], example_root.bases[BASE]
    # make sure the profile is cached first (the full doctor builds it)
    from loradoc.model.profiles import get_profile

    get_profile(str(b))
    mods = _modules_after(
        "from loradoc.cli import main\ntry:\n"
        f"    main(['doctor', {str(a)!r}, '--base', {str(b)!r}, '--fast', '--json'])\n"
        "except SystemExit:\n    pass"
    )
    assert not mods & {"torch", "transformers", "peft"}


def test_core_never_imports_textual_or_click() -> None:
    mods = _modules_after(
        "import loradoc.diagnose.doctor, loradoc.diagnose.analysis, loradoc.io.snapshot, loradoc.model.profiles, "
        "loradoc.model.layout, loradoc.io.safetensors, loradoc.io.adapter_config, loradoc.demo.builder"
    )
    assert not mods & {"textual", "click", "typer", "rich"}


def test_convert_merged_cli_records_the_artifact(
    example_root: ExampleSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORADOC_MANIFESTS", str(tmp_path / "manifests"))
    reg = ["--registry", str(tmp_path / "reg.sqlite")]
    a, b = str(example_root.adapters[ADAPTER]), str(example_root.bases[BASE])
    code, _, _ = run_cli(["doctor", a, "--base", b, "--record", "--json", *reg], capsys)
    assert code == 0
    out = tmp_path / "merged"
    try:
        main(["convert", "merged", a, "--base", b, "--out", str(out), "--dtype", "f32", "--record", *reg, "--json"])
    except SystemExit as e:
        assert e.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["merged"] and (out / "config.json").is_file()
    code, shown, _ = run_cli(["registry", "show", a, "--json", *reg], capsys)
    arts = [x for rv in json.loads(shown)["revisions"] for x in rv.get("artifacts", [])]
    assert arts and arts[0]["kind"] == "merged" and len(arts[0]["sha256"]) == 64


def test_third_party_deprecation_warnings_are_hidden_unless_debugging(tmp_path) -> None:
    """Building the medgemma profile makes transformers emit a FutureWarning: the user does not see it;
    LORADOC_DEBUG=1 shows it."""
    results = {}
    for debug in ("", "1"):
        env = {**os.environ, "LORADOC_CACHE_DIR": str(tmp_path / f"cache{debug}"), "LORADOC_DEBUG": debug}
        proc = subprocess.run(
            [sys.executable, "-c", "from loradoc.cli import main; main()", "base", "profile", "google/medgemma-4b-it"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        results[debug] = proc.stderr
    assert "Warning" not in results[""], results[""]
    assert "FutureWarning" in results["1"]


def _run_on_a_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdout/stderr on a pseudo-terminal (as a user sees it); returns (exit code, screen bytes)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from loradoc.cli import main; main()", *args],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_long_jobs_show_a_progress_bar_on_a_terminal_only(example_root: ExampleSet, tmp_path: Path) -> None:
    adapter = str(example_root.adapters["textonly-on-wrapper"])
    base = str(example_root.bases["tiny-gemma4-e4b"])
    code, screen = _run_on_a_terminal(["repair", adapter, "--base", base, "--out", str(tmp_path / "fixed")])
    assert code == 0, screen
    assert "repair" in screen and "100%" in screen  # the bar, drawn on the terminal and completed
    assert "next: loradoc check-load" in screen
    # piped (and with --json): no bar, and stdout is exactly the JSON document
    proc = subprocess.run(
        [sys.executable, "-c", "from loradoc.cli import main; main()"]
        + ["repair", adapter, "--base", base, "--out", str(tmp_path / "fixed2"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "healthy" and "%" not in proc.stderr


def test_check_load_shows_a_progress_bar_on_a_terminal_only(example_root: ExampleSet, tmp_path: Path) -> None:
    """check-load draws the same bar as the other long jobs (through the same helper); piped or --json: none."""
    adapter = str(example_root.adapters["healthy-gemma4-text"])
    base = str(example_root.bases["tiny-gemma4-text"])
    args = ["check-load", adapter, "--base", base, "--device", "cpu"]
    code, screen = _run_on_a_terminal([*args, "--certificate", str(tmp_path / "tty.json")])
    assert code == 0, screen
    import re

    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    # the bar: its label, the bar itself, the percentage and what it is doing (rich redraws a few times a second,
    # so which phases a screen shows depends on the machine's speed; it shows at least one)
    phases = r"(loading the base|loading the adapter|checks|writing the certificate)"
    assert re.search(rf"check-load [━╺╸ ]+\s+\d+% \S+ {phases}", plain), plain[-2000:]
    proc = subprocess.run(
        [sys.executable, "-c", "from loradoc.cli import main; main()", *args]
        + ["--certificate", str(tmp_path / "piped.json"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["passed"] is True and "%" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["doctor"], "loradoc doctor"),
        (["repair", "x", "--bogus"], "loradoc repair"),
        (["nosuch"], "loradoc"),
        (["convert", "gguf", "a", "--out", "x.gguf", "--outtype", "zz"], "loradoc convert gguf"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help(
    args: list[str], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and lines[0].endswith(f"next: see `{where} --help`")
