"""Base profiles: the exact module inventory of a base model, from its config.json alone.

A profile is built by instantiating the transformers model class on the *meta* device (no weights, no memory),
then walking ``named_modules()``. It records every module's class, kind and in/out features, the KV-shared
layers, the towers, and the checkpoint-conversion renames peft applies on load. Profiles are cached as JSON,
keyed by the config's sha256 and the transformers version, and the bases loradoc knows are shipped in
``manifests/bases/`` so that ``loradoc doctor --fast`` works offline without importing torch.

A profile is a function of (config.json, the modeling code of the installed transformers). A shipped profile lists
the transformers versions under which a fresh build was *verified* to give the same content
(``verified_transformers``; ``scripts/refresh_profiles.py`` maintains it). Under any other version the nearest
shipped profile is still used offline, with a note that names the gap and the command that rebuilds it; with torch
and transformers importable (the full doctor) the profile is rebuilt for the installed version instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from loradoc.errors import (
    BadInputError,
    LoradocError,
    MalformedConfigError,
    UnknownArchitectureError,
    UnknownBaseError,
)
from loradoc.model.layout import PEFT_PREFIX, Address, address_of, tower_match, tower_of

PROFILE_FORMAT = 3
# Format 2 recorded towers as kind -> first module and load rewrites as module-path prefixes of prefixed keys;
# format 3 records towers as module prefix -> kind and load rewrites as saved key prefixes. 2 is read and migrated.
_READABLE_FORMATS = (2, 3)


def manifests_dir() -> Path:
    """The shipped manifests: inside the wheel (loradoc/_manifests) or the source checkout (manifests/)."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_manifests"
    if packaged.is_dir():
        return packaged
    return package.parent / "manifests"


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
    towers: dict[str, str]  # module prefix -> "vision" | "audio" | "projector", found from the model's structure
    conversion_renames: list[tuple[str, str]] = field(default_factory=list)
    # (saved key prefix, model module prefix) pairs that peft's load-time conversion really maps, learned by
    # probing peft; a saved prefix with peft's ``base_model.model.`` is for prefixed keys, one without for bare keys
    load_rewrites: list[tuple[str, str]] = field(default_factory=list)
    peft_default_targets: str | list[str] | None = None
    output_embedding: str | None = None
    torch_dtype: str | None = None
    quantization: dict[str, Any] | None = None
    text_config: dict[str, Any] = field(default_factory=dict)
    format: int = PROFILE_FORMAT
    # transformers versions under which a fresh build gave this same content (shipped profiles)
    verified_transformers: list[str] = field(default_factory=list)
    # the model class family the adapter's task type implies (None: config.json's architectures[0]) and the
    # number of labels of a classification head (from the adapter's saved head)
    task: str | None = None
    num_labels: int | None = None

    # -- serialisation -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modules"] = [[n, m.cls, m.kind, m.in_features, m.out_features] for n, m in self.modules.items()]
        d["conversion_renames"] = [list(r) for r in self.conversion_renames]
        d["load_rewrites"] = [list(r) for r in self.load_rewrites]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BaseProfile:
        if d.get("format") not in _READABLE_FORMATS:
            raise MalformedConfigError(f"profile format {d.get('format')} is not {PROFILE_FORMAT}")
        d = dict(d)
        d["modules"] = {n: ModuleInfo(c, k, i, o) for n, c, k, i, o in d["modules"]}
        d["conversion_renames"] = [tuple(r) for r in d.get("conversion_renames", [])]
        d["load_rewrites"] = [tuple(r) for r in d.get("load_rewrites", [])]
        migrated = d["format"] == 2
        if migrated:
            d["towers"] = _towers_by_name(d["modules"])
            d["load_rewrites"] = [(PEFT_PREFIX + a, b) for a, b in d["load_rewrites"]]
            d["format"] = PROFILE_FORMAT
        prof = cls(**d)
        if migrated:
            prof.memo()["migrated"] = True  # towers by name only: rebuilt where a build is possible
        return prof

    @property
    def note(self) -> str | None:
        """Why this profile is only a prediction under the installed transformers (None when it is exact)."""
        return self.memo().get("note")

    def content(self) -> dict[str, Any]:
        """What the profile says about the model: everything but its name and the versions it was built under."""
        d = self.to_json()
        for k in _NOT_CONTENT:
            d.pop(k, None)
        return d

    # -- queries -------------------------------------------------------------------------------------------
    def tower_modules(self, tower: str) -> list[str]:
        return [n for n in self.modules if tower_of(n, self.towers) == tower]

    def tower_of(self, module: str) -> str:
        """The tower of a module path (saved under any layout) of this base: "language" | "vision" | ..."""
        return tower_of(module, self.towers)

    def address_of(self, module: str) -> Address:
        """:func:`loradoc.model.layout.address_of` with this base's towers."""
        return address_of(module, self.towers)

    def tower_roots(self) -> list[str]:
        """The names of the towers' root modules (``vision_tower``, ``visual``, ...), for exclude_modules regexes."""
        return sorted({p.rsplit(".", 1)[-1] for p in self.towers})

    def memo(self) -> dict[Any, Any]:
        """Per-instance cache for derived views (not serialised: it is not a dataclass field)."""
        return self.__dict__.setdefault("_memo", {})

    def address_index(self) -> dict[Any, str]:
        """Address -> module path for every module peft could wrap (and Clippable wrappers)."""
        cached = self.memo().get("address_index")
        if cached is not None:
            return cached
        index: dict[Any, str] = {}
        ambiguous: set[Any] = set()
        for name, info in self.modules.items():
            if info.kind == "other":
                continue
            if info.kind == "linear" and name.endswith(".linear"):
                parent = self.modules.get(name[: -len(".linear")])
                if parent is not None and parent.kind == "clippable":
                    continue  # the Clippable wrapper stands for its inner linear
            addr = address_of(name, self.towers)
            if addr in index and index[addr] != name:
                ambiguous.add(addr)
            index.setdefault(addr, name)
        self.memo()["address_index"] = index
        self.memo()["ambiguous_addresses"] = ambiguous
        return index

    def ambiguous_addresses(self) -> set[Any]:
        """Addresses that several modules share (e.g. ``classifier.dense`` / ``pooler.dense``): a key at such an
        address cannot be re-rooted by its address alone."""
        self.address_index()
        return self.memo()["ambiguous_addresses"]


