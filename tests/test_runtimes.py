"""loradoc.runtimes judged by the runtimes' own code.

- vLLM 0.34.0 / SGLang 0.5.23: their validation functions, taken from the pinned wheels (``runtime_sources``), run
  on generated configs and keys; our verdicts and messages must match what they raise.
- tables.json must equal what scripts/refresh_runtime_tables.py reads from the same wheels today.
- llama.cpp: adapters our rules say load after ``loradoc convert gguf-lora`` are converted and loaded in
  llama-cpp-python; those they refuse are refused by the converter.
- mlx-lm: PEFT -> mlx-lm -> PEFT is bit-identical, and the converted adapter is loaded by mlx-lm's own
  ``load_adapters`` (mlx's CPU build, installed into a private folder, in a subprocess) and gives peft's delta.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import runtime_sources as rs

from loradoc.runtimes import FLAGS, LOADS, REFUSED, check_runtimes
from loradoc.runtimes import sglang as rt_sglang
from loradoc.runtimes import vllm as rt_vllm
from loradoc.runtimes._model import AdapterFacts, BaseFacts, tables

REPO = Path(__file__).resolve().parent.parent
REAL = REPO.parent / "shared" / "data" / "real-adapters"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real-adapters")


def _facts(cfg: dict[str, Any] | None, keys: dict[str, tuple[int, ...]] | None = None, **kw: Any) -> AdapterFacts:
    return AdapterFacts(Path("/adapters/a"), cfg, None, "adapter_model.safetensors", keys or {}, keys is not None,
                        kw.get("added_tokens"))  # fmt: skip


def _base(arch: str, model_type: str = "llama", vocab: int | None = 1000, tie: bool | None = False) -> BaseFacts:
    return BaseFacts(arch, arch, model_type, tie, vocab)


# ------------------------------------------------------------------------------------------------- tables


def test_tables_match_the_runtimes_code() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import refresh_runtime_tables as refresh
    finally:
        sys.path.pop(0)
    built = json.loads(json.dumps(refresh.build()))
    assert built == tables(), "loradoc/runtimes/tables.json is stale: run scripts/refresh_runtime_tables.py"


# ------------------------------------------------------------------------------------------------- vLLM

VLLM_AXES: dict[str, list[Any]] = {
    "r": [1, 8, 16, 17, 64, 320, 400, 512, 600, 0, -2],
    "rank_pattern": [None, {"q_proj": 32}, {"v_proj": 1024}, {"k_proj": 0}],
    "use_bdlora": [None, {"nblocks": 2}],
    "use_dora": [False, True],
    "modules_to_save": [None, ["lm_head"], ["classifier"], ["score", "embed_tokens"]],
    "task_type": ["CAUSAL_LM", "SEQ_CLS", None],
    "bias": ["none", "all", "lora_only"],
    "lora_bias": [False, True],
    "init_lora_weights": [True, False, "gaussian", "pissa", "olora", "loftq", "eva"],
    "alora_invocation_tokens": [None, [1, 2]],
    "layer_replication": [None, [[0, 2]]],
    "use_qalora": [False, True],
    "target_modules": [["q_proj", "v_proj"], "all-linear", r".*\.(q_proj|v_proj)"],
}


def _vllm_configs(n: int = 600) -> list[dict[str, Any]]:
    rnd = random.Random(18)
    keys = list(VLLM_AXES)
    out = [{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}]
    for _ in range(n):
        cfg: dict[str, Any] = {"lora_alpha": 16}
        for k in keys:
            v = VLLM_AXES[k][0] if rnd.random() < 0.6 else rnd.choice(VLLM_AXES[k])
            if v is not None:
                cfg[k] = v
        out.append(cfg)
    # every single feature on its own, on a plain config
    for k, vals in VLLM_AXES.items():
        for v in vals:
            out.append({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], k: v})
    for missing in ("r", "lora_alpha", "target_modules"):
        cfg = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        del cfg[missing]
        out.append(cfg)
    return out


def _vllm_real(cfg: dict[str, Any], max_lora_rank: int) -> str | None:
    helper, lora_config = rs.vllm_peft_helper()
    try:
        h = helper.from_dict(dict(cfg))
        h.validate_legal(lora_config(max_lora_rank))
    except ValueError as e:
        return str(e)
    return None


PEFT_HELPER_RULES = {
    "vllm.modules-to-save", "vllm.dora", "vllm.lora-bias", "vllm.init", "vllm.alora", "vllm.layer-replication",
    "vllm.bdlora", "vllm.qalora", "vllm.max-lora-rank", "vllm.bias", "vllm.required-fields", "vllm.rank-positive",
    "vllm.rank-pattern-positive",
}  # fmt: skip


def test_vllm_rules_agree_with_peft_helper() -> None:
    """PEFTHelper.from_dict + validate_legal with the default --max-lora-rank (16), and with the value our rules
    ask for: same refusals, same message text, and the flag is enough."""
    base = _base("LlamaForCausalLM")
    configs = _vllm_configs()
    assert len(configs) > 600
    seen = set()
    for cfg in configs:
        ours = rt_vllm.check(_facts(cfg), base)
        hits = [h for h in ours.hits if h.rule in PEFT_HELPER_RULES]
        seen.update(h.rule for h in hits)
        real = _vllm_real(cfg, 16)
        if not hits:
            assert real is None, (cfg, real)
            assert ours.verdict == LOADS
            continue
        assert real is not None, (cfg, [h.message for h in hits])
        if hits[0].rule == "vllm.required-fields":
            assert real.startswith("Missing required configuration fields") and cfg.keys().isdisjoint(
                ast.literal_eval(real.split(": ", 1)[1])  # the set literal vLLM prints
            )
            continue
        assert real == " ".join(h.message for h in hits), cfg
        if all(h.effect == "flag" for h in hits):
            assert ours.verdict == FLAGS
            need = int(ours.flags[-1].split()[-1])
            assert ours.flags == ["--enable-lora", f"--max-lora-rank {need}"]
            assert _vllm_real(cfg, need) is None  # the flag we name makes it load
            smaller = [v for v in tables()["vllm"]["max_lora_ranks"] if v < need]
            assert smaller and _vllm_real(cfg, smaller[-1]) is not None  # and it is the smallest that does
        else:
            assert ours.verdict == REFUSED
            top = tables()["vllm"]["max_lora_ranks"][-1]
            if any(h.rule == "vllm.max-lora-rank" and h.effect == "flag" for h in hits):
                # no flag rescues it: still refused at the largest --max-lora-rank
                assert _vllm_real(cfg, top) is not None
    assert seen >= PEFT_HELPER_RULES, PEFT_HELPER_RULES - seen


VLLM_KEYS = [
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.language_model.layers.3.mlp.down_proj.lora_B.weight",
    "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.lora_A.weight",
    "base_model.model.model.embed_tokens.lora_embedding_A",
    "base_model.model.model.embed_tokens.lora_embedding_B",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "base_model.model.score.weight",
    "base_model.model.classifier.weight",
    "base_model.model.classifier.bias",
    "base_model.model.classifier.dense.weight",
    "base_model.model.lm_head.weight",
    "base_model.model.model.embed_tokens.weight",
    "base_model.model.model.embed_tokens.base_layer.weight",
    "base_model.model.lm_head.base_layer.weight",
    "base_model.model.classifier.base_layer.bias",
    "model.layers.0.self_attn.q_proj.lora_A.weight",
    "transformer.h.0.attn.c_attn.lora_A.weight",
    "base_model.model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "lora_A.weight",
    "weight",
]


def test_vllm_key_parsing_agrees_with_parse_fine_tuned_lora_name() -> None:
    real = rs.vllm_parse_fine_tuned_lora_name()
    real_embed = rs.vllm_is_base_embedding_weights()
    for key in VLLM_KEYS:
        assert rt_vllm.is_base_embedding_weights(key) == real_embed(key), key
        try:
            want, err = real(key)[0], None
        except ValueError as e:
            want, err = None, str(e)
        assert rt_vllm.parse_lora_name(key) == want, key
        if err is not None:
            assert rt_vllm.unsupported_key_message(key) == err


def test_vllm_towers_and_architectures() -> None:
    cfg = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    lm = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    tower = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.lora_A.weight"
    keys = {lm: (8, 16), tower: (8, 16)}
    g4 = rt_vllm.check(_facts(cfg, keys), _base("Gemma4ForConditionalGeneration", "gemma4"))
    assert g4.verdict == FLAGS and g4.flags == ["--enable-lora", "--enable-tower-connector-lora"]
    # Gemma4ForCausalLM has no towers to wrap: tower LoRAs there are read and never applied
    text = rt_vllm.check(_facts(cfg, keys), _base("Gemma4ForCausalLM", "gemma4_text"))
    assert text.verdict == LOADS and text.warnings and text.warnings[0].rule == "vllm.towers-unsupported"
    gpt2 = rt_vllm.check(_facts(cfg, {}), _base("GPT2LMHeadModel", "gpt2"))
    assert gpt2.verdict == REFUSED and "SupportsLoRA" in gpt2.reason()
    seq = rt_vllm.check(_facts({**cfg, "task_type": "SEQ_CLS"}, {}), _base("BertForMaskedLM", "bert"))
    assert seq.verdict == LOADS  # served as BertForSequenceClassification, which implements SupportsLoRA
    assert rt_vllm.check(_facts(cfg, {}), None).verdict == "unknown"


# ------------------------------------------------------------------------------------------------ SGLang

SGLANG_AXES: dict[str, list[Any]] = {
    "r": [8, 64, 256],
    "use_dora": [False, True],
    "target_modules": [
        ["q_proj", "v_proj"],
        ["q_proj", "out_proj"],
        ["self_attn.o_proj", "mlp.down_proj"],
        ["c_attn"],
        "all-linear",
        "all",
        r".*\.(q_proj|v_proj)",
        "q_proj",
    ],  # fmt: skip
    "modules_to_save": [None, ["lm_head"]],
    "bias": ["none", "all"],
}


def _sglang_real(
    cfg: dict[str, Any], added: dict[str, int] | None, vocab: int, arch_entry: dict[str, Any]
) -> str | None:
    lora_config = rs.sglang_lora_config_class()
    try:
        c = lora_config.from_dict(dict(cfg), added_tokens_config=added, base_vocab_size=vocab)
    except KeyError as e:
        return f"KeyError: {e}"
    try:
        rs.sglang_validate_new_adapter()(c, "a")
        norm = rs.sglang_get_normalized_target_modules()(c.target_modules)
    except ValueError as e:
        return str(e)
    if not arch_entry["get_hidden_dim"] and norm != {"all"}:
        conf = types.SimpleNamespace(hidden_size=16, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                     intermediate_size=32, vocab_size=vocab, kv_lora_rank=4, q_lora_rank=4,
                                     qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)  # fmt: skip
        fn = rs.sglang_get_default_hidden_dim()
        for name in sorted(norm):
            try:
                fn(name, conf, 0)
            except NotImplementedError as e:
                return str(e)
            except AttributeError:
                pass
    return None


def test_sglang_rules_agree_with_its_validation() -> None:
    arch = "LlamaForCausalLM"
    entry = tables()["sglang"]["architectures"][arch]
    assert entry["get_hidden_dim"] is False
    base = _base(arch, vocab=1000)
    seen = set()
    combos = list(itertools.product(*SGLANG_AXES.values()))
    for values, added in itertools.product(combos, [None, {"<x>": 5}, {"<new>": 1000}]):
        cfg = {"lora_alpha": 16, **{k: v for k, v in zip(SGLANG_AXES, values, strict=True) if v is not None}}
        ours = rt_sglang.check(_facts(cfg, added_tokens=added), base)
        real = _sglang_real(cfg, added, 1000, entry)
        refusals = [h for h in ours.hits if h.effect == "refuse"]
        seen.update(h.rule for h in ours.hits)
        if real is None:
            assert not refusals and ours.verdict == LOADS, (cfg, added, [h.message for h in refusals])
        else:
            assert refusals, (cfg, added, real)
            if refusals[0].rule == "sglang.hidden-dim":
                assert real.startswith("get_hidden_dim not implemented for "), real
                assert any(h.rule == "sglang.hidden-dim" for h in refusals)
            else:
                assert refusals[0].message == real, (cfg, added)
    for missing in ("r", "lora_alpha", "target_modules"):
        cfg = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        del cfg[missing]
        ours = rt_sglang.check(_facts(cfg), base)
        assert ours.hits[0].message == _sglang_real(cfg, None, 1000, entry)
    assert {"sglang.dora", "sglang.added-tokens", "sglang.target-modules-string", "sglang.hidden-dim",
            "sglang.modules-to-save"} <= seen  # fmt: skip


def test_sglang_narrow_targets_fix_gives_a_list_sglang_takes() -> None:
    """The fix for a regex target_modules (repair --only narrow-targets) writes full module paths: SGLang's
    get_normalized_target_modules takes them."""
    norm = rs.sglang_get_normalized_target_modules()(["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"])
    assert norm == {"qkv_proj", "gate_up_proj"}


def test_sglang_towers_on_gemma4() -> None:
    cfg = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    keys = {"base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.lora_A.weight": (8, 16),
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight": (8, 16)}  # fmt: skip
    res = rt_sglang.check(_facts(cfg, keys), _base("Gemma4ForConditionalGeneration", "gemma4"))
    assert res.verdict == LOADS and res.warnings[0].rule == "sglang.towers"


# ------------------------------------------------------------------------------------------------ real adapters


def _real_cases() -> list[tuple[str, str | None]]:
    prov = json.loads((REAL / "provenance.json").read_text())
    bases = dict(prov["bases"])
    out = []
    for a in prov["adapters"]:
        b = bases.get(a.get("base"))
        out.append((a["name"], str(REAL / b["config"]) if b else None))
    return out


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/real-adapters")
def test_every_real_adapter_gets_a_row() -> None:
    rows = {}
    for name, base in _real_cases():
        rep = check_runtimes(REAL / "adapters" / name, base)
        assert [r.runtime for r in rep.results] == ["vllm", "sglang", "llama_cpp", "mlx_lm"]
        rows[name] = {r.runtime: r for r in rep.results}
    assert len(rows) == 42
    assert rows["no-adapter-config"]["vllm"].verdict == REFUSED
    assert rows["tiny-gpt2-lab"]["vllm"].reason() == "Adapter bias is not supported."
    assert rows["tinyllama-therapist"]["vllm"].verdict == LOADS
    assert rows["gemma-3-270m-it-logo"]["llama_cpp"].fix.startswith("loradoc convert gguf-lora")


# ------------------------------------------------------------------------------------------------ llama.cpp


def test_llama_cpp_rules_agree_with_a_real_load(example_root: Any, tmp_path: Path) -> None:
    """What our rules say loads after `loradoc convert gguf-lora` does load in llama.cpp (llama-cpp-python), and
    what they refuse, the conversion refuses."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from builders import rewrite_adapter

    from loradoc.convert.gguf_lora import convert_gguf_lora
    from loradoc.convert.gguf_model import convert_gguf
    from loradoc.errors import BadInputError

    ex = example_root
    base_dir = ex.bases["tiny-gemma3"]
    base_gguf = tmp_path / "base.gguf"
    convert_gguf(None, str(base_dir), base_gguf, outtype="f32")
    import torch

    healthy = ex.adapters["healthy-gemma3"]
    k = 64 // json.loads((healthy / "adapter_config.json").read_text())["r"]
    r64 = rewrite_adapter(healthy, tmp_path / "r64", config_update={"lora_alpha": 128, "r": 64},
                          transform=lambda n, t: torch.cat([t] * k, dim=0 if "lora_A" in n else 1))  # fmt: skip
    towers = ex.adapters["seed-medgemma-full-lora"]
    dora = rewrite_adapter(healthy, tmp_path / "dora", config_update={"use_dora": True},
                           add={"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector":
                                torch.ones(64)})  # fmt: skip
    bias = rewrite_adapter(healthy, tmp_path / "bias", config_update={"lora_bias": True},
                           add={"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.bias":
                                torch.zeros(64)})  # fmt: skip
    for name, adapter, loads in [("healthy", healthy, True), ("r64", r64, True), ("towers", towers, True),
                                 ("dora", dora, False), ("bias", bias, False)]:  # fmt: skip
        res = check_runtimes(adapter, str(base_dir)).get("llama_cpp")
        assert res.verdict == REFUSED  # a PEFT directory is never a llama.cpp adapter as is
        if loads:
            assert res.fix and res.fix.startswith("loradoc convert gguf-lora"), (name, res.to_json())
            out = tmp_path / f"{name}.gguf"
            conv = convert_gguf_lora(str(adapter), str(base_dir), out, check_health=False)
            assert bool(conv.not_included) == (name == "towers") == bool(res.warnings)
            llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(out), n_ctx=32, verbose=False)
            llm.close()
        else:
            assert res.fix is None and "Not a lora_A or lora_B tensor" in res.reason(), (name, res.to_json())
            with pytest.raises(BadInputError):
                convert_gguf_lora(str(adapter), str(base_dir), tmp_path / f"{name}.gguf", check_health=False)


