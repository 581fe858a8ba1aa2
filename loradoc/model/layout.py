"""The key-path vocabulary: which base module does an adapter tensor belong to?

Every part of loradoc that reasons about names (doctor, repair passes, converters) goes through this module.

Terms:
    file key      the tensor name in ``adapter_model.safetensors``,
                  e.g. ``base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_A.weight``
    module path   the dotted module name inside the *base* model (no ``base_model.model.`` prefix),
                  e.g. ``model.language_model.layers.3.self_attn.q_proj``
    address       a layout-independent identity of a module: (tower, layer index, path inside the layer).
                  ``model.layers.3.self_attn.q_proj`` (text-only model) and
                  ``model.language_model.layers.3.self_attn.q_proj`` (multimodal wrapper) share one address,
                  and so do ``...vision_tower...q_proj`` and its Gemma4ClippableLinear inner ``...q_proj.linear``.

Pure Python: no torch import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PEFT_PREFIX = "base_model.model."

# Parameter suffixes that peft writes for LoRA-family tensors (after the module path).
_LORA_PARAMS: tuple[tuple[str, str], ...] = (
    ("lora_A.weight", "lora_A"),
    ("lora_B.weight", "lora_B"),
    ("lora_B.bias", "lora_B_bias"),
    ("lora_embedding_A", "lora_embedding_A"),
    ("lora_embedding_B", "lora_embedding_B"),
    ("lora_magnitude_vector.weight", "magnitude"),
    ("lora_magnitude_vector", "magnitude"),
)
_ADAPTER_NAME_IN_KEY = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.([A-Za-z0-9_\-]+)\.(weight|bias)$")

TOWERS = ("vision", "audio", "projector")
_TOWER_MARKERS: tuple[tuple[str, str], ...] = (
    ("vision_tower", "vision"),
    ("vision_model", "vision"),
    ("audio_tower", "audio"),
    ("audio_model", "audio"),
    ("embed_vision", "projector"),
    ("embed_audio", "projector"),
    ("multi_modal_projector", "projector"),
)
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")
# an encoder-decoder's stacks (T5, BART, M2M100/NLLB, Florence-2's language model) are different addresses
_STACKS = ("encoder", "decoder")


@dataclass(frozen=True)
class LoraKey:
    """One parsed file key."""

    key: str
    module: str  # module path with any ``base_model.model.`` prefix removed (may still be mis-pathed)
    param: str  # the suffix after the module path, e.g. "lora_A.weight"
    kind: str  # lora_A | lora_B | lora_B_bias | lora_embedding_A | lora_embedding_B | magnitude | other
    had_peft_prefix: bool
    adapter_name: str | None = None  # non-None when the key carries an adapter name (".lora_A.default.weight")

    @property
    def is_lora(self) -> bool:
        return self.kind != "other"


def parse_key(key: str) -> LoraKey:
    """Split a file key into module path and LoRA parameter."""
    had_prefix = key.startswith(PEFT_PREFIX)
    body = key[len(PEFT_PREFIX) :] if had_prefix else key
    adapter_name = None
    m = _ADAPTER_NAME_IN_KEY.search(body)
    if m and m.group(2) not in ("weight", "bias"):
        adapter_name = m.group(2)
        body = body[: m.start()] + f".{m.group(1)}.{m.group(3)}"
    for suffix, kind in _LORA_PARAMS:
        if body.endswith("." + suffix):
            return LoraKey(key, body[: -len(suffix) - 1], suffix, kind, had_prefix, adapter_name)
    module, _, param = body.rpartition(".")
    return LoraKey(key, module, param, "other", had_prefix, adapter_name)


Towers = Mapping[str, str]  # a base profile's towers: module prefix -> "vision" | "audio" | "projector"


def tower_match(module: str, towers: Towers | None = None) -> tuple[str, str | None]:
    """(tower, marker): the tower ``module`` belongs to and the path component that names the tower's root.

    With a profile's ``towers`` (found from the model's structure: :mod:`loradoc.model.profiles`), a module belongs to
    the tower whose prefix it starts with (the longest wins) or, for keys saved under another layout, whose root's
    own name (the prefix's last component) is one of its path components. Names of the towers of other models
    (``vision_tower``, ``audio_tower``, ...) are the fallback, so that a tower key saved for another base is still
    seen as a tower; without a profile they are the only rule, and they miss towers named otherwise (Qwen2.5-VL's
    ``visual``, Idefics3's ``connector``): callers pass the base profile's towers wherever a base is known
    (:func:`loradoc.convert.gguf_names.base_towers` gets them for convert and the runtime checks)."""
    parts = module.split(".")
    if towers:
        by_length = sorted(towers.items(), key=lambda kv: -len(kv[0]))
        for prefix, tower in by_length:
            if module == prefix or module.startswith(prefix + "."):
                return tower, prefix.rsplit(".", 1)[-1]
        for prefix, tower in by_length:
            if prefix.rsplit(".", 1)[-1] in parts:
                return tower, prefix.rsplit(".", 1)[-1]
    for marker, tower in _TOWER_MARKERS:
        if marker in parts:
            return tower, marker
    return "language", None


def tower_of(module: str, towers: Towers | None = None) -> str:
    """ "language" for the text model, else "vision" | "audio" | "projector" (see :func:`tower_match`)."""
    return tower_match(module, towers)[0]


@dataclass(frozen=True, order=True)
class Address:
    tower: str
    layer: int | None
    local: str  # path inside the layer (or the module's tail when not in a layer), without a Clippable ".linear"
    stack: str = ""  # "encoder" | "decoder" for an encoder-decoder's language model, else ""


def address_of(module: str, towers: Towers | None = None) -> Address:
    """A layout-independent identity for ``module`` (see module docstring); ``towers``: the base profile's."""
    path = module
    if path.startswith(PEFT_PREFIX):
        path = path[len(PEFT_PREFIX) :]
    tower, marker = tower_match(path, towers)
    if path.endswith(".linear") and not (marker and path.endswith(f"{marker}.linear")):
        # a Gemma4ClippableLinear's inner linear (not a tower's own child named "linear", as in PaliGemma)
        path = path[: -len(".linear")]
    if marker is not None:
        # keep the part after the tower's root, so "encoder.layers" vs "layers" inside a tower do not matter
        parts = path.split(".")
        path = ".".join(parts[parts.index(marker) + 1 :]) if marker in parts else ""
    m = _LAYER_RE.search(path)
    head = path[: m.start()] if m else path.rsplit(".", 1)[0] if "." in path else ""
    stack = ""
    if tower == "language":
        stack = next((p for p in reversed(head.split(".")) if p in _STACKS), "")
    if m:
        return Address(tower, int(m.group(1)), m.group(2), stack)
    # Non-layer modules: the last component identifies them (embed_tokens, lm_head, norm, ...); an index
    # (``merger.mlp.0``) keeps its parent's name.
    parts = path.split(".") if path else [""]
    tail = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
    return Address(tower, None, tail, stack)


def format_key(module: str, param: str) -> str:
    """The key peft writes for ``module`` + ``param``."""
    return f"{PEFT_PREFIX}{module}.{param}"


def apply_renames(module: str, renames: list[tuple[str, str]]) -> str:
    """Apply checkpoint-conversion renames (regex source -> replacement) as peft does: the first match wins."""
    for src, dst in renames:
        new, n = re.subn(src, dst, module, count=1)
        if n:
            return new
    return module


def layer_group(address: Address) -> str:
    """A label for grouping output: "language", "vision", "audio", "projector"."""
    return address.tower
