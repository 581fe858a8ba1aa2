"""Doctor over 214 real adapter_config.json files (tests/fixtures/real_adapter_configs.jsonl).

Each config is paired with real LoRA weights and diagnosed against a tiny base: doctor must return a verdict or
raise a loradoc error with a one-line message: never an unhandled exception.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loradoc.demo.builder import ExampleSet
from loradoc.diagnose.doctor import diagnose
from loradoc.errors import LoradocError, NotPeftConfigError
from loradoc.model.profiles import get_profile

FIXTURE = Path(__file__).parent / "fixtures" / "real_adapter_configs.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def adapters(example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, Path]]:
    root = tmp_path_factory.mktemp("real-configs")
    weights = example_root.adapters["healthy-gemma4-text"] / "adapter_model.safetensors"
    out = []
    for i, row in enumerate(ROWS):
        d = root / f"{i:03d}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps(row["config"]))
        shutil.copy(weights, d / "adapter_model.safetensors")
        out.append((row, d))
    return out


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
def test_every_real_config_gets_a_verdict_or_one_clear_line(
    adapters: list[tuple[dict, Path]], example_root: ExampleSet, fast: bool
) -> None:
    base = str(example_root.bases["tiny-gemma4-text"])
    get_profile(base)  # --fast reads a cached profile; build it once
    verdicts: dict[str, int] = {}
    not_peft = 0
    errors: list[str] = []
    for row, d in adapters:
        try:
            diag = diagnose(str(d), base, fast=fast)
        except NotPeftConfigError as e:
            not_peft += 1
            assert "not a PEFT adapter config" in str(e)
            continue
        except LoradocError as e:
            assert "\n" not in str(e), (row["repo"], row["path"])
            errors.append(str(e))
            continue
        verdicts[diag.verdict] = verdicts.get(diag.verdict, 0) + 1
        assert diag.verdict in ("healthy", "repairable", "broken")
        for f in diag.findings:
            assert "\n" not in f.message
    assert not_peft == 7
    assert len(errors) < 10, errors
    # Configs with the 7 projection names (or all-linear) targets on this base, and real weights: some are healthy.
    # ... and one config whose peft_type no peft release knows ("DIAG"): peft cannot load it, exit 2.
    assert any("unknown to peft" in e for e in errors), errors
    assert verdicts.get("healthy", 0) > 0 and sum(verdicts.values()) == len(ROWS) - 7 - len(errors)
