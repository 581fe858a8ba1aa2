"""Shipped profiles across transformers versions: which one a version gets, and how maintainers record a build.

A profile is a function of (config.json, the modeling code of the installed transformers). A shipped profile lists
the transformers versions under which a fresh build was *verified* to give the same content
(``verified_transformers``); under any other version the one verified nearest is used as a prediction
(:func:`nearest_profile`). :func:`refresh_shipped_profile` (``scripts/refresh_profiles.py``) adds the installed
version to the profile a fresh build matches, or writes a profile of its own when the modeling code changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError
from loradoc.model.base_config import BaseSource, read_config, resolve_base, shipped_bases
from loradoc.model.base_profile import BaseProfile, load_json_profile, profile_drift, write_json_atomic
from loradoc.model.meta_build import build_profile

__all__ = ["nearest_profile", "refresh_shipped_profile", "shipped_profiles", "version_key"]


def version_key(v: str) -> tuple[int, ...]:
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
        prof = load_json_profile(path)
        if prof is not None and prof.config_sha256 == sha:
            prof.verified_transformers = prof.verified_transformers or [prof.transformers_version]
            out.append(prof)
    return out


def nearest_profile(profiles: list[BaseProfile], tf_version: str) -> BaseProfile:
    """The profile verified under the version closest to ``tf_version`` (ties: the newer one)."""
    target = version_key(tf_version)

    def distance(p: BaseProfile) -> tuple[Any, ...]:
        best = min(p.verified_transformers, key=lambda v: _gap(version_key(v), target))
        return (_gap(version_key(best), target), tuple(-x for x in version_key(best)))

    return min(profiles, key=distance)


def _gap(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return tuple(abs(x - y) for x, y in zip(a, b, strict=True))


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
            prof.verified_transformers = sorted(set(prof.verified_transformers) | {version}, key=version_key)
            path = source.directory / _profile_file(prof, source)
            write_json_atomic(path, prof.to_json())
            _unclaim(source, version, path)
            return path, None
    drift = profile_drift(nearest_profile(list(shipped.values()), version), fresh) if shipped else "no shipped profile"
    main_path = source.directory / "profile.json"
    current = load_json_profile(main_path) if main_path.is_file() else None
    if current is not None and version_key(version) < version_key(current.transformers_version):
        path = source.directory / f"profile-transformers-{version}.json"
    else:
        if current is not None:
            keep = source.directory / f"profile-transformers-{current.transformers_version}.json"
            write_json_atomic(keep, current.to_json())
        path = main_path
    write_json_atomic(path, fresh.to_json())
    _unclaim(source, version, path)
    return path, drift


def _unclaim(source: BaseSource, version: str, verified_path: Path) -> None:
    """After ``verified_path`` was verified under ``version``, no other shipped profile may claim that version (its
    content differs from a build under it); one left verified under no version at all is removed."""
    for path in sorted(source.directory.glob("profile*.json")):
        prof = load_json_profile(path)
        if path == verified_path or prof is None or version not in prof.verified_transformers:
            continue
        prof.verified_transformers = [v for v in prof.verified_transformers if v != version]
        if prof.verified_transformers:
            write_json_atomic(path, prof.to_json())
        else:
            path.unlink()


def _profile_file(prof: BaseProfile, source: BaseSource) -> str:
    main = load_json_profile(source.directory / "profile.json")
    if main is not None and main.transformers_version == prof.transformers_version:
        return "profile.json"
    return f"profile-transformers-{prof.transformers_version}.json"