_NOT_CONTENT = ("name", "transformers_version", "verified_transformers", "format")


def profile_drift(old: BaseProfile, new: BaseProfile) -> str | None:
    """The first difference between two profiles' content, in words (None when they describe the same model).

    Modules are compared first (name, class, kind, features; their order is not content), then every other
    field."""
    for name in list(old.modules) + [n for n in new.modules if n not in old.modules]:
        a, b = old.modules.get(name), new.modules.get(name)
        if a is None or b is None:
            where = "only in the new build" if a is None else "missing from the new build"
            return f"module {name} is {where}"
        if a != b:
            return f"module {name}: {a} became {b}"
    ca, cb = old.content(), new.content()
    for key in sorted(set(ca) | set(cb)):
        if key != "modules" and ca.get(key) != cb.get(key):
            return f"{key}: {ca.get(key)!r} became {cb.get(key)!r}"
    return None


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
    except (ValueError, RecursionError) as e:  # bad syntax, bad UTF-8, an integer too long, nesting too deep
        raise MalformedConfigError(
            f"{path} is not valid JSON ({e.__class__.__name__} at {getattr(e, 'lineno', '?')})",
            hint="restore the base's config.json from its source",
        ) from None
    if not isinstance(cfg, dict):
        raise MalformedConfigError(f"{path} is not a JSON object", hint="restore the base's config.json")
    validate_base_config(cfg, path)
    return cfg, hashlib.sha256(raw).hexdigest()


#: The size fields loradoc (and the meta-device build) read, with generous upper bounds no real model reaches:
#: past them a hostile config.json makes the module-tree build run for minutes.
BASE_INT_FIELDS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (0, 4096),
    "num_kv_shared_layers": (0, 4096),
    "hidden_size": (1, 1 << 20),
    "intermediate_size": (1, 1 << 22),
    "num_attention_heads": (1, 1 << 16),
    "num_key_value_heads": (1, 1 << 16),
    "head_dim": (1, 1 << 16),
    "vocab_size": (1, 1 << 24),
}


