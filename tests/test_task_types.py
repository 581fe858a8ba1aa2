"""Every peft task type on a tiny random BERT / T5 / GPT-2: doctor's verdict and counts equal a real
``PeftModel.from_pretrained`` on the class the task type implies (adapters made with real peft), and check-load
passes on a base checkpoint saved by config.json's own class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CASES = [
    # (base family, task type, LoRA targets, labels)
    ("bert", "TOKEN_CLS", ["query", "value"], 5),
    ("bert", "QUESTION_ANS", ["query", "value"], None),
    ("bert", "FEATURE_EXTRACTION", ["query", "value"], None),
    ("bert", "SEQ_CLS", ["query", "value"], 3),
    ("t5", "SEQ_2_SEQ_LM", ["q", "v"], None),
    ("gpt2", "SEQ_CLS", ["c_attn"], 4),
]


def _config(family: str) -> dict:
    import transformers

    if family == "bert":
        c = transformers.BertConfig(
            vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        c.architectures = ["BertForMaskedLM"]
    elif family == "t5":
        c = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        c.architectures = ["T5ForConditionalGeneration"]
    else:
        c = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)
        c.architectures = ["GPT2LMHeadModel"]
    return c.to_dict()


def _task_model(cfg: dict, task: str, labels: int | None):  # noqa: ANN202
    import transformers
    from realload import TASK_AUTO_CLASS

    plain = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id")}
    c = transformers.AutoConfig.for_model(**{**plain, **({"num_labels": labels} if labels else {})})
    if task == "SEQ_2_SEQ_LM":
        return getattr(transformers, cfg["architectures"][0])(c)
    return getattr(transformers, TASK_AUTO_CLASS[task]).from_config(c)


@pytest.mark.parametrize(("family", "task", "targets", "labels"), CASES, ids=[f"{f}-{t}" for f, t, _, _ in CASES])
def test_task_type_doctor_equals_real_load_and_check_load_passes(
    family: str, task: str, targets: list[str], labels: int | None, tmp_path: Path
) -> None:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from realload import random_base, real_truth

    from loradoc.diagnose.doctor import diagnose
    from loradoc.verify.checkload import check_load

    cfg = _config(family)
    base = tmp_path / "base"
    torch.manual_seed(0)
    # the published base: no task head (bert-base-uncased's checkpoint is BertForPreTraining's: pooler included)
    cls = transformers.BertForPreTraining if family == "bert" else getattr(transformers, cfg["architectures"][0])
    cls(transformers.AutoConfig.for_model(**cfg)).save_pretrained(base)
    (base / "config.json").write_text(json.dumps(cfg))

    torch.manual_seed(1)
    pm = get_peft_model(_task_model(cfg, task, labels), LoraConfig(task_type=task, r=4, target_modules=targets))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapter = tmp_path / "adapter"
    pm.save_pretrained(adapter)

    d = diagnose(str(adapter), str(base))
    truth = real_truth(adapter, random_base(base / "config.json", adapter))
    assert truth.healthy and d.verdict == "healthy", (truth, d.verdict, [(f.code, f.message) for f in d.findings])
    assert (d.peft.loaded, d.peft.missing, d.peft.unexpected) == (truth.loaded, truth.missing, truth.unexpected)
    cert = check_load(str(adapter), str(base), device="cpu", write=False)
    assert cert.passed, [c for c in cert.data["checks"] if not c["passed"]]
