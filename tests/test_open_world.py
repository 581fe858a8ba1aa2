"""Pure-Python rules of the open-world doctor: the real load decides, stacks stay apart, plan bugs are caught."""

from __future__ import annotations

from loradoc.diagnose import findings as F
from loradoc.diagnose.doctor import reconcile, verdict_of
from loradoc.diagnose.keyfates import PeftCounts
from loradoc.model.layout import address_of
from loradoc.model.profiles import ModelSpec, num_labels_from_tensors, spec_for_adapter


def _mis() -> F.Finding:
    return F.make("mispathed-keys", F.ERROR, 28, "28 keys are saved under paths the base does not have")


def test_a_clean_real_load_is_never_overridden_by_the_static_side() -> None:
    real = PeftCounts(28, 0, 0, True)
    static = PeftCounts(0, 28, 28, False)
    out = reconcile([_mis()], real, static)
    assert verdict_of(out, real) == "healthy"
    codes = {f.code: f.severity for f in out}
    assert codes == {"mispathed-keys": F.INFO, "static-disagrees": F.INFO}
    dis = next(f for f in out if f.code == "static-disagrees")
    assert "mispathed-keys" in dis.message


def test_an_unclean_real_load_is_never_called_healthy() -> None:
    real = PeftCounts(0, 28, 28, False)
    static = PeftCounts(28, 0, 0, True)  # the static side saw nothing wrong
    out = reconcile([], real, static)
    assert verdict_of(out, real) == "broken"
    assert any(f.code == "load-mismatch" and f.severity == F.ERROR for f in out)


def test_encoder_and_decoder_layers_are_different_addresses() -> None:
    # T5, BART / M2M100, Florence-2 (remote-code layout vs the native class)
    pairs = [
        ("encoder.block.0.layer.0.SelfAttention.q", "decoder.block.0.layer.0.SelfAttention.q"),
        ("model.encoder.layers.3.self_attn.q_proj", "model.decoder.layers.3.self_attn.q_proj"),
        (
            "language_model.model.encoder.layers.0.self_attn.q_proj",
            "model.language_model.decoder.layers.0.self_attn.q_proj",
        ),
    ]
    for enc, dec in pairs:
        assert address_of(enc) != address_of(dec)
        assert address_of(enc).stack == "encoder" and address_of(dec).stack == "decoder"
    # the same stack under two wrappers is one address (what a reroot needs)
    assert address_of("language_model.model.encoder.layers.0.self_attn.q_proj") == address_of(
        "model.language_model.encoder.layers.0.self_attn.q_proj"
    )
    # BERT-style `layer.N`
    assert address_of("bert.encoder.layer.4.attention.self.query").layer == 4


def test_task_type_picks_the_model_class_and_labels_from_the_head() -> None:
    shapes = {
        "base_model.model.classifier.dense.weight": (768, 768),
        "base_model.model.classifier.out_proj.weight": (4, 768),
        "base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.weight": (8, 768),
    }
    assert num_labels_from_tensors(shapes) == 4
    assert spec_for_adapter("SEQ_CLS", shapes) == ModelSpec("SEQ_CLS", 4)
    assert spec_for_adapter("CAUSAL_LM", shapes).is_default
    assert spec_for_adapter(None, shapes).is_default
    assert spec_for_adapter("SEQ_2_SEQ_LM", {}) == ModelSpec("SEQ_2_SEQ_LM", None)
    old = {"base_model.model.score.modules_to_save.default.weight": (6, 768)}
    assert num_labels_from_tensors(old) == 6
    assert ModelSpec("SEQ_CLS", 4).cache_suffix() != ModelSpec("SEQ_CLS", 2).cache_suffix()


def test_a_plan_that_maps_two_keys_onto_one_module_is_a_plan_bug_and_is_undone(tmp_path) -> None:  # noqa: ANN001
    from loradoc.io.adapter_config import parse_adapter_config
    from loradoc.io.snapshot import AdapterSnapshot, TensorRecord
    from loradoc.model.profiles import BaseProfile, ModuleInfo
    from loradoc.repair.passes import RepairPlan, TensorAction, _undo_collisions

    keys = [
        "base_model.model.a.encoder.layers.0.q_proj.lora_A.weight",
        "base_model.model.a.decoder.layers.0.q_proj.lora_A.weight",
    ]
    cfg = parse_adapter_config({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}, source="t")
    snap = AdapterSnapshot(
        tmp_path, cfg, tmp_path / "w.safetensors", "safetensors", {k: TensorRecord(k, "F32", (8, 4)) for k in keys}, "t"
    )
    prof = BaseProfile("b", "X", "x", "0", "0", {"m.q_proj": ModuleInfo("Linear", "linear", 4, 4)}, 1, [], {})
    plan = RepairPlan(snap, prof, {k: TensorAction(k, k) for k in keys}, dict(cfg.raw))
    for k in keys:
        plan.rename(k, "base_model.model.m.q_proj.lora_A.weight", "reroot-keys", "test")
    _undo_collisions(plan, "reroot-keys")
    assert [a.target for a in plan.actions.values()] == keys  # left as they were
    assert [f.code for f in plan.problems] == ["plan-collision"] and plan.problems[0].count == 2