# ------------------------------------------------------------------------------------------------ mlx-lm


def test_mlx_round_trip_is_bit_identical(example_root: Any, tmp_path: Path) -> None:
    from loradoc.convert.mlx_lm import mlx_to_peft, peft_to_mlx
    from loradoc.io.safetensors import read_header, read_tensor_bytes

    for name, mt in [("healthy-gemma3", "gemma3"), ("seed-medgemma-full-lora", "gemma3"),
                     ("healthy-gemma4-text", "gemma4")]:  # fmt: skip
        src = example_root.adapters[name]
        if name == "healthy-gemma4-text":
            mt = "gemma3_text"  # text-only keys: model.layers.N (mlx-lm's Gemma text models use the same paths)
        mlx = peft_to_mlx(src, tmp_path / f"{name}-mlx", model_type=mt)
        back = mlx_to_peft(tmp_path / f"{name}-mlx", tmp_path / f"{name}-back")
        h0 = read_header(src / "adapter_model.safetensors")
        h1 = read_header(back.out / "adapter_model.safetensors")
        kept = [k for k in h0.tensors if k not in mlx.not_included]
        assert list(h1.tensors) == [k for k in (t.name for t in h0.ordered_by_offset()) if k in kept] or set(
            h1.tensors
        ) == set(kept)
        for k in kept:
            assert read_tensor_bytes(h0, k) == read_tensor_bytes(h1, k), k
            assert h0.tensors[k].dtype == h1.tensors[k].dtype and h0.tensors[k].shape == h1.tensors[k].shape
        assert json.loads((back.out / "adapter_config.json").read_text()) == json.loads(
            (src / "adapter_config.json").read_text()
        )
        if not mlx.not_included:
            assert (back.out / "adapter_model.safetensors").read_bytes() == (
                src / "adapter_model.safetensors"
            ).read_bytes()