def validate_base_config(cfg: dict[str, Any], path: Path) -> None:
    """Types and sizes of the base config.json fields loradoc reads: one clear line naming the field."""

    def bad(name: str, want: str, got: Any) -> MalformedConfigError:
        shown = json.dumps(got)[:60] if isinstance(got, str | int | float | list | dict | None) else repr(got)[:60]
        return MalformedConfigError(
            f"{path}: field {name!r} must be {want}, got {shown}",
            hint="restore the base's config.json from its source (or fix that field)",
        )

    archs = cfg.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and archs and all(isinstance(a, str) and 0 < len(a) <= 256 for a in archs)
    ):
        raise bad("architectures", 'a non-empty list of class names such as ["Gemma4ForConditionalGeneration"]', archs)
    subs: list[tuple[str, dict[str, Any]]] = [("", cfg)]
    subs += [(f"{k}.", v) for k, v in cfg.items() if k.endswith("_config") and isinstance(v, dict)]
    for prefix, d in subs:
        for name, (lo, hi) in BASE_INT_FIELDS.items():
            v = d.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(prefix + name, "an integer", v)
            if not lo <= v <= hi:
                raise bad(prefix + name, f"an integer from {lo} to {hi}", v)
        lt = d.get("layer_types")
        if lt is None:
            continue
        if not isinstance(lt, list) or not all(isinstance(t, str) and len(t) <= 256 for t in lt):
            raise bad(prefix + "layer_types", "a list of layer type names", lt)
        n = d.get("num_hidden_layers")
        if n is not None and len(lt) != n:
            raise MalformedConfigError(
                f"{path}: field {prefix + 'layer_types'!r} has {len(lt)} entries but "
                f"{prefix + 'num_hidden_layers'} is {n}",
                hint="restore the base's config.json from its source (one layer type per layer)",
            )


# ---------------------------------------------------------------------------------------------------------
# Which model class an adapter loads into (its task type), pure Python
# ---------------------------------------------------------------------------------------------------------

# peft task type -> the transformers auto class family peft's task-specific PeftModel expects
TASK_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
}
# module names of the heads peft's task models save through modules_to_save
HEAD_NAMES = ("classifier", "score", "qa_outputs")
_HEAD_WRAPPERS = (".modules_to_save.default", ".original_module", ".base_layer")


@dataclass(frozen=True)
class ModelSpec:
    """The model class an adapter is loaded into: ``task`` (a key of TASK_AUTO_CLASS, None for config.json's
    ``architectures[0]``) and ``num_labels`` of a classification head."""

    task: str | None = None
    num_labels: int | None = None

    @property
    def is_default(self) -> bool:
        return self.task is None

    def cache_suffix(self) -> str:
        if self.task is None:
            return ""
        return f"-{self.task.lower()}" + (f"-{self.num_labels}" if self.num_labels else "")


def head_module(key: str) -> str | None:
    """The head (``classifier`` / ``score`` / ``qa_outputs``) a file key belongs to, else None."""
    body = key
    while body.startswith("base_model.model."):
        body = body[len("base_model.model.") :]
    root = body.split(".", 1)[0]
    return root if root in HEAD_NAMES else None


