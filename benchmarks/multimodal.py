"""Agreement of doctor and repair with real peft loads on multimodal bases other than Gemma, one row per architecture.

The tiny bases and adapter variants of tests/multimodal_bases.py (Qwen2.5-VL, LLaVA, PaliGemma, Idefics3, Mistral3;
healthy, tower, textpath, legacy, noprefix, tower4x). For each adapter: does doctor's verdict equal the one the
real ``PeftModel.from_pretrained`` implies, do the dry-load counts and the static prediction equal the real load's,
and does every adapter the real load refuses repair to a clean real load whose LoRA parameters are the trained
adapter's, at the modules it was trained on?

Usage: python benchmarks/multimodal.py [--arch NAME ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _trained_modules_loaded(adapter: Path, source: Path, base: Path) -> bool:
    """The LoRA parameters of a real load of ``adapter`` are ``source``'s tensors, key for key."""
    import torch
    from peft import PeftModel
    from realload import load_base
    from safetensors.torch import load_file

    pm = PeftModel.from_pretrained(load_base(base), str(adapter))
    got = {n: p.detach() for n, p in pm.named_parameters() if ".lora_" in n}
    for key, t in load_file(str(source / "adapter_model.safetensors")).items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        if name not in got or not torch.equal(got[name], t):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", help="architectures (default: all)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("LORADOC_CACHE_DIR", tempfile.mkdtemp(prefix="loradoc-bench-cache-"))
    import transformers
    from multimodal_bases import ARCHS, SOURCE, VARIANTS, build_adapters, build_base, expected_verdict
    from realload import real_peft_load
    from safetensors.torch import load_file

    from loradoc.diagnose.doctor import diagnose
    from loradoc.io.snapshot import open_snapshot
    from loradoc.model.profiles import get_profile, resolve_base
    from loradoc.repair.apply import apply_plan
    from loradoc.repair.passes import build_plan

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="loradoc-bench-mm-"))
    print(f"{'architecture':<12} {'verdict':>8} {'dry load':>9} {'static':>7} {'repaired':>9}")
    for arch in args.arch or list(ARCHS):
        base = build_base(arch, root / arch / "base")
        adapters = build_adapters(arch, base, root / arch)
        src = resolve_base(str(base))
        profile = get_profile(src)
        n = verdict = dry = static = repaired = to_repair = 0
        for variant in VARIANTS:
            real = real_peft_load(adapters[variant], base)
            counts = (real.loaded, real.missing, real.unexpected)
            d = diagnose(str(adapters[variant]), src)
            n += 1
            verdict += d.verdict == expected_verdict(real)
            dry += (d.peft.loaded, d.peft.missing, d.peft.unexpected) == counts
            static += (d.static.loaded, d.static.missing, d.static.unexpected) == counts
            if expected_verdict(real) == "healthy":
                continue
            to_repair += 1
            res = apply_plan(
                build_plan(open_snapshot(str(adapters[variant])), profile), root / arch / f"{variant}-repaired", src
            )
            after = real_peft_load(res.out, base)
            size = len(load_file(str(res.out / "adapter_model.safetensors")))
            source = adapters[SOURCE.get(variant, variant)]
            repaired += (after.loaded, after.missing, after.unexpected) == (size, 0, 0) and _trained_modules_loaded(
                res.out, source, base
            )
        print(
            f"{arch:<12} {verdict:>4}/{n:<3} {dry:>5}/{n:<3} {static:>3}/{n:<3} {repaired:>5}/{to_repair:<3}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
