"""LoRA on bare parameters: peft's ``target_parameters`` (``lora.ParamWrapper``), re-stated in pure Python.

Mixture-of-experts layers in transformers 5 keep their experts fused in 3-D parameters (``mlp.experts.gate_up_proj``
of shape ``(experts, a, b)``) instead of one ``nn.Linear`` per expert, so a LoRA on the experts targets the
parameters, not modules. peft 0.17 - 0.21 (``BaseTuner._inject_parameters``, ``lora.ParamWrapper``):

- a parameter is targeted when ``f"{module}.{param}"`` equals an entry of ``target_parameters`` or ends with
  ``"." + entry`` (entries are literal names, never regexes);
- each targeted parameter wraps the module holding it in a ``ParamWrapper``; several targeted parameters of one
  module nest: the first one in the module's own parameter order is innermost, so with ``n`` of them the ``k``-th
  one's LoRA is saved under ``module + ".base_layer" * (n - 1 - k)``;
- a 3-D parameter ``(E, d1, d2)`` gives ``lora_A (r * E, in)`` and ``lora_B (out, r * E)`` with ``in, out = d2, d1``
  (``in, out = d1, d2`` when the module says ``is_transposed``, as gpt-oss's experts do); a 2-D one ``(out, in)``
  gives ``r`` rows;
- rank / alpha come from ``rank_pattern`` / ``alpha_pattern`` matched against ``f"{module}.{param}"``;
- ``ParamWrapper`` refuses ``lora_dropout != 0``, ``fan_in_fan_out``, ``lora_bias`` and DoRA (ValueError).

The base profile records, for every module peft cannot wrap as a layer, its 2-D / 3-D parameters in order
(:func:`parameter_inventory`); profiles built before that have ``parameters = None`` and the static side then says
that it cannot predict such an adapter instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loradoc.io.adapter_config import AdapterConfig
from loradoc.model.peft_patterns import rank_for

if TYPE_CHECKING:
    from loradoc.model.base_profile import BaseProfile

#: module path -> [(parameter name, shape, is_transposed)], in the module's own parameter order
ParamInventory = dict[str, list[tuple[str, tuple[int, ...], bool]]]

_LAYER_PARAMS = ("weight", "bias")


def parameter_inventory(model: Any) -> ParamInventory:
    """The 2-D / 3-D parameters held directly by modules that are not layers peft wraps whole (torch needed)."""
    import torch

    layer_types: tuple[type, ...] = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    try:
        from transformers.pytorch_utils import Conv1D

        layer_types = (*layer_types, torch.nn.Conv3d, Conv1D)
    except ImportError:  # pragma: no cover
        layer_types = (*layer_types, torch.nn.Conv3d)
    out: ParamInventory = {}
    for name, module in model.named_modules():
        if not name or isinstance(module, layer_types):
            continue
        rows = [
            (pname, tuple(int(s) for s in p.shape), bool(getattr(module, "is_transposed", False)))
            for pname, p in module.named_parameters(recurse=False)
            if p.dim() in (2, 3)
        ]
        if rows:
            out[name] = rows
    return out


def biased_modules(model: Any) -> list[str]:
    """The modules holding a ``bias`` parameter of their own (what peft's ``bias="lora_only"`` saves of a targeted
    layer, as ``MODULE.base_layer.bias``)."""
    return [
        name
        for name, module in model.named_modules()
        if name and any(pname == "bias" for pname, _ in module.named_parameters(recurse=False))
    ]


def inventory_to_json(inv: ParamInventory | None) -> dict[str, list[list[Any]]] | None:
    if inv is None:
        return None
    return {m: [[n, list(s), t] for n, s, t in rows] for m, rows in inv.items()}


def inventory_from_json(d: Any) -> ParamInventory | None:
    if d is None:
        return None
    return {m: [(str(n), tuple(int(x) for x in s), bool(t)) for n, s, t in rows] for m, rows in d.items()}


@dataclass(frozen=True)
class ParamTarget:
    module: str  # the module holding the parameter (e.g. model.layers.0.mlp.experts)
    param: str  # gate_up_proj
    wrapper: str  # the module path peft saves its LoRA under (module + ".base_layer" * depth)
    lora_a: tuple[int, int]
    lora_b: tuple[int, int]

    @property
    def key(self) -> str:
        return f"{self.module}.{self.param}"


@dataclass
class ParamPlan:
    targets: list[ParamTarget] = field(default_factory=list)
    error: str | None = None  # the ValueError peft raises while wrapping them
    unknown: bool = False  # the profile has no parameter inventory: nothing can be predicted

    def expected(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """file-format key (without peft's prefix) -> (shape, wrapper path)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for t in self.targets:
            out[f"{t.wrapper}.lora_A.weight"] = (t.lora_a, t.wrapper)
            out[f"{t.wrapper}.lora_B.weight"] = (t.lora_b, t.wrapper)
        return out


def target_parameters(cfg: AdapterConfig) -> list[str]:
    return list(cfg.target_parameters or [])


def _matches(key: str, names: list[str]) -> bool:
    return key in names or any(key.endswith("." + n) for n in names)


def plan_parameters(cfg: AdapterConfig, profile: BaseProfile) -> ParamPlan:
    """The parameters peft wraps for ``cfg`` on ``profile`` and the LoRA tensors it expects for them (empty without
    ``target_parameters``). ``unknown`` when the profile cannot say: no parameter inventory, or an entry that names
    a parameter of a layer (``q_proj.weight``), which the inventory leaves out."""
    names = target_parameters(cfg)
    plan = ParamPlan()
    if not names:
        return plan
    inventory = profile.parameters
    layers = [m for m, info in profile.modules.items() if info.kind != "other"]
    layer_param = any(_matches(f"{m}.{p}", names) for m in layers for p in _LAYER_PARAMS)
    if inventory is None or layer_param:
        plan.unknown = True
        return plan
    for module, rows in inventory.items():
        hit = [(p, shape, tr) for p, shape, tr in rows if _matches(f"{module}.{p}", names)]
        for k, (p, shape, transposed) in enumerate(hit):
            r = rank_for(cfg, f"{module}.{p}")
            if len(shape) == 3:
                experts, d1, d2 = shape
                fin, fout = (d1, d2) if transposed else (d2, d1)
            else:
                experts, fout, fin = 1, shape[0], shape[1]
            wrapper = module + ".base_layer" * (len(hit) - 1 - k)
            plan.targets.append(ParamTarget(module, p, wrapper, (r * experts, fin), (fout, r * experts)))
    if plan.targets:
        refused = _refused_options(cfg)
        if refused:
            plan.error = f"ValueError: lora.ParamWrapper does not work with {refused}."
    return plan


def _refused_options(cfg: AdapterConfig) -> str | None:
    raw = cfg.raw
    dropout = raw.get("lora_dropout")
    if isinstance(dropout, int | float) and dropout:
        return "lora_dropout != 0"
    if raw.get("fan_in_fan_out"):
        return "fan_in_fan_out"
    if raw.get("lora_bias"):
        return "lora_bias=True"
    if raw.get("use_dora"):
        return "LoRA variants like DoRA"
    return None


def _fits(shape_a: tuple[int, ...], shape_b: tuple[int, ...], row: tuple[str, tuple[int, ...], bool]) -> bool:
    _, shape, transposed = row
    if len(shape) == 3:
        experts, d1, d2 = shape
        fin, fout = (d1, d2) if transposed else (d2, d1)
    else:
        experts, fout, fin = 1, shape[0], shape[1]
    if len(shape_a) != 2 or len(shape_b) != 2:
        return False
    rows = shape_a[0]
    return shape_a[1] == fin and shape_b[0] == fout and shape_b[1] == rows and rows > 0 and rows % experts == 0


def saved_parameter_loras(profile: BaseProfile, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Which parameter each saved ParamWrapper LoRA belongs to, from the file alone: wrapper path -> parameter
    entry (``MODULE.PARAM``), for ``target_parameters`` that lost entries (a config re-saved by a peft that drops
    the field, an edited one).

    ``shapes``: module path (as saved, without peft's prefix) + ``.lora_A`` / ``.lora_B`` -> shape. A module's
    wrappers nest (``.base_layer`` per level); the parameters they wrap are the ordered choice of the module's
    parameters whose LoRA shapes fit every level, kept only when exactly one choice fits."""
    import itertools

    if not profile.parameters:
        return {}
    depths: dict[str, dict[int, str]] = {}
    for key in shapes:
        path, _, kind = key.rpartition(".")
        if kind != "lora_A":
            continue
        bare, depth = path, 0
        while bare.endswith(".base_layer"):
            bare, depth = bare[: -len(".base_layer")], depth + 1
        if bare in profile.parameters:
            depths.setdefault(bare, {})[depth] = path
    out: dict[str, str] = {}
    for module, by_depth in depths.items():
        n = len(by_depth)
        if set(by_depth) != set(range(n)):
            continue
        rows = profile.parameters[module]
        fits = [
            combo
            for combo in itertools.combinations(rows, n)
            if all(
                _fits(
                    shapes.get(f"{by_depth[n - 1 - k]}.lora_A", ()),
                    shapes.get(f"{by_depth[n - 1 - k]}.lora_B", ()),
                    row,
                )
                for k, row in enumerate(combo)
            )
        ]
        if len(fits) == 1:
            for k, row in enumerate(fits[0]):
                out[by_depth[n - 1 - k]] = f"{module}.{row[0]}"
    return out