def num_labels_from_tensors(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The label count of a classification head saved with the adapter (its output projection's rows)."""
    best: tuple[int, int] | None = None  # (preference, rows)
    for key, shape in shapes.items():
        head = head_module(key)
        if head is None or not shape:
            continue
        module = key.rsplit(".", 1)[0]
        for w in _HEAD_WRAPPERS:
            module = module.replace(w, "")
        tail = module.rsplit(".", 1)[-1]
        if key.endswith(".lora_B.weight") and tail in ("lora_B",):
            tail = module.rsplit(".", 2)[-2]
        if not (key.endswith(".weight") or key.endswith(".bias")):
            continue
        pref = 2 if tail == "out_proj" else 1 if tail in HEAD_NAMES else 0
        if pref and (best is None or pref > best[0]):
            best = (pref, int(shape[0]))
    return best[1] if best else None


def spec_for_adapter(task_type: str | None, shapes: dict[str, tuple[int, ...]]) -> ModelSpec:
    """The model class family ``task_type`` implies; classification heads take ``num_labels`` from the file."""
    task = (task_type or "").upper() or None
    if task not in TASK_AUTO_CLASS:
        return ModelSpec()
    labels = num_labels_from_tensors(shapes) if task in ("SEQ_CLS", "TOKEN_CLS") else None
    return ModelSpec(task, labels)


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
    rewrites = _probe_load_rewrites(source, modules, towers, lm_path, spec)
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
    )


# ---------------------------------------------------------------------------------------------------------
# Towers and load rewrites, found from the model
# ---------------------------------------------------------------------------------------------------------


def _towers_by_name(modules: dict[str, ModuleInfo]) -> dict[str, str]:
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


def _probe_load_rewrites(
    source: BaseSource,
    modules: dict[str, ModuleInfo],
    towers: dict[str, str],
    lm_path: str | None,
    spec: ModelSpec | None = None,
) -> list[tuple[str, str]]:
    """Learn which saved key prefixes peft's load (with transformers' conversion) maps onto this model's stacks.

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
    model, *_ = instantiate_meta(source, spec)
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


# ---------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------


def _cache_path(sha: str, tf_version: str, spec: ModelSpec | None = None) -> Path:
    suffix = spec.cache_suffix() if spec else ""
    return cache_dir() / "profiles" / f"{sha[:24]}{suffix}-transformers-{tf_version}.json"


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


def _version_key(v: str) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v).release
    except InvalidVersion:
        return (0,)


def shipped_profiles(source: BaseSource) -> list[BaseProfile]:
    """Every profile shipped for a base (``profile.json`` and older ``profile-transformers-*.json``) whose config
    hash matches the shipped config."""
    _, sha = read_config(source.config_path)
    out = []
    for path in sorted(source.directory.glob("profile*.json")):
        prof = _load_json_profile(path)
        if prof is not None and prof.config_sha256 == sha:
            prof.verified_transformers = prof.verified_transformers or [prof.transformers_version]
            out.append(prof)
    return out


def _nearest(profiles: list[BaseProfile], tf_version: str) -> BaseProfile:
    """The profile verified under the version closest to ``tf_version`` (ties: the newer one)."""
    target = _version_key(tf_version)

    def distance(p: BaseProfile) -> tuple[Any, ...]:
        best = min(p.verified_transformers, key=lambda v: _gap(_version_key(v), target))
        return (_gap(_version_key(best), target), tuple(-x for x in _version_key(best)))

    return min(profiles, key=distance)


def _gap(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return tuple(abs(x - y) for x, y in zip(a, b, strict=True))


def get_profile(base: str | BaseSource, *, allow_build: bool = True, spec: ModelSpec | None = None) -> BaseProfile:
    """The profile of ``base`` under the installed transformers.

    In order: a shipped profile verified under the installed version; one cached for it; a fresh meta-device build
    (``allow_build``, cached); else (offline, no torch) the shipped profile verified nearest to the installed
    version, whose ``note`` says it is a prediction and how to rebuild it."""
    source = base if isinstance(base, BaseSource) else resolve_base(base)
    _, sha = read_config(source.config_path)
    tf_version = installed_version("transformers") or "none"
    if spec is not None and spec.is_default:
        spec = None
    shipped = shipped_profiles(source) if source.shipped and spec is None else []
    for prof in shipped:
        if tf_version in prof.verified_transformers:
            prof.name = source.name
            return prof
    cached = _cache_path(sha, tf_version, spec)
    if cached.is_file():
        prof = _load_json_profile(cached)
        if prof is not None and not (allow_build and prof.memo().get("migrated")):
            prof.name = source.name
            return prof
    if allow_build:
        prof = build_profile(source, spec)
        _write_json_atomic(cached, prof.to_json())
        return prof
    if shipped:
        prof = _nearest(shipped, tf_version)
        prof.name = source.name
        verified = ", ".join(sorted(prof.verified_transformers, key=_version_key))
        prof.memo()["note"] = (
            f"the shipped profile of {source.name} was verified under transformers {verified}, not the installed "
            f"{tf_version}; it is used as a prediction (run `loradoc base profile {source.name}` to build it for "
            f"{tf_version})"
        )
        return prof
    if spec is not None:
        # --fast for a task-type model whose profile was never built: predict with config.json's own class
        prof = get_profile(source, allow_build=False)
        prof.memo()["note"] = (
            f"no cached profile of {source.name} as a {spec.task} model; predicted with its "
            f"{prof.architecture} profile (heads may differ; run doctor without --fast to build the right one)"
        )
        return prof
    raise LoradocError(
        f"no cached profile for base {source.name}{f' as {spec.task}' if spec else ''} under transformers {tf_version}",
        hint=f"run `loradoc base profile {source.name}` (or doctor without --fast) once to build it",
    )


def build_and_cache(base: str) -> tuple[BaseProfile, Path, str | None]:
    """Build the profile of ``base`` under the installed transformers and cache it (``loradoc base profile``).

    Returns the profile, the cache file, and for a shipped base the drift from its nearest shipped profile."""
    source = resolve_base(base)
    prof = build_profile(source)
    path = _cache_path(prof.config_sha256, prof.transformers_version)
    _write_json_atomic(path, prof.to_json())
    drift = None
    if source.shipped:
        shipped = shipped_profiles(source)
        if shipped:
            drift = profile_drift(_nearest(shipped, prof.transformers_version), prof)
    return prof, path, drift


def refresh_shipped_profile(base: str) -> tuple[Path, str | None]:
    """Maintainers' tool: build a shipped base's profile under the installed transformers and record the result.

    Same content as a shipped profile: the installed version is added to its ``verified_transformers``. Different
    content from all of them (a drift): a build under a newer transformers than ``profile.json``'s becomes
    ``profile.json`` (the old one is kept as ``profile-transformers-<its version>.json``); a build under an older
    one is added as ``profile-transformers-<installed version>.json``. Returns the path written and the drift from
    the nearest shipped profile (None when there was none)."""
    source = resolve_base(base)
    if not source.shipped:
        raise BadInputError(f"{base} is not a shipped base", hint="pass one of: " + ", ".join(shipped_bases()))
    fresh = build_profile(source)
    fresh.name = source.name
    version = fresh.transformers_version
    shipped = {p.transformers_version: p for p in shipped_profiles(source)}
    for prof in shipped.values():
        if profile_drift(prof, fresh) is None:
            prof.verified_transformers = sorted(set(prof.verified_transformers) | {version}, key=_version_key)
            path = source.directory / _profile_file(prof, source)
            _write_json_atomic(path, prof.to_json())
            _unclaim(source, version, path)
            return path, None
    drift = profile_drift(_nearest(list(shipped.values()), version), fresh) if shipped else "no shipped profile"
    main_path = source.directory / "profile.json"
    current = _load_json_profile(main_path) if main_path.is_file() else None
    if current is not None and _version_key(version) < _version_key(current.transformers_version):
        path = source.directory / f"profile-transformers-{version}.json"
    else:
        if current is not None:
            keep = source.directory / f"profile-transformers-{current.transformers_version}.json"
            _write_json_atomic(keep, current.to_json())
        path = main_path
    _write_json_atomic(path, fresh.to_json())
    _unclaim(source, version, path)
    return path, drift


def _unclaim(source: BaseSource, version: str, verified_path: Path) -> None:
    """After ``verified_path`` was verified under ``version``, no other shipped profile may claim that version (its
    content differs from a build under it); one left verified under no version at all is removed."""
    for path in sorted(source.directory.glob("profile*.json")):
        prof = _load_json_profile(path)
        if path == verified_path or prof is None or version not in prof.verified_transformers:
            continue
        prof.verified_transformers = [v for v in prof.verified_transformers if v != version]
        if prof.verified_transformers:
            _write_json_atomic(path, prof.to_json())
        else:
            path.unlink()


def _profile_file(prof: BaseProfile, source: BaseSource) -> str:
    main = _load_json_profile(source.directory / "profile.json")
    if main is not None and main.transformers_version == prof.transformers_version:
        return "profile.json"
    return f"profile-transformers-{prof.transformers_version}.json"
