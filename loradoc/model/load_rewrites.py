"""Load rewrites: the saved key prefixes peft's load (with transformers' checkpoint conversion) maps onto a
model's stacks, learned by offering peft keys under candidate prefixes derived from the model's own paths and
from the inverses of transformers' renames (never from a per-model table). Imports torch and peft."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loradoc.model.layout import PEFT_PREFIX, tower_of

if TYPE_CHECKING:
    from loradoc.model.base_profile import ModuleInfo

__all__ = ["probe_load_rewrites"]


_LAYER_SPLIT = re.compile(r"^(.*?)(\.(?:layers|h|blocks|block)\.0\.)(.+)$")


def _stacks(
    modules: dict[str, ModuleInfo], towers: dict[str, str], lm_path: str | None
) -> list[tuple[str, str, str, str]]:
    """One probe per stack of the model: (root, canonical prefix, separator, local path of a linear under it).

    The text model's and each tower's first layer-0 linear; a projector's first linear."""
    out: list[tuple[str, str, str, str]] = []
    roots = ([lm_path] if lm_path else []) + list(towers)
    for root in roots:
        for name, info in modules.items():
            if info.kind != "linear" or name.endswith(".linear") or not name.startswith(root + "."):
                continue
            if root == lm_path and tower_of(name, towers) != "language":
                continue
            if towers.get(root) == "projector":
                out.append((root, root, ".", name[len(root) + 1 :]))
                break
            m = _LAYER_SPLIT.match(name)
            if m:
                out.append((root, m.group(1), m.group(2), m.group(3)))
                break
    return out


def _literal(pattern: str) -> str | None:
    """The literal a simple anchored rename pattern (``^language_model``) matches, else None."""
    body = pattern[1:] if pattern.startswith("^") else None
    if body is None:
        return None
    body = body.replace(r"\.", ".")
    return body if re.fullmatch(r"[A-Za-z0-9_.]+", body) else None


def _inverse_renames(model: Any) -> list[tuple[str, str, str | None]]:
    """(saved, model, scope) literal prefix pairs from transformers' load-time renames of ``model``."""
    pairs: list[tuple[str, str, str | None]] = []
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        entries = get_model_conversion_mapping(model)
    except Exception:  # noqa: BLE001 - older transformers, or a class it cannot map
        entries = []
    for e in entries:
        name = type(e).__name__
        for src, dst in zip(getattr(e, "source_patterns", []), getattr(e, "target_patterns", []), strict=False):
            if name == "WeightRenaming":
                a, b = _literal(src), dst.replace(r"\.", ".")
                if a and re.fullmatch(r"[A-Za-z0-9_.]+", b):
                    pairs.append((a, b, None))
            elif name == "PrefixChange" and dst == r"\1":
                m = re.fullmatch(r"\^([A-Za-z0-9_]+)\\\.\(\.\+\)", src)
                if m:
                    pairs.append((m.group(1), "", getattr(e, "scope_prefix", None) or None))
    legacy = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    for src, dst in legacy.items():
        a = _literal(src)
        if a and re.fullmatch(r"[A-Za-z0-9_.]+", dst):
            pairs.append((a, dst, None))
    return pairs


def _candidate_prefixes(
    canonical: str, root: str, is_lm: bool, inverses: list[tuple[str, str, str | None]]
) -> list[str]:
    """Saved prefixes that might reach ``canonical`` (a stack inside the subtree ``root``): its tails that still
    name the root, with and without a leading ``model.``; for the text model also a trailing ``.model`` (a causal
    LM saved inside a wrapper) and the text-only layouts ``model`` / ``model.model``; then the inverses of
    transformers' own renames (applied twice)."""
    parts = canonical.split(".")
    keep = max(0, len(root.split(".")) - 1)  # index of the root's own name
    cands: set[str] = {canonical}
    for i in range(keep + 1):
        tail = ".".join(parts[i:])
        cands |= {tail, f"model.{tail}"}
        if is_lm:
            cands |= {f"{tail}.model", f"model.{tail}.model"}
    if is_lm:
        cands |= {"model", "model.model"}
    for _ in range(2):
        for cand in list(cands):
            for saved, model_prefix, scope in inverses:
                if scope is None and (cand == model_prefix or cand.startswith(model_prefix + ".")):
                    cands.add(saved + cand[len(model_prefix) :])
                elif scope is not None and model_prefix == "":
                    cp = cand.split(".")
                    if scope in cp and saved not in cp:
                        i = cp.index(scope) + 1
                        cands.add(".".join([*cp[:i], saved, *cp[i:]]))
    return sorted(cands)


