"""The towers of a model (vision, audio, projectors), found from its structure rather than from names.

Every sub-config of the model's config other than the text config (``vision_config``, ``audio_config``, ...)
names a tower: the outermost module built from it. The other children with weights of the module holding the
text model are projectors. Format-2 profiles (no structure recorded) fall back to the tower names loradoc knew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loradoc.model.layout import tower_match

if TYPE_CHECKING:
    from loradoc.model.base_profile import ModuleInfo

__all__ = ["find_towers", "language_model_path", "towers_by_name"]


def towers_by_name(modules: dict[str, ModuleInfo]) -> dict[str, str]:
    """Towers of a format-2 profile (no structure recorded): the roots named like the towers loradoc knew then."""
    out: dict[str, str] = {}
    for name in modules:
        tower, marker = tower_match(name)
        if marker is not None:
            parts = name.split(".")
            out.setdefault(".".join(parts[: parts.index(marker) + 1]), tower)
    return out


def _module_path(model: Any, target: Any) -> str | None:
    return next((n for n, m in model.named_modules() if m is target), None)


def language_model_path(model: Any, config: Any) -> str | None:
    """The module path of the text model inside ``model`` (``model.language_model``, ``model.text_model``,
    ``model`` for a text-only model): the outermost module built from the text config, else transformers' own
    ``get_decoder()``."""
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text_cfg is not None:
        hits = [n for n, m in model.named_modules() if n and getattr(m, "config", None) is text_cfg]
        if hits:
            return min(hits, key=lambda n: (n.count("."), n))
    try:
        dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    except Exception:  # noqa: BLE001 - some classes raise instead of returning None
        dec = None
    if dec is not None and dec is not model:
        return _module_path(model, dec)
    return None


def _kind_of_sub_config(key: str) -> str:
    low = key.lower()
    if any(w in low for w in ("audio", "speech", "sound", "whisper")):
        return "audio"
    if any(w in low for w in ("vision", "visual", "image", "video")):
        return "vision"
    return "projector"


def _outermost(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(paths, key=lambda n: (n.count("."), n)):
        if not any(p.startswith(o + ".") for o in out):
            out.append(p)
    return out


def find_towers(model: Any, config: Any, lm_path: str | None) -> dict[str, str]:
    """The non-text subtrees of ``model``, found from its structure: module prefix -> kind.

    - every sub-config of the config other than the text config (``vision_config``, ``audio_config``, ...) names
      a tower: the outermost modules whose ``.config`` is that sub-config object (else: whose config has its
      class), outside the text model;
    - projectors/connectors: the other children with parameters of the module that holds the text model
      (``multi_modal_projector``, ``connector``, ``embed_vision``, ...), when the model has a tower at all.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else None

    def outside_lm(n: str) -> bool:
        return lm_path is None or not (n == lm_path or n.startswith(lm_path + ".") or lm_path.startswith(n + "."))

    towers: dict[str, str] = {}
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is None or sub is text_cfg or sub is config or not hasattr(sub, "to_dict"):
            continue
        hits = [n for n, m in named if getattr(m, "config", None) is sub and outside_lm(n)]
        if not hits:
            hits = [n for n, m in named if type(getattr(m, "config", None)) is type(sub) and outside_lm(n)]
        for root in _outermost(hits):
            towers.setdefault(root, _kind_of_sub_config(key))
    if towers and lm_path:
        holder_path = lm_path.rpartition(".")[0]
        holder = model.get_submodule(holder_path) if holder_path else model
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for child_name, child in holder.named_children():
            path = f"{holder_path}.{child_name}" if holder_path else child_name
            if path == lm_path or child is out_emb or any(t == path or t.startswith(path + ".") for t in towers):
                continue
            if any(path.startswith(t + ".") for t in towers):
                continue
            if next(child.parameters(), None) is not None:
                towers[path] = "projector"
    return dict(sorted(towers.items()))
