"""mlx-lm (rules.toml [runtimes.mlx_lm]): load_adapters reads its own layout only (``loradoc convert mlx-lm``
writes it), _get_classes needs a module for the model type (tables.json), and the layout has one rank / scale and
lora_a / lora_b only."""

from __future__ import annotations

from loradoc.convert.mlx_lm import PREFIXES, mlx_plan_problems
from loradoc.runtimes._model import AdapterFacts, BaseFacts, Hit, RuntimeResult, hit, settle, tables

RUNTIME = "mlx_lm"


def check(a: AdapterFacts, base: BaseFacts | None) -> RuntimeResult:
    hits: list[Hit] = []
    notes: list[str] = []
    if a.config is None:
        return settle(RUNTIME, [hit("mlx_lm.layout", fix="")], [a.config_problem or ""])
    fix = "loradoc convert mlx-lm ADAPTER --base BASE --out DIR"
    model_type = None
    if base is not None and base.model_type:
        t = tables()["mlx_lm"]
        model_type = t["model_remapping"].get(base.model_type, base.model_type)
        if model_type not in t["model_types"]:
            hits.append(hit("mlx_lm.model-type", model_type=model_type))
        elif model_type not in PREFIXES:
            fix = ""
            notes.append(f"loradoc has no verified module mapping for mlx-lm's {model_type} (it has: "
                         f"{', '.join(PREFIXES)})")  # fmt: skip
    else:
        hits.append(Hit("mlx_lm.model-type", "unknown", "base model type unknown: pass --base"))
    cfg = a.config
    if cfg.get("use_dora"):
        hits.append(hit("mlx_lm.dora"))
    if a.keys_known:
        from loradoc.model.layout import parse_key

        text = {k: v for k, v in a.keys.items() if a.is_text(k)}
        odd = [k for k in text if parse_key(k).kind not in ("lora_A", "lora_B")]
        if odd:
            hits.append(hit("mlx_lm.not-adapter-parameter", name=odd[0]))
        ranks = {parse_key(k).module: v for k, v in text.items() if parse_key(k).kind == "lora_A" and len(v) == 2}
        if len({r for r, _ in ranks.values()}) > 1:
            common = max({r for r, _ in ranks.values()}, key=lambda r: sum(1 for x, _ in ranks.values() if x == r))
            mod, (r2, n_in) = next((m, v) for m, v in ranks.items() if v[0] != common)
            hits.append(hit("mlx_lm.one-rank", name=f"{mod}.lora_a", shape=(n_in, r2), expected=(n_in, common)))
        elif any("scale" in p for p in mlx_plan_problems(cfg, a.keys, None, a.towers)):
            hits.append(hit("mlx_lm.one-rank", "modules have different scales (alpha_pattern / rank_pattern): "
                            "mlx-lm has one scale per adapter (lora_parameters.scale)"))  # fmt: skip
        towers = a.tower_keys()
        if towers and len(towers) == len(a.keys):
            hits.append(hit("mlx_lm.towers", effect="refuse", fix="", name=towers[0], count=len(towers)))
        elif towers:
            hits.append(hit("mlx_lm.towers", name=towers[0], count=len(towers)))
    elif a.weights is None:
        hits.append(Hit("mlx_lm.not-adapter-parameter", "refuse", "the adapter has no weights file"))
    else:
        notes.append(f"{a.weights}: tensors not checked (not safetensors)")
    refused = any(h.effect == "refuse" for h in hits)
    if fix and not refused:
        notes.append("convert a repaired copy when `loradoc doctor` does not call the adapter healthy")
    hits.insert(0, hit("mlx_lm.layout", fix=fix if (fix and not refused) else ""))
    res = settle(RUNTIME, hits, notes)
    if not res.fix:
        res.fix = None
    return res
