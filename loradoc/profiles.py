"""Base profiles: the exact module inventory of a base model, from its config.json alone.

A profile is built by instantiating the transformers model class on the *meta* device (no weights, no memory),
then walking ``named_modules()``. It records every module's class, kind and in/out features, the KV-shared
layers, the towers, and the checkpoint-conversion renames peft applies on load. Profiles are cached as JSON,
keyed by the config's sha256 and the transformers version, and the bases loradoc knows are shipped in
``manifests/bases/`` so that ``loradoc doctor --fast`` works offline without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import (
    BadInputError,
    LoradocError,
    MalformedConfigError,
    UnknownArchitectureError,
    UnknownBaseError,
)
from .layout import address_of, tower_of

PROFILE_FORMAT = 2


def manifests_dir() -> Path:
    """The shipped manifests: inside the wheel (loradoc/_manifests) or the source checkout (manifests/)."""
    packaged = Path(__file__).parent / "_manifests"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "manifests"


def cache_dir() -> Path:
    env = os.environ.get("LORADOC_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("loradoc"))


@cache
def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class ModuleInfo:
    cls: str
    kind: str  # linear | embedding | conv | clippable | other
    in_features: int | None = None
    out_features: int | None = None

    @property
    def lora_supported(self) -> bool:
        return self.kind in ("linear", "embedding", "conv")


@dataclass
class BaseProfile:
    name: str
    architecture: str
    model_type: str
    config_sha256: str
    transformers_version: str
    modules: dict[str, ModuleInfo]
    num_layers: int
    kv_shared_layers: list[int]
    towers: dict[str, str]
    conversion_renames: list[tuple[str, str]] = field(default_factory=list)
    # (saved prefix, model prefix) pairs that peft's load-time conversion really maps, learned by probing peft
    load_rewrites: list[tuple[str, str]] = field(default_factory=list)
    peft_default_targets: str | list[str] | None = None
    output_embedding: str | None = None
    torch_dtype: str | None = None
    quantization: dict[str, Any] | None = None
    text_config: dict[str, Any] = field(default_factory=dict)
    format: int = PROFILE_FORMAT

    # -- serialisation -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modules"] = [[n, m.cls, m.kind, m.in_features, m.out_features] for n, m in self.modules.items()]
        d["conversion_renames"] = [list(r) for r in self.conversion_renames]
        d["load_rewrites"] = [list(r) for r in self.load_rewrites]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BaseProfile:
        if d.get("format") != PROFILE_FORMAT:
            raise MalformedConfigError(f"profile format {d.get('format')} is not {PROFILE_FORMAT}")
        d = dict(d)
        d["modules"] = {n: ModuleInfo(c, k, i, o) for n, c, k, i, o in d["modules"]}
        d["conversion_renames"] = [tuple(r) for r in d.get("conversion_renames", [])]
        d["load_rewrites"] = [tuple(r) for r in d.get("load_rewrites", [])]
        return cls(**d)

    # -- queries -------------------------------------------------------------------------------------------
    def tower_modules(self, tower: str) -> list[str]:
        return [n for n in self.modules if tower_of(n) == tower]

    def memo(self) -> dict[Any, Any]:
        """Per-instance cache for derived views (not serialised: it is not a dataclass field)."""
        return self.__dict__.setdefault("_memo", {})

    def address_index(self) -> dict[Any, str]:
        """Address -> module path for every module peft could wrap (and Clippable wrappers)."""
        cached = self.memo().get("address_index")
        if cached is not None:
            return cached
        index: dict[Any, str] = {}
        for name, info in self.modules.items():
            if info.kind == "other":
                continue
            if info.kind == "linear" and name.endswith(".linear"):
                parent = self.modules.get(name[: -len(".linear")])
                if parent is not None and parent.kind == "clippable":
                    continue  # the Clippable wrapper stands for its inner linear
            index.setdefault(address_of(name), name)
        self.memo()["address_index"] = index
        return index


# ---------------------------------------------------------------------------------------------------------
# Finding the config of a base
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseSource:
    name: str  # repo id for shipped bases, else the directory
    config_path: Path
    directory: Path  # where weights live (shipped bases: the manifest folder, which has no weights)
    shipped: bool
    provenance: dict[str, Any] | None = None


def shipped_bases() -> dict[str, Path]:
    root = manifests_dir() / "bases"
    out: dict[str, Path] = {}
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "config.json").is_file():
                out[d.name.replace("--", "/", 1)] = d
    return out


def resolve_base(base: str) -> BaseSource:
    """A local base directory (with config.json), or a shipped base id such as ``google/gemma-4-E4B-it``."""
    p = Path(base).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise BadInputError(
                f"base directory {p} has no config.json",
                hint="pass the folder of a transformers checkpoint (config.json + weights) or a shipped base id",
            )
        return BaseSource(str(p), cfg, p, shipped=False)
    if p.is_file() and p.name == "config.json":
        return BaseSource(str(p.parent), p, p.parent, shipped=False)
    shipped = shipped_bases()
    for repo_id, d in shipped.items():
        if repo_id.lower() == base.lower():
            prov = None
            if (d / "provenance.toml").is_file():
                import tomllib

                prov = tomllib.loads((d / "provenance.toml").read_text())
            return BaseSource(repo_id, d / "config.json", d, shipped=True, provenance=prov)
    known = ", ".join(shipped) or "none"
    raise UnknownBaseError(
        f"base {base!r} is neither a local directory nor a shipped base id (shipped: {known})",
        hint="pass a local snapshot directory with config.json, or `loradoc pull REPO` it first",
    )


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path} not found", hint="pass a base directory that has config.json") from None
    try:
        cfg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedConfigError(
            f"{path} is not valid JSON ({e.__class__.__name__} at {getattr(e, 'lineno', '?')})",
            hint="restore the base's config.json from its source",
        ) from None
    if not isinstance(cfg, dict):
        raise MalformedConfigError(f"{path} is not a JSON object", hint="restore the base's config.json")
    return cfg, hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Building a profile (imports torch + transformers)
# ---------------------------------------------------------------------------------------------------------


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


def instantiate_meta(source: BaseSource) -> tuple[Any, Any, dict[str, Any], str]:
    """Build the base model class from config.json on the meta device: (model, config, raw dict, sha256)."""
    cfg_dict, sha = read_config(source.config_path)
    archs = cfg_dict.get("architectures") or []
    if not archs:
        raise UnknownArchitectureError(
            f"{source.config_path} has no 'architectures' entry",
            hint="add the model class name (e.g. Gemma4ForConditionalGeneration) to config.json",
        )
    arch = archs[0]
    import torch
    import transformers

    model_cls = getattr(transformers, arch, None)
    if model_cls is None:
        raise UnknownArchitectureError(
            f"architecture {arch!r} is unknown to transformers {transformers.__version__}",
            hint="upgrade transformers (pip install -U transformers) or check config.json's architectures",
        )
    plain = {k: v for k, v in cfg_dict.items() if k != "quantization_config"}
    try:
        # a quantized checkpoint: the module tree on meta is that of the full-precision model
        config = transformers.AutoConfig.for_model(**plain)
    except (ValueError, KeyError, TypeError) as e:
        raise UnknownArchitectureError(
            f"transformers {transformers.__version__} cannot read {source.config_path}: {str(e).splitlines()[0]}",
            hint="upgrade transformers or fix config.json",
        ) from None
    try:
        with torch.device("meta"):
            model = model_cls(config)
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        raise UnknownArchitectureError(
            f"could not build {arch} from {source.config_path}: {e.__class__.__name__}: {str(e).splitlines()[0]}",
            hint="check that config.json matches the architecture and that transformers is recent enough",
        ) from None
    return model, config, cfg_dict, sha


def _safe_attr(cfg: Any, name: str) -> Any:
    try:
        v = getattr(cfg, name, None)
    except Exception:  # noqa: BLE001 - per-layer configs raise on ambiguous global attributes
        return None
    return v if isinstance(v, int | float | str | type(None)) else None


def build_profile(source: BaseSource) -> BaseProfile:
    """Instantiate the base on the meta device and record its module inventory."""
    import transformers

    model, config, cfg_dict, sha = instantiate_meta(source)
    arch = cfg_dict["architectures"][0]
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

    layers: dict[int, set[str]] = {}
    for name in modules:
        a = address_of(name)
        if a.tower == "language" and a.layer is not None:
            layers.setdefault(a.layer, set()).add(a.local)
    kv_shared = sorted(i for i, locs in layers.items() if "self_attn.q_proj" in locs and "self_attn.k_proj" not in locs)
    towers: dict[str, str] = {}
    for name in modules:
        t = tower_of(name)
        if t != "language" and t not in towers:
            towers[t] = name
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
    rewrites = _probe_load_rewrites(source, modules) if renames else []
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
    )


_LEGACY_PREFIXES = {
    "language": (
        "language_model.model",
        "language_model",
        "model",
        "model.model",
        "model.language_model.model",
        "model.language_model",
        "model.text_model",
        "text_model",
    ),
    "vision": (
        "vision_tower.vision_model.encoder",
        "model.vision_tower.vision_model.encoder",
        "vision_tower.encoder",
        "model.vision_tower.encoder",
        "vision_model.encoder",
    ),
    "audio": ("audio_tower", "model.audio_tower", "audio_tower.model", "model.audio_tower.model"),
}


def _probe_load_rewrites(source: BaseSource, modules: dict[str, ModuleInfo]) -> list[tuple[str, str]]:
    """Learn which saved path prefixes peft's load-time conversion maps onto this model, by asking peft.

    For one layer-0 linear per tower, a LoRA key is offered under each known legacy prefix to peft's real
    ``set_peft_model_state_dict`` (meta tensors); the prefixes that load are recorded as (saved, model) pairs.
    """
    import torch
    from peft import LoraConfig, PeftModel
    from peft.utils import set_peft_model_state_dict

    picks: dict[str, str] = {}
    for name, info in modules.items():
        a = address_of(name)
        if info.kind == "linear" and a.layer == 0 and a.tower in _LEGACY_PREFIXES and a.tower not in picks:
            if name.endswith(".linear"):
                continue
            picks[a.tower] = name
    if not picks:
        return []
    model, *_ = instantiate_meta(source)
    with torch.device("meta"):
        pm = PeftModel(model, LoraConfig(r=1, target_modules=sorted(picks.values())))
    out: list[tuple[str, str]] = []
    for tower, name in picks.items():
        marker = ".layers.0."
        canon_prefix, local = name.split(marker, 1)
        fin = modules[name].in_features or 1
        for legacy in _LEGACY_PREFIXES[tower]:
            if legacy == canon_prefix:
                continue
            key = f"base_model.model.{legacy}{marker}{local}.lora_A.weight"
            try:
                res = set_peft_model_state_dict(pm, {key: torch.empty((1, fin), device="meta")})
            except Exception:  # noqa: BLE001,S112 - a prefix peft cannot take is simply not a rewrite
                continue
            if not res.unexpected_keys:
                out.append((legacy, canon_prefix))
    out.sort(key=lambda r: -len(r[0]))
    return out


# ---------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------


def _cache_path(sha: str, tf_version: str) -> Path:
    return cache_dir() / "profiles" / f"{sha[:24]}-transformers-{tf_version}.json"


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_json_profile(path: Path) -> BaseProfile | None:
    try:
        return BaseProfile.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, LoradocError):
        return None


def get_profile(base: str | BaseSource, *, allow_build: bool = True) -> BaseProfile:
    """The profile of ``base``: shipped, cached, or built (and cached) on the meta device."""
    source = base if isinstance(base, BaseSource) else resolve_base(base)
    _, sha = read_config(source.config_path)
    tf_version = installed_version("transformers") or "none"
    if source.shipped:
        shipped = source.directory / "profile.json"
        if shipped.is_file():
            prof = _load_json_profile(shipped)
            if prof and prof.config_sha256 == sha and prof.transformers_version == tf_version:
                prof.name = source.name
                return prof
    cached = _cache_path(sha, tf_version)
    if cached.is_file():
        prof = _load_json_profile(cached)
        if prof is not None:
            prof.name = source.name
            return prof
    if not allow_build:
        raise LoradocError(
            f"no cached profile for base {source.name} under transformers {tf_version}",
            hint=f"run `loradoc base profile {source.name}` (or doctor without --fast) once to build it",
        )
    prof = build_profile(source)
    _write_json_atomic(cached, prof.to_json())
    return prof


def write_shipped_profile(base: str) -> Path:
    """Regenerate ``manifests/bases/<id>/profile.json`` for a shipped base (maintainers' tool)."""
    source = resolve_base(base)
    if not source.shipped:
        raise BadInputError(f"{base} is not a shipped base", hint="pass one of: " + ", ".join(shipped_bases()))
    prof = build_profile(source)
    target = source.directory / "profile.json"
    _write_json_atomic(target, prof.to_json())
    return target