def _widen(saved: str, root: str, canonical: str) -> tuple[str, str] | None:
    """A rewrite of a stack's prefix (``...vision_model.encoder`` -> ``model.vision_tower.encoder``) widened to
    the stack's root by dropping their common trailing components (``...vision_model`` -> ``model.vision_tower``);
    None when there is nothing to drop."""
    s, c = saved.split("."), canonical.split(".")
    depth = len(root.split("."))
    dropped = False
    while len(c) > depth and len(s) > 1 and s[-1] == c[-1]:
        s.pop()
        c.pop()
        dropped = True
    return (".".join(s), ".".join(c)) if dropped else None


def probe_load_rewrites(
    new_model: Callable[[], Any],
    modules: dict[str, ModuleInfo],
    towers: dict[str, str],
    lm_path: str | None,
) -> list[tuple[str, str]]:
    """Learn which saved key prefixes peft's load (with transformers' conversion) maps onto this model's stacks.

    ``new_model()`` builds a fresh copy of the model on the meta device (peft injects into it);
    ``modules``, ``towers`` and ``lm_path`` describe that model (:func:`loradoc.model.meta_build.build_profile`).

    For one linear per stack (the text model's and every tower's first layer-0 linear, a projector's first
    linear), a LoRA key is offered under each candidate prefix, with and without peft's ``base_model.model.``,
    to peft's real ``set_peft_model_state_dict`` (meta tensors). A candidate is a rewrite when the key is not
    unexpected and the stack's own LoRA parameter is no longer missing; a rewrite that also holds for a linear of
    the same root outside the stack is recorded for the whole root too (see :func:`_widen`). Candidates come from
    the model's own paths (see :func:`_candidate_prefixes`), never from a per-model table."""
    import torch
    from peft import LoraConfig, PeftModel
    from peft.utils import set_peft_model_state_dict

    stacks = _stacks(modules, towers, lm_path)
    if not stacks:
        return []
    model = new_model()
    inverses = _inverse_renames(model)
    targets = [f"{c}{sep}{local}" for _, c, sep, local in stacks]
    # per stack, a plain linear of the same root outside the stack: where a rewrite of the stack's prefix is
    # tried on the whole root
    others: list[str | None] = []
    for root, canonical, _, _ in stacks:
        others.append(
            next(
                (
                    n
                    for n, i in modules.items()
                    if i.cls == "Linear"
                    and n.startswith(root + ".")
                    and not n.startswith(canonical + ".")
                    and (root != lm_path or tower_of(n, towers) == "language")
                ),
                None,
            )
        )
    with torch.device("meta"):
        pm = PeftModel(model, LoraConfig(r=1, target_modules=targets + [o for o in others if o]))

    def missing_after(keys: dict[str, int]) -> set[str] | None:
        """The stacks' LoRA parameters still missing after offering ``keys`` (None: unexpected keys or a raise)."""
        try:
            res = set_peft_model_state_dict(pm, {k: torch.empty((1, fin), device="meta") for k, fin in keys.items()})
        except Exception:  # noqa: BLE001 - a prefix peft cannot take is simply not a rewrite
            return None
        return set(res.missing_keys) | ({"?"} if res.unexpected_keys else set())

    # one call offers one candidate per stack (they aim at different modules); each hit is confirmed alone
    offers: list[list[tuple[str, str]]] = []  # per stack: (saved prefix, key)
    for root, canonical, sep, local in stacks:
        mine = []
        for cand in _candidate_prefixes(canonical, root, root == lm_path, inverses):
            for saved in (f"{PEFT_PREFIX}{cand}", cand):
                if saved != f"{PEFT_PREFIX}{canonical}":  # the canonical path itself is not a rewrite
                    mine.append((saved, f"{saved}{sep}{local}.lora_A.weight"))
        offers.append(mine)
    fins = [modules[t].in_features or 1 for t in targets]
    wants = [f"{PEFT_PREFIX}{t}.lora_A.default.weight" for t in targets]
    out: list[tuple[str, str]] = []
    for i in range(max(len(o) for o in offers)):
        batch = {j: offers[j][i] for j in range(len(stacks)) if i < len(offers[j])}
        missing = missing_after({key: fins[j] for j, (_, key) in batch.items()})
        for j, (saved, key) in batch.items():
            if missing is not None and wants[j] in missing:
                continue
            alone = missing_after({key: fins[j]})
            if alone is not None and "?" not in alone and wants[j] not in alone:
                out.append((saved, stacks[j][1]))
                wider = _widen(saved, stacks[j][0], stacks[j][1])
                other = others[j]
                if wider and other and other.startswith(wider[1] + "."):
                    key2 = f"{wider[0]}{other[len(wider[1]) :]}.lora_A.weight"
                    got = missing_after({key2: modules[other].in_features or 1})
                    if got is not None and "?" not in got and f"{PEFT_PREFIX}{other}.lora_A.default.weight" not in got:
                        out.append(wider)
    out.sort(key=lambda r: (-len(r[0]), r))
    return out