MLX_MODELS = {
    "llama": {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32,
              "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "vocab_size": 64},
    "gpt2": {"model_type": "gpt2", "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_positions": 32,
             "layer_norm_epsilon": 1e-5, "vocab_size": 64},
    "gemma3_text": {"model_type": "gemma3_text", "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 64},
    "gemma3": {"model_type": "gemma3", "vocab_size": 64,
               "text_config": {"model_type": "gemma3_text", "hidden_size": 16, "num_hidden_layers": 2,
                               "intermediate_size": 32, "head_dim": 8, "num_attention_heads": 2,
                               "num_key_value_heads": 1}},
    "gemma4": {"model_type": "gemma4", "vocab_size": 64,
               "text_config": {"model_type": "gemma4_text", "hidden_size": 16, "num_hidden_layers": 2,
                               "intermediate_size": 32, "head_dim": 8, "global_head_dim": 8,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64,
                               "vocab_size_per_layer_input": 64, "hidden_size_per_layer_input": 4,
                               "num_kv_shared_layers": 0, "layer_types": ["sliding_attention", "full_attention"]}},
}  # fmt: skip

_MLX_SCRIPT = r"""
import importlib, json, sys
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
cfg = json.loads(sys.argv[2])
arch = importlib.import_module(f"mlx_lm.models.{cfg['model_type']}")
model = arch.Model(arch.ModelArgs.from_dict(cfg))
if sys.argv[1] == "shapes":
    out = {}
    for i, layer in enumerate(model.layers):
        for name, m in layer.named_modules():
            if type(m).__name__ == "Linear":
                out[f"{i}|{name}"] = list(m.weight.shape)
    print(json.dumps(out))
else:
    from mlx_lm.tuner.utils import load_adapters
    model = load_adapters(model, sys.argv[3])
    model.eval()
    res = {}
    x = mx.array(np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32))
    for i, layer in enumerate(model.layers):
        for name, m in layer.named_modules():
            if type(m).__name__ == "LoRALinear":
                xi = x[:, : m.linear.weight.shape[1]]
                res[f"{i}|{name}"] = np.array(m(xi) - m.linear(xi)).tolist()
    print(json.dumps(res))
"""


def _mlx(env_dir: Path, *args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(env_dir)}
    proc = subprocess.run([sys.executable, "-c", _MLX_SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model_type", list(MLX_MODELS))
def test_mlx_lm_loads_the_converted_adapter(model_type: str, tmp_path: Path) -> None:
    """A PEFT adapter on every linear of a tiny mlx-lm model's layers, converted, loaded by mlx-lm's own
    load_adapters; each LoRALinear adds exactly peft's s * x A^T B^T."""
    from safetensors.numpy import save_file

    from loradoc.convert.mlx_lm import _map, peft_to_mlx

    env_dir = rs.mlx_install_dir()
    if env_dir is None:
        pytest.fail("mlx's CPU build did not install on this platform")
    cfg = MLX_MODELS[model_type]
    shapes = _mlx(env_dir, "shapes", json.dumps(cfg))
    wrapped = "language_model.model.layers"
    layers_path = {"gpt2": "model.h", "gemma3": wrapped, "gemma4": wrapped}.get(model_type, "model.layers")
    rng = np.random.default_rng(1)
    r, alpha = 4, 8
    tensors, expect = {}, {}
    for key, (out_f, in_f) in shapes.items():
        i, name = key.split("|")
        hf = _map(f"{layers_path}.{i}.{name}", model_type, reverse=True)
        a = rng.standard_normal((r, in_f)).astype(np.float32)
        b = rng.standard_normal((out_f, r)).astype(np.float32)
        tensors[f"base_model.model.{hf}.lora_A.weight"] = a
        tensors[f"base_model.model.{hf}.lora_B.weight"] = b
        expect[key] = (a, b)
    src = tmp_path / "peft"
    src.mkdir()
    save_file(tensors, src / "adapter_model.safetensors", metadata={"format": "pt"})
    mods = sorted({k.split("|")[1].split(".")[-1] for k in shapes})
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                         "lora_dropout": 0.0, "target_modules": mods}))  # fmt: skip
    base_cfg = tmp_path / "config.json"
    base_cfg.write_text(json.dumps({"architectures": ["X"], **cfg}))
    rep = check_runtimes(src, str(base_cfg)).get("mlx_lm")
    assert rep.fix and rep.fix.startswith("loradoc convert mlx-lm"), rep.to_json()
    res = peft_to_mlx(src, tmp_path / "mlx", model_type=model_type)
    assert res.tensors == len(tensors) and res.scale == alpha / r
    got = _mlx(env_dir, "load", json.dumps(cfg), str(tmp_path / "mlx"))
    assert set(got) == set(shapes)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for key, (a, b) in expect.items():
        want = (alpha / r) * (x[:, : a.shape[1]] @ a.T @ b.T)
        np.testing.assert_allclose(np.array(got[key]), want, rtol=1e-4, atol=1e-4)


def test_mlx_refusals() -> None:
    from loradoc.convert.mlx_lm import mlx_plan_problems

    keys = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (8, 16),
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": (4, 16)}  # fmt: skip
    assert any("one rank" in p for p in mlx_plan_problems({"lora_alpha": 8}, keys, "llama"))
    assert any("DoRA" in p for p in mlx_plan_problems({"use_dora": True}, {}, "llama"))
    assert any("model type" in p for p in mlx_plan_problems({}, {}, "bloom"))
    res = check_runtimes.__globals__["_CHECKS"]["mlx_lm"](
        _facts({"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"]}, keys), _base("BloomForCausalLM", "bloom")
    )
    assert res.verdict == REFUSED and res.fix is None and res.reason() == "Model type bloom not supported."


