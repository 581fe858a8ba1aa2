"""`doctor --fast` (static prediction, no torch) against the full doctor (peft's dry load), on a representative
subset of the corpora benchmarks/fast_vs_full.py runs in full: where the two verdicts differ, a finding says why;
`--fast` never calls healthy what the full doctor does not; and the CLI says plainly that `--fast` is a prediction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from real_adapters_lib import REAL, config_dir

from loradoc.demo.builder import ExampleSet
from loradoc.diagnose.doctor import Diagnosis, diagnose

# adapters published by others: lora_only biases never saved (GPT-2, BLOOM: biased layers), a doubled prefix,
# peft raising (only the head targeted), a SEQ_CLS head, a plain healthy one
REAL_SUBSET = (
    "tiny-gpt2-lab",
    "bloomz-1b1-lab",
    "gpt2-mental-health-nobase",
    "distilbert-seqcls-target-classifier",
    "roberta-base-seqcls-tfg",
    "gpt2-lazyy-demo",
)
CONFIGS = Path(__file__).parent / "fixtures" / "real_adapter_configs.jsonl"
# configs from the wild paired with the healthy Gemma 4 text adapter's weights (as test_real_configs_doctor does)
# (88 and 178: rank-mismatch + missing-keys, whose repair plan only the full doctor can check: the two
# disagreements of the whole corpus)
CONFIG_ROWS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 88, 89, 144, 178)
# a finding that names why a prediction and peft's load differ
_EXPLAINS = {"static-disagrees", "unsaved-bias", "profile-version-gap", "load-mismatch", "repair-unverified"}


def _explained(fast: Diagnosis, full: Diagnosis) -> bool:
    """The difference is named: an info finding of the full doctor about the static side (static-disagrees, an
    unsaved-bias that peft bears out or not), or a finding only one side has that is about the load (the full
    doctor's repair-unverified: its dry load of the repair plan, which --fast cannot run)."""
    full_info = {f.code for f in full.findings if f.severity == "info"}
    if full_info & _EXPLAINS:
        return True
    only = {(f.code, f.severity) for f in fast.findings} ^ {(f.code, f.severity) for f in full.findings}
    return any(code in _EXPLAINS for code, _ in only)


def _pair(adapter: str, base: str) -> tuple[Diagnosis, Diagnosis]:
    full = diagnose(adapter, base)  # builds and caches the profile --fast reads
    return diagnose(adapter, base, fast=True), full


def _check(label: str, fast: Diagnosis, full: Diagnosis) -> None:
    assert fast.mode == "static" and full.mode == "full"
    if fast.verdict != full.verdict:
        assert _explained(fast, full), (label, fast.verdict, full.verdict, [f.code for f in full.findings])
    if fast.verdict == "healthy":
        assert full.verdict == "healthy", (label, [f.code for f in full.findings])


@pytest.mark.parametrize("name", REAL_SUBSET)
def test_real_adapters_fast_vs_full(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not (REAL / "provenance.json").is_file():
        pytest.fail(f"the real adapters are not at {REAL} (CI has ../shared beside the checkout)", pytrace=False)
    work = tmp_path_factory.mktemp("fvf")
    fast, full = _pair(str(REAL / "adapters" / name), str(config_dir(name, work)))
    _check(name, fast, full)


def test_unsaved_bias_is_reported_by_fast_like_full(tmp_path_factory: pytest.TempPathFactory) -> None:
    """bias="lora_only" with no bias in the file, on bases whose layers have biases (GPT-2's Conv1D): knowable from
    the config and the header, so --fast reports it as an error, as the full doctor does (which counts them)."""
    work = tmp_path_factory.mktemp("bias")
    name = "tiny-gpt2-lab"
    fast, full = _pair(str(REAL / "adapters" / name), str(config_dir(name, work)))
    f_fast = next(f for f in fast.findings if f.code == "unsaved-bias")
    f_full = next(f for f in full.findings if f.code == "unsaved-bias")
    assert f_fast.severity == f_full.severity == "error"
    assert f_full.count > 0 and f_fast.count >= f_full.count  # --fast: up to one per targeted layer
    assert fast.verdict == full.verdict != "healthy"


def test_bias_declared_on_a_base_without_biases(example_root: ExampleSet, tmp_path: Path) -> None:
    """The other side: Gemma's linears have no bias, so bias="lora_only" trains none and the full doctor calls the
    adapter healthy, with an info finding that says so; --fast reads the same from the profile's record of which
    layers have a bias (``biased``), so it agrees."""
    src = example_root.adapters["healthy-gemma4-text"]
    ad = tmp_path / "lora-only"
    shutil.copytree(src, ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps(dict(cfg, bias="lora_only")))
    fast, full = _pair(str(ad), str(example_root.bases["tiny-gemma4-text"]))
    assert full.verdict == fast.verdict == "healthy"
    assert fast.profile.biased == []  # the profile records that no targeted layer has a bias
    info = next(f for f in full.findings if f.code == "unsaved-bias")
    assert info.severity == "info" and "--fast" in info.message
    _check("lora-only on gemma", fast, full)


def test_real_configs_fast_vs_full(example_root: ExampleSet, tmp_path: Path) -> None:
    from loradoc.errors import LoradocError

    rows = [json.loads(line) for line in CONFIGS.read_text().splitlines() if line.strip()]
    weights = example_root.adapters["healthy-gemma4-text"] / "adapter_model.safetensors"
    base = str(example_root.bases["tiny-gemma4-text"])
    judged = 0
    for i in CONFIG_ROWS:
        d = tmp_path / f"{i:03d}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps(rows[i]["config"]))
        shutil.copy(weights, d / "adapter_model.safetensors")
        try:
            full = diagnose(str(d), base)
        except LoradocError as e:  # not a PEFT config / bad input: --fast refuses it the same way
            with pytest.raises(type(e)):
                diagnose(str(d), base, fast=True)
            continue
        _check(rows[i].get("repo", str(i)), diagnose(str(d), base, fast=True), full)
        judged += 1
    assert judged >= len(CONFIG_ROWS) // 2


def test_cli_says_fast_is_a_prediction(example_root: ExampleSet, capsys: pytest.CaptureFixture[str]) -> None:
    from loradoc.cli import main
    from loradoc.model.profiles import get_profile

    adapter = str(example_root.adapters["healthy-gemma4-text"])
    base = str(example_root.bases["tiny-gemma4-text"])
    get_profile(base)
    for args, check in (
        (["--json"], lambda out: json.loads(out)["prediction"] is True and json.loads(out)["mode"] == "static"),
        ([], lambda out: "static prediction" in out and "prediction" in out.split("verdict:")[1]),
    ):
        with pytest.raises(SystemExit):
            main(["doctor", adapter, "--base", base, "--fast", *args])
        out, _ = capsys.readouterr()
        assert check(out), out
        with pytest.raises(SystemExit):
            main(["doctor", adapter, "--base", base, *args])
        full_out, _ = capsys.readouterr()
        assert "prediction" not in full_out.replace('"prediction": false', ""), full_out
