"""Rewrite loradoc/runtimes/tables.json from the runtimes' own published code (the versions rules.toml pins).

    python scripts/refresh_runtime_tables.py          # rewrite
    python scripts/refresh_runtime_tables.py --check  # exit 1 when the file differs (tests/test_runtimes.py does this)

vLLM: every architecture of vllm/model_executor/models/registry.py, with whether its class implements SupportsLoRA
and supports_tower_connector_lora (read with ast from the wheel); the allowed --max-lora-rank values
(vllm/config/lora.py MaxLoRARanks). mlx-lm: the model types it has a module for (mlx_lm/models/*.py) and
MODEL_REMAPPING. llama.cpp: the architectures its converters register (ModelBase.register in convert_hf_to_gguf.py
and conversion/*.py of the llama-cpp-python sdist's vendor/llama.cpp).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

OUT = REPO / "loradoc" / "runtimes" / "tables.json"


def build() -> dict:
    import runtime_sources as rs
    from llama_cpp_source import llama_cpp_source_dir, llama_cpp_version

    vllm = rs.vllm_architectures()
    mlx_src = rs.source_dir("mlx-lm")
    models = sorted(p.stem for p in (mlx_src / "mlx_lm/models").glob("*.py") if not p.stem.startswith("_"))
    remap: dict[str, str] = {}
    tree = ast.parse((mlx_src / "mlx_lm/utils.py").read_text())
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "MODEL_REMAPPING" for t in n.targets):
            remap = ast.literal_eval(n.value)
    ll = llama_cpp_source_dir()
    text = "\n".join(p.read_text() for p in [ll / "convert_hf_to_gguf.py", *sorted((ll / "conversion").glob("*.py"))]
                     if p.is_file())  # fmt: skip
    archs: set[str] = set()
    for m in re.finditer(r"@ModelBase\.register\(([^)]*)\)", text):
        archs.update(re.findall(r'"([A-Za-z0-9_]+)"', m.group(1)))
    return {
        "vllm": {
            "version": rs.pinned_version("vllm"),
            "max_lora_ranks": list(rs.vllm_max_lora_ranks()),
            "architectures": dict(sorted(vllm.items())),
        },
        "sglang": {
            "version": rs.pinned_version("sglang"),
            "default_hidden_dim_modules": rs.sglang_default_hidden_dim_modules(),
            "params_mapping": rs.sglang_params_mapping(),
            "architectures": rs.sglang_architectures(),
        },
        "mlx_lm": {"version": rs.pinned_version("mlx-lm"), "model_types": models, "model_remapping": remap},
        "llama_cpp": {"version": llama_cpp_version(), "converter_architectures": sorted(archs)},
    }


def dumps(data: dict) -> str:
    """JSON with one line per table entry (architectures, model types): short, diff-friendly."""
    out = ["{"]
    for i, (rt, d) in enumerate(data.items()):
        out.append(f"  {json.dumps(rt)}: {{")
        for j, (k, v) in enumerate(d.items()):
            end = "," if j < len(d) - 1 else ""
            if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
                out.append(f"    {json.dumps(k)}: {{")
                rows = [f"      {json.dumps(a)}: {json.dumps(e, sort_keys=True)}" for a, e in v.items()]
                out.append(",\n".join(rows))
                out.append(f"    }}{end}")
            else:
                out.append(f"    {json.dumps(k)}: {json.dumps(v)}{end}")
        out.append("  }" + ("," if i < len(data) - 1 else ""))
    out.append("}")
    return "\n".join(out) + "\n"


def main() -> int:
    data = dumps(build())
    if "--check" in sys.argv:
        same = OUT.is_file() and OUT.read_text() == data
        print("tables.json is current" if same else "tables.json differs from the runtimes' code: rerun the script")
        return 0 if same else 1
    OUT.write_text(data)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