# ------------------------------------------------------------------------------------------------ registry + CLI


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/real-adapters")
def test_runtimes_recorded_shown_and_filtered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_cli import run_cli

    from loradoc.registry import Registry, load_manifest

    index = tmp_path / "registry.sqlite"
    llama = REAL / "adapters" / "tinyllama-therapist"
    gpt2 = REAL / "adapters" / "tiny-gpt2-lab"
    code, out, err = run_cli(["runtimes", str(llama), "--base", str(REAL / "base-configs" / "tinyllama-1.1b.json"),
                              "--record", "--registry", str(index), "--json"], capsys)  # fmt: skip
    assert code == 1, err  # llama.cpp and mlx-lm need a conversion first
    rep = json.loads(out)
    assert rep["runtimes"]["vllm"]["verdict"] == "loads" and rep["runtimes"]["mlx_lm"]["verdict"] == "refused"
    code, out, err = run_cli(["runtimes", str(gpt2), "--base", str(REAL / "base-configs" / "tiny-gpt2.json"),
                              "--record", "--registry", str(index)], capsys)  # fmt: skip
    assert code == 1 and "Adapter bias is not supported." in out and "vLLM 0.34.0" in out
    reg = Registry(index)
    try:
        ids = {r.id: r for r in reg.list()}
        assert ids[str(llama)].runtimes == {"vllm": "loads", "sglang": "loads", "llama_cpp": "refused",
                                            "mlx_lm": "refused"}  # fmt: skip
        assert [r.id for r in reg.list(runtime="vllm")] == [str(llama)]
        assert [r.id for r in reg.list(runtime="vllm:refused")] == [str(gpt2)]
        m = reg.show(str(llama))
        rec = m.current_revision.runtimes
        assert [x.runtime for x in rec] == ["vllm", "sglang", "llama_cpp", "mlx_lm"]
        assert rec[3].fix and rec[3].fix.startswith("loradoc convert mlx-lm") and rec[0].version == "0.34.0"
        # the manifest on disk round-trips (TOML)
        again = load_manifest(reg.locate(str(llama))[2])
        assert again.to_dict() == m.to_dict()
    finally:
        reg.close()
    code, out, _ = run_cli(["registry", "list", "--runtime", "vllm", "--registry", str(index)], capsys)
    assert code == 0 and str(llama) in out and "vllm=loads" in out and str(gpt2) not in out
    code, out, _ = run_cli(["registry", "show", str(llama), "--registry", str(index)], capsys)
    assert code == 0 and "[[revisions.runtimes]]" in out and 'runtime = "mlx_lm"' in out
    code, _, err = run_cli(["registry", "list", "--runtime", "tgi", "--registry", str(index)], capsys)
    assert code == 2 and "unknown runtime" in err


