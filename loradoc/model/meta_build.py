"""Building a base profile from config.json on the meta device (imports torch + transformers).

The model class is the one the adapter's task type implies (:class:`~loradoc.model.model_spec.ModelSpec`),
instantiated on the meta device (no weights, no memory); ``named_modules()`` gives every module's class, kind
and features; the towers come from the model's structure (:mod:`loradoc.model.towers`), the load rewrites from
probing peft (:mod:`loradoc.model.load_rewrites`).
"""

from __future__ import annotations

from typing import Any

from loradoc.errors import UnknownArchitectureError
from loradoc.model.base_config import BaseSource, read_config
from loradoc.model.base_profile import BaseProfile, ModuleInfo
from loradoc.model.layout import address_of
from loradoc.model.load_rewrites import probe_load_rewrites
from loradoc.model.model_spec import TASK_AUTO_CLASS, ModelSpec
from loradoc.model.param_targets import biased_modules, parameter_inventory
from loradoc.model.towers import find_towers, language_model_path

__all__ = ["build_profile", "instantiate_meta", "resolve_model_class"]


def _module_kind(module: Any) -> tuple[str, int | None, int | None]:
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()  # type: ignore[assignment]  # noqa: N806
    if isinstance(module, torch.nn.Linear):
        return "linear", module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return "embedding", module.num_embeddings, module.embedding_dim
    if Conv1D and isinstance(module, Conv1D):
        w = module.weight
        return "linear", int(w.shape[0]), int(w.shape[1])
    if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
        return "conv", module.in_channels, module.out_channels
    if type(module).__name__.endswith("ClippableLinear"):
        inner = getattr(module, "linear", None)
        if isinstance(inner, torch.nn.Linear):
            return "clippable", inner.in_features, inner.out_features
        return "clippable", None, None
    return "other", None, None


def resolve_model_class(cfg_dict: dict[str, Any], config: Any, spec: ModelSpec | None) -> Any:
    """The concrete transformers class for ``spec`` (None: config.json's ``architectures[0]``).

    SEQ_CLS / TOKEN_CLS / QUESTION_ANS / FEATURE_EXTRACTION: the auto class's entry for this config type;
    SEQ_2_SEQ_LM: ``architectures[0]`` when it is a seq2seq LM class, else the auto entry; CAUSAL_LM and no task
    type: ``architectures[0]``, else AutoModelForCausalLM's entry."""
    import transformers

    archs = cfg_dict.get("architectures") or []
    arch = archs[0] if archs else None
    auto_name = TASK_AUTO_CLASS.get(spec.task) if spec and spec.task else None

    def from_auto(name: str) -> Any:
        auto = getattr(transformers, name)
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            if arch is not None and getattr(transformers, arch, None) is not None:
                # no such task class for this model type: peft's task model wraps whatever it is given, and
                # the class people load is config.json's own
                return getattr(transformers, arch)
            raise UnknownArchitectureError(
                f"transformers {transformers.__version__} has no {name} class for model type "
                f"{getattr(config, 'model_type', '?')!r} (the adapter's task_type is {spec.task if spec else None})",
                hint="check the adapter's task_type and the base config",
            ) from None

    if auto_name is None:
        if arch is None:
            return from_auto("AutoModelForCausalLM")
        cls = getattr(transformers, arch, None)
        if cls is None:
            raise UnknownArchitectureError(
                f"architecture {arch!r} is unknown to transformers {transformers.__version__}",
                hint="upgrade transformers (pip install -U transformers) or check config.json's architectures",
            )
        return cls
    if arch is not None:
        cls = getattr(transformers, arch, None)
        mapping = getattr(transformers, auto_name)._model_mapping
        try:
            values = {c for v in mapping.values() for c in (v if isinstance(v, tuple | list) else (v,))}
        except Exception:  # noqa: BLE001 - lazy mappings may fail on optional backends
            values = set()
        if cls is not None and cls in values:
            return cls
    return from_auto(auto_name)


