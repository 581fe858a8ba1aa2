"""Output types and the text/tower split of the GGUF converters.

Tensor names, hyper-parameters and per-tensor rules are not restated here: they are llama.cpp's own converter
classes (``gguf_llama``). What remains is loradoc's: the ``--outtype`` values it accepts and which checkpoint
tensors belong to a vision / audio tower (never part of the text GGUF).
"""

from __future__ import annotations

from loradoc.errors import BadInputError
from loradoc.model.layout import tower_of

#: --outtype values -> (gguf LlamaFileType name, GGMLQuantizationType name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
}


#: --outtype values made by llama.cpp's own quantizer (llama_model_quantize) from the fused bf16 GGUF
QUANTIZED: tuple[str, ...] = (
    "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
    "q6_k",
)  # fmt: skip
ALL_OUTTYPES: tuple[str, ...] = (*OUTTYPES, *QUANTIZED)


def check_outtype(outtype: str) -> str:
    key = outtype.lower()
    if key not in ALL_OUTTYPES:
        raise BadInputError(f"unknown --outtype {outtype!r}", hint=f"use one of {', '.join(ALL_OUTTYPES)}")
    return key


def is_tower_tensor(name: str) -> bool:
    """A vision / audio / projector tensor (never part of the text GGUF)."""
    return tower_of(name) != "language"