def test_rules_name_real_code() -> None:
    """Every rule names a file of its runtime's release that exists; a verbatim message's fixed parts occur in
    that file (so a message is never paraphrased)."""
    import re

    from llama_cpp_source import llama_cpp_source_dir

    from loradoc.runtimes import rules_data

    roots = {
        "vllm": rs.source_dir("vllm"),
        "sglang": rs.source_dir("sglang"),
        "mlx_lm": rs.source_dir("mlx-lm"),
        "llama_cpp": llama_cpp_source_dir(),
    }
    checked = 0
    for r in rules_data()["rules"]:
        files = sorted(roots[r["runtime"]].glob(r["file"]))
        assert files, (r["id"], r["file"])
        if not r.get("verbatim", True):
            continue
        text = "\n".join(f.read_text() for f in files)
        text = re.sub(r"[\"']\s*\n\s*f?[\"']", "", text)  # adjacent literals ("a "\n f"b") read as one
        text = text.replace('\\"', '"')
        for part in re.split(r"\{[^}]*\}", r["message"]):
            part = part.strip()
            if len(part) >= 10:
                assert part in text or part.replace('"', "'") in text, (r["id"], part)
                checked += 1
    assert checked >= 30


_MLX_REAL = r"""
import json, sys
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import _get_classes
for cfg_path, adapter in json.loads(sys.argv[1]):
    cfg = json.load(open(cfg_path))
    model_cls, args_cls = _get_classes(cfg)
    load_adapters(model_cls(args_cls.from_dict(cfg)), adapter)  # raises on any name or shape it does not take
print("ok")
"""


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/real-adapters")
def test_real_adapters_convert_to_mlx_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real adapters our rules send to `loradoc convert mlx-lm`: converted by the CLI, loaded by mlx-lm on a model
    built from their base's config (random weights), and converted back to the very same file."""
    from test_cli import run_cli

    env_dir = rs.mlx_install_dir()
    if env_dir is None:
        pytest.fail("mlx's CPU build did not install on this platform")
    pairs = []
    for name, cfg in [("smollm-135m-medmeadow-peft012", "smollm-135m"), ("gpt2-tigrinya", "gpt2"),
                      ("gemma-3-270m-it-logo", "gemma-3-270m")]:  # fmt: skip
        src, base = REAL / "adapters" / name, str(REAL / "base-configs" / f"{cfg}.json")
        res = check_runtimes(src, base).get("mlx_lm")
        assert res.verdict == REFUSED and res.fix and res.fix.startswith("loradoc convert mlx-lm"), res.to_json()
        code, _, err = run_cli(["convert", "mlx-lm", str(src), "--base", base, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        code, _, err = run_cli(
            ["convert", "mlx-lm", str(tmp_path / name), "--out", str(tmp_path / f"{name}-b")], capsys
        )
        assert code == 0, err
        back = (tmp_path / f"{name}-b" / "adapter_model.safetensors").read_bytes()
        assert back == (src / "adapter_model.safetensors").read_bytes()
        pairs.append((base, str(tmp_path / name)))
    env = {**os.environ, "PYTHONPATH": str(env_dir)}
    proc = subprocess.run([sys.executable, "-c", _MLX_REAL, json.dumps(pairs)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