def instantiate_meta(source: BaseSource, spec: ModelSpec | None = None) -> tuple[Any, Any, dict[str, Any], str]:
    """Build the base model class from config.json on the meta device: (model, config, raw dict, sha256).

    ``spec``: the class family the adapter's task type implies (default: ``architectures[0]``)."""
    cfg_dict, sha = read_config(source.config_path)
    archs = cfg_dict.get("architectures") or []
    if not archs and (spec is None or spec.is_default):
        raise UnknownArchitectureError(
            f"{source.config_path} has no 'architectures' entry",
            hint="add the model class name (e.g. Gemma4ForConditionalGeneration) to config.json",
        )
    import torch
    import transformers

    plain = {k: v for k, v in cfg_dict.items() if k != "quantization_config"}
    if spec is not None and spec.num_labels:
        plain.pop("id2label", None)
        plain.pop("label2id", None)
        plain["num_labels"] = spec.num_labels
    try:
        # a quantized checkpoint: the module tree on meta is that of the full-precision model
        config = transformers.AutoConfig.for_model(**plain)
    except (ValueError, KeyError, TypeError) as e:
        raise UnknownArchitectureError(
            f"transformers {transformers.__version__} cannot read {source.config_path}: {str(e).splitlines()[0]}",
            hint="upgrade transformers or fix config.json",
        ) from None
    model_cls = resolve_model_class(cfg_dict, config, spec)
    try:
        with torch.device("meta"):
            model = model_cls(config)
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        raise UnknownArchitectureError(
            f"could not build {model_cls.__name__} from {source.config_path}: {e.__class__.__name__}: "
            f"{str(e).splitlines()[0]}",
            hint="check that config.json matches the architecture and that transformers is recent enough",
        ) from None
    return model, config, cfg_dict, sha


def _safe_attr(cfg: Any, name: str) -> Any:
    try:
        v = getattr(cfg, name, None)
    except Exception:  # noqa: BLE001 - per-layer configs raise on ambiguous global attributes
        return None
    return v if isinstance(v, int | float | str | type(None)) else None


def build_profile(source: BaseSource, spec: ModelSpec | None = None) -> BaseProfile:
    """Instantiate the base (the class ``spec`` implies) on the meta device and record its module inventory."""
    import transformers

    model, config, cfg_dict, sha = instantiate_meta(source, spec)
    arch = type(model).__name__
    modules: dict[str, ModuleInfo] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        kind, fin, fout = _module_kind(module)
        modules[name] = ModuleInfo(type(module).__name__, kind, fin, fout)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_name = None
    if out_emb is not None:
        out_name = next((n for n, m in model.named_modules() if m is out_emb), None)

    lm_path = language_model_path(model, config)
    towers = find_towers(model, config, lm_path)
    layers: dict[int, set[str]] = {}
    for name in modules:
        a = address_of(name, towers)
        if a.tower == "language" and a.layer is not None:
            layers.setdefault(a.layer, set()).add(a.local)
    kv_shared = sorted(i for i, locs in layers.items() if "self_attn.q_proj" in locs and "self_attn.k_proj" not in locs)
    renames: list[tuple[str, str]] = []
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        for entry in get_checkpoint_conversion_mapping(config.model_type) or []:
            if type(entry).__name__ == "WeightRenaming":
                for s, t in zip(entry.source_patterns, entry.target_patterns, strict=False):
                    renames.append((s, t))
    except ImportError:  # pragma: no cover - older transformers
        pass
    legacy = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    renames.extend((k, v) for k, v in legacy.items())

    peft_default = None
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        peft_default = defaults.get(config.model_type)
        if isinstance(peft_default, set | tuple):
            peft_default = sorted(peft_default)
    except ImportError:  # pragma: no cover
        pass
    text_cfg = getattr(config, "text_config", None) or config
    text_summary = {
        k: _safe_attr(text_cfg, k)
        for k in (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "num_kv_shared_layers",
            "vocab_size",
            "head_dim",
        )
    }
    rewrites = probe_load_rewrites(lambda: instantiate_meta(source, spec)[0], modules, towers, lm_path)
    return BaseProfile(
        name=source.name,
        load_rewrites=rewrites,
        architecture=arch,
        model_type=config.model_type,
        config_sha256=sha,
        transformers_version=transformers.__version__,
        modules=modules,
        num_layers=len(layers),
        kv_shared_layers=kv_shared,
        towers=towers,
        conversion_renames=renames,
        peft_default_targets=peft_default,
        output_embedding=out_name,
        torch_dtype=str(cfg_dict.get("torch_dtype") or cfg_dict.get("dtype") or "") or None,
        quantization=cfg_dict.get("quantization_config"),
        text_config=text_summary,
        verified_transformers=[transformers.__version__],
        task=spec.task if spec else None,
        num_labels=spec.num_labels if spec else None,
        parameters=parameter_inventory(model),
        biased=biased_modules(model),
    )
