"""The base profile data: :class:`BaseProfile` (a base model's module inventory, towers and load rewrites), its
JSON form (format 3; format 2 is read and migrated), the comparison of two profiles' content, and profile files
(read leniently, written atomically).

How a profile is built: :mod:`loradoc.model.meta_build`; which one is used: :mod:`loradoc.model.profiles`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import LoradocError, MalformedConfigError
from loradoc.model.layout import PEFT_PREFIX, Address, address_of, tower_of
from loradoc.model.param_targets import ParamInventory, inventory_from_json, inventory_to_json
from loradoc.model.towers import towers_by_name

__all__ = [
    "PROFILE_FORMAT",
    "BaseProfile",
    "ModuleInfo",
    "load_json_profile",
    "profile_drift",
    "write_json_atomic",
]

PROFILE_FORMAT = 3
# Format 2 recorded towers as kind -> first module and load rewrites as module-path prefixes of prefixed keys;
# format 3 records towers as module prefix -> kind and load rewrites as saved key prefixes. 2 is read and migrated.
_READABLE_FORMATS = (2, 3)


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
    # 2-D / 3-D parameters of modules peft cannot wrap as layers (fused MoE experts), for ``target_parameters``
    # (loradoc.model.param_targets); None: a profile built before they were recorded
    parameters: ParamInventory | None = None
    # modules with a bias parameter of their own (what bias="lora_only" saves); None: not recorded (older builds)
    biased: list[str] | None = None

    # -- serialisation -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modules"] = [[n, m.cls, m.kind, m.in_features, m.out_features] for n, m in self.modules.items()]
        d["conversion_renames"] = [list(r) for r in self.conversion_renames]
        d["load_rewrites"] = [list(r) for r in self.load_rewrites]
        d["parameters"] = inventory_to_json(self.parameters)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BaseProfile:
        if d.get("format") not in _READABLE_FORMATS:
            raise MalformedConfigError(f"profile format {d.get('format')} is not {PROFILE_FORMAT}")
        d = dict(d)
        d["modules"] = {n: ModuleInfo(c, k, i, o) for n, c, k, i, o in d["modules"]}
        d["conversion_renames"] = [tuple(r) for r in d.get("conversion_renames", [])]
        d["load_rewrites"] = [tuple(r) for r in d.get("load_rewrites", [])]
        d["parameters"] = inventory_from_json(d.get("parameters"))
        migrated = d["format"] == 2
        if migrated:
            d["towers"] = towers_by_name(d["modules"])
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
        # recorded since loradoc knows target_parameters and bias="lora_only"; shipped profiles predate them (None),
        # so they are not compared: what they hold is a function of the modules' classes, which are
        d.pop("parameters", None)
        d.pop("biased", None)
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Compact JSON, written atomically (:func:`loradoc.io.atomic.write_file_atomic`)."""
    from loradoc.io.atomic import write_file_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from loradoc.io.atomic import env_error

        raise env_error("creating the directory of", path, exc) from exc
    write_file_atomic(path, json.dumps(data, separators=(",", ":")).encode())


def load_json_profile(path: Path) -> BaseProfile | None:
    try:
        return BaseProfile.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, LoradocError):
        return None
