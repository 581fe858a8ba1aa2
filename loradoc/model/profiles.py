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

The jobs, one module each; this one chooses the profile (:func:`get_profile`) and caches built ones, and is where
the rest of loradoc imports profiles from (the names in ``__all__``):

- :mod:`~loradoc.model.base_config`: finding and reading a base's config.json (:func:`resolve_base`);
- :mod:`~loradoc.model.base_profile`: the :class:`BaseProfile` data and its JSON form;
- :mod:`~loradoc.model.model_spec`: the model class an adapter's task type implies (:class:`ModelSpec`);
- :mod:`~loradoc.model.meta_build`: building a profile on the meta device (:func:`build_profile`);
- :mod:`~loradoc.model.towers`: towers from the model's sub-configs and structure;
- :mod:`~loradoc.model.load_rewrites`: load rewrites by probing peft;
- :mod:`~loradoc.model.profile_versions`: shipped profiles across transformers versions (the version gap).
"""

from __future__ import annotations

import contextlib
import os
from functools import cache
from importlib import metadata
from pathlib import Path

from loradoc.errors import EnvironmentProblem, LoradocError
from loradoc.model.base_config import (
    BASE_INT_FIELDS,
    BaseSource,
    manifests_dir,
    read_config,
    resolve_base,
    shipped_bases,
    validate_base_config,
)
from loradoc.model.base_profile import (
    PROFILE_FORMAT,
    BaseProfile,
    ModuleInfo,
    load_json_profile,
    profile_drift,
    write_json_atomic,
)
from loradoc.model.meta_build import build_profile, instantiate_meta, resolve_model_class
from loradoc.model.model_spec import (
    HEAD_NAMES,
    TASK_AUTO_CLASS,
    ModelSpec,
    head_module,
    num_labels_from_tensors,
    spec_for_adapter,
)
from loradoc.model.profile_versions import nearest_profile, refresh_shipped_profile, shipped_profiles, version_key
from loradoc.model.towers import find_towers, language_model_path

__all__ = [
    "BASE_INT_FIELDS",
    "HEAD_NAMES",
    "PROFILE_FORMAT",
    "TASK_AUTO_CLASS",
    "BaseProfile",
    "BaseSource",
    "ModelSpec",
    "ModuleInfo",
    "build_and_cache",
    "build_profile",
    "cache_dir",
    "find_towers",
    "get_profile",
    "head_module",
    "installed_version",
    "instantiate_meta",
    "language_model_path",
    "manifests_dir",
    "num_labels_from_tensors",
    "profile_drift",
    "read_config",
    "refresh_shipped_profile",
    "resolve_base",
    "resolve_model_class",
    "shipped_bases",
    "shipped_profiles",
    "spec_for_adapter",
    "validate_base_config",
]


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


def _cache_path(sha: str, tf_version: str, spec: ModelSpec | None = None) -> Path:
    suffix = spec.cache_suffix() if spec else ""
    return cache_dir() / "profiles" / f"{sha[:24]}{suffix}-transformers-{tf_version}.json"


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
        prof = load_json_profile(cached)
        # rebuilt where possible: towers known by name only (format 2), no parameter inventory (older builds)
        stale = prof is not None and (prof.memo().get("migrated") or prof.parameters is None or prof.biased is None)
        if prof is not None and not (allow_build and stale):
            prof.name = source.name
            return prof
    if allow_build:
        prof = build_profile(source, spec)
        # a cache: an unwritable cache directory costs a rebuild next time, not this answer
        with contextlib.suppress(EnvironmentProblem):
            write_json_atomic(cached, prof.to_json())
        return prof
    if shipped:
        prof = nearest_profile(shipped, tf_version)
        prof.name = source.name
        verified = ", ".join(sorted(prof.verified_transformers, key=version_key))
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
    write_json_atomic(path, prof.to_json())
    drift = None
    if source.shipped:
        shipped = shipped_profiles(source)
        if shipped:
            drift = profile_drift(nearest_profile(shipped, prof.transformers_version), prof)
    return prof, path, drift
