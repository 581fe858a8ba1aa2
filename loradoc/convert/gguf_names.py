"""Hugging Face -> llama.cpp GGUF naming and typing rules for the Gemma 4 / Gemma 3 text models.

What llama.cpp's own converter (``convert_hf_to_gguf.py``, commit 0c1e57098) does, restated so loradoc can stream
tensors itself:

- checkpoint keys lose ``language_model.`` (``model.language_model.layers.N`` -> ``model.layers.N``; Gemma 3's
  saved ``language_model.model.layers.N`` -> ``model.layers.N``), then go through gguf-py's tensor map
  (``blk.N.attn_q.weight`` ...); ``layer_scalar`` gets a ``.weight`` suffix first;
- tower tensors (vision / audio / projector) are not part of the text model;
- Gemma 3 RMSNorm weights get +1 (``Gemma3RMSNorm`` computes ``x * (1 + w)``); Gemma 4 norms are stored as is;
- 1-D tensors and ``*_norm.weight`` are always F32; everything else takes the requested type; Q8_0 falls back to
  F16 when a row is not a multiple of the 32-element block.

Only ``gguf`` (pure Python + numpy) is imported, and only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError, UnknownArchitectureError
from ..layout import Address, tower_of

#: HF architecture class -> llama.cpp architecture name (the text model).
ARCHITECTURES: dict[str, str] = {
    "Gemma4ForConditionalGeneration": "gemma4",
    "Gemma4ForCausalLM": "gemma4",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Gemma3ForCausalLM": "gemma3",
}

#: --outtype values -> (gguf LlamaFileType name, GGMLQuantizationType name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
}


def gguf_arch_for(config: dict[str, Any], where: str = "config.json") -> str:
    """The llama.cpp architecture (``gemma4`` | ``gemma3``) of a base config, or UnknownArchitectureError."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    known = ", ".join(ARCHITECTURES)
    raise UnknownArchitectureError(
        f"{where}: architecture {arch!r} is not supported by loradoc's GGUF converter (supported: {known})",
        hint="convert other architectures with llama.cpp's convert_hf_to_gguf.py on a merged checkpoint",
    )


def check_outtype(outtype: str) -> str:
    key = outtype.lower()
    if key not in OUTTYPES:
        raise BadInputError(
            f"unknown --outtype {outtype!r}", hint=f"use one of {', '.join(OUTTYPES)} (K-quants: llama-quantize)"
        )
    return key


def is_tower_tensor(name: str) -> bool:
    """A vision / audio / projector tensor (never part of the text GGUF)."""
    return tower_of(name) != "language"


def normalise_text_name(name: str) -> str:
    """A text-model checkpoint key as llama.cpp's tensor map expects it (``language_model.`` removed)."""
    out = name.replace("language_model.", "")
    if out.endswith(("per_dim_scale", "layer_scalar")):
        out += ".weight"
    return out


@dataclass(frozen=True)
class TensorNamer:
    """Maps text-model checkpoint keys to GGUF names for one architecture and layer count."""

    arch: str  # "gemma4" | "gemma3"
    n_layers: int

    def _map(self) -> Any:
        import gguf

        cache = self.__dict__.get("_tmap")
        if cache is None:
            arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == self.arch)
            cache = gguf.get_tensor_name_map(arch_enum, self.n_layers)
            object.__setattr__(self, "_tmap", cache)
        return cache

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF tensor name of a text checkpoint key, or None when llama.cpp has no slot for it."""
        return self._map().get_name(normalise_text_name(hf_name), try_suffixes=(".weight", ".bias"))

    def name_for_address(self, address: Address) -> str | None:
        """The GGUF base tensor name (``blk.N.attn_q.weight``) of a text module address."""
        if address.tower != "language":
            return None
        if address.layer is None:
            hf = f"model.{address.local}.weight" if address.local != "lm_head" else "lm_head.weight"
        else:
            hf = f"model.layers.{address.layer}.{address.local}.weight"
        return self.gguf_name(hf)

    def norm_shift(self, hf_name: str) -> float:
        """Gemma 3 stores RMSNorm weights as w where the model uses (1 + w); llama.cpp wants 1 + w."""
        return 1.0 if self.arch == "gemma3" and hf_name.endswith("norm.weight") else 0.0


def output_qtype(gguf_name: str, shape: tuple[int, ...], outtype: str) -> str:
    """The GGMLQuantizationType name llama.cpp's converter gives this tensor for ``--outtype outtype``."""
    if (
        len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith((".weight", ".lora_a", ".lora_b"))
    ):
        return "F32"
    if gguf_name.startswith("rope_freqs"):
        return "F32"
    qtype = OUTTYPES[outtype][1]
    if qtype == "Q8_0" and shape[-1] % 32:
        return "F16"  # llama.cpp: QuantError -> "falling back to F16"
    return qtype
