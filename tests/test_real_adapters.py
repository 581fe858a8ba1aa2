"""Adapters published by others (../shared/data/real-adapters): doctor's verdict and counts equal a real
``PeftModel.from_pretrained`` computed here, every repairable one repairs to a clean real load, check-load passes
on the healthy ones. A representative subset (all 42: benchmarks/real_adapters.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from real_adapters_lib import REAL, config_dir, evaluate, provenance, truth_of

pytestmark = pytest.mark.slow

# name -> run check-load (needs a saved random base: small bases only)
SUBSET = {
    "gpt2-lazyy-demo": True,  # GPT-2 Conv1D, fan_in_fan_out
    "roberta-base-seqcls-tfg": True,  # SEQ_CLS, classifier.dense/out_proj head via modules_to_save
    "distilbert-seqcls-media-bias": False,  # SEQ_CLS, pre_classifier matched by peft's endswith rule
    "distilbert-seqcls-target-classifier": False,  # peft raises (targets only the head)
    "t5-small-summarizer": True,  # SEQ_2_SEQ_LM encoder-decoder: probe needs decoder inputs
    "bloom-560m-summarize": False,
    "opt-125m-lab08": False,
    "qwen2.5-0.5b-math-latex": False,
    "gemma-3-270m-it-logo": False,
    "gpt2-mental-health-nobase": False,  # doubled base_model.model. prefix -> repair
    "florence-2-base-ft": False,  # remote-code layout; encoder/decoder must stay apart in the repair
    "gemma-2b-sql": False,  # all-NaN weights
    "tiny-gpt2-lab": False,  # bias="lora_only" without the biases
}


def _require_data() -> None:
    if not (REAL / "provenance.json").is_file():
        pytest.fail(f"the real adapters are not at {REAL} (CI has ../shared beside the checkout)", pytrace=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_data()
    return tmp_path_factory.mktemp("real")


@pytest.mark.parametrize("name", list(SUBSET))
def test_real_adapter_verdict_counts_repair_checkload(name: str, work: Path) -> None:
    row = evaluate(name, work, check_load=SUBSET[name], fast=True)
    assert row.agree, f"{name}: doctor {row.doctor} {row.doctor_counts} vs real {row.real} {row.real_counts}: {row.why}"
    if row.doctor == "repairable":
        assert row.repaired, row.why
    if SUBSET[name] and row.doctor == "healthy":
        assert row.check_load, row.why
    if row.fast and row.fast != row.doctor:
        # --fast is a prediction; where it differs, it said so (the bias question needs the dry load)
        from loradoc.diagnose.doctor import diagnose

        fast = diagnose(str(REAL / "adapters" / name), str(config_dir(name, work)), fast=True)
        assert any(f.code == "unsaved-bias" for f in fast.findings), (row.fast, row.doctor)


def _variant(name: str, out: Path, rename) -> Path:  # noqa: ANN001
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    shutil.copy(REAL / "adapters" / name / "adapter_config.json", out)
    sd = load_file(str(REAL / "adapters" / name / "adapter_model.safetensors"))
    save_file({rename(k): v for k, v in sd.items()}, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize(
    "layout",
    [
        "no-prefix",  # saved without base_model.model.
        "saved-wrapper",  # heads under classifier.modules_to_save.default.* (peft raises KeyError)
    ],
)
def test_seq_cls_heads_are_repaired_never_dropped(layout: str, work: Path, tmp_path: Path) -> None:
    from loradoc.diagnose.doctor import diagnose, spec_of
    from loradoc.io.snapshot import open_snapshot
    from loradoc.model.profiles import get_profile, resolve_base
    from loradoc.repair.apply import apply_plan
    from loradoc.repair.passes import build_plan, dry_load_judge

    name = "roberta-base-seqcls-tfg"
    if layout == "no-prefix":
        rename = lambda k: k.removeprefix("base_model.model.")  # noqa: E731
    else:
        rename = lambda k: k.replace(".classifier.", ".classifier.modules_to_save.default.")  # noqa: E731
    adapter = _variant(name, tmp_path / layout, rename)
    base = config_dir(name, work)
    truth = truth_of(adapter, name)
    d = diagnose(str(adapter), str(base))
    assert not truth.healthy and d.verdict == "repairable", (truth, d.verdict, [f.code for f in d.findings])
    if truth.error is None:
        assert (d.peft.loaded, d.peft.missing, d.peft.unexpected) == (truth.loaded, truth.missing, truth.unexpected)
    else:
        assert d.peft.error and d.peft.error.split(":")[0] == truth.error.split(":")[0]
    snap = open_snapshot(str(adapter))
    src = resolve_base(str(base))
    plan = build_plan(snap, get_profile(src, spec=spec_of(snap)), judge=dry_load_judge(src, spec_of(snap)))
    assert not plan.dropped(), [a.source for a in plan.dropped()]
    res = apply_plan(plan, tmp_path / "fixed", src)
    assert res.verdict == "healthy"
    assert truth_of(res.out, name).healthy
    # the trained head is in the output, bit for bit
    kept = {r["source_key"]: r["sha256"] for r in res.report["kept"]}
    heads = [k for k in snap.tensors if k.split(".classifier.")[0] != k or k.startswith("classifier.")]
    assert heads and all(k in kept for k in heads)


def test_what_loads_is_what_was_trained(work: Path) -> None:
    """bias="lora_only" without the biases: peft loads silently; doctor counts the biases peft would have saved."""
    from loradoc.diagnose.doctor import diagnose

    for name in ("tiny-gpt2-lab",):
        adapter = REAL / "adapters" / name
        truth = truth_of(adapter, name)
        d = diagnose(str(adapter), str(config_dir(name, work)))
        f = next(f for f in d.findings if f.code == "unsaved-bias")
        assert f.severity == "error" and f.count == len(truth.unsaved) > 0
        assert d.verdict == "broken" and truth.error is None and truth.missing == truth.unexpected == 0


def test_provenance_lists_every_adapter() -> None:
    _require_data()
    assert set(provenance()) == {p.name for p in (REAL / "adapters").iterdir()}
    assert json.loads((REAL / "provenance.json").read_text())["adapters"]


@pytest.mark.parametrize(
    "name",
    [
        "roberta-base-seqcls-r7-kqv",  # SEQ_CLS on a RobertaForMaskedLM checkpoint: the head comes from the adapter
        "t5-small-summarizer",  # SEQ_2_SEQ_LM: the probe needs decoder inputs
    ],
)
def test_check_load_and_merge_on_the_published_base_class(name: str, tmp_path: Path) -> None:
    """The base checkpoint is saved by config.json's own class (as published: an MLM for RoBERTa), not the task
    class; check-load passes and the merged model equals peft's PeftModel (probe logits)."""
    import torch
    import transformers
    from click.testing import CliRunner
    from peft import PeftModel

    from loradoc.cli import cli
    from loradoc.verify.checkload import check_load, probe_inputs

    _require_data()
    cfg = json.loads((REAL / "base-configs" / f"{provenance()[name]['base']}.json").read_text())
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    getattr(transformers, cfg["architectures"][0])(config).save_pretrained(base_dir)
    shutil.copy(REAL / "base-configs" / f"{provenance()[name]['base']}.json", base_dir / "config.json")
    adapter = REAL / "adapters" / name

    cert = check_load(str(adapter), str(base_dir), device="cpu", write=False)
    assert cert.passed, [c for c in cert.data["checks"] if not c["passed"]]

    out = tmp_path / "merged"
    res = CliRunner().invoke(cli, ["convert", "merged", str(adapter), "--base", str(base_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    merged_cfg = json.loads((out / "config.json").read_text())
    cls = getattr(transformers, merged_cfg["architectures"][0])
    kw = {"num_labels": len(merged_cfg["id2label"])} if "id2label" in merged_cfg else {}
    pm = PeftModel.from_pretrained(cls.from_pretrained(base_dir, dtype=torch.float32, **kw), str(adapter)).eval()
    merged = cls.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[0, 17, 29, 41, 53, 65, 77, 2]])
    with torch.no_grad():
        want = pm(**probe_inputs(pm, ids)).logits
        got = merged(**probe_inputs(merged, ids)).logits
    scale = float(want.abs().max())
    assert float((want - got).abs().max()) <= 2e-2 * max(1.0, scale)  # merged output is bf16
