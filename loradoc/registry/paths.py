"""Where the registry lives: the index file, the user's manifest directory, a manifest's file name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_REGISTRY = "LORADOC_REGISTRY"
ENV_MANIFESTS = "LORADOC_MANIFESTS"


def default_registry_path() -> Path:
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("loradoc")) / "registry.sqlite"


def default_user_dir() -> Path:
    env = os.environ.get(ENV_MANIFESTS)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("loradoc")) / "manifests"


def manifest_filename(manifest_id: str) -> str:
    """``org/name`` -> ``org--name``; a local path -> ``local--<dirname>--<hash>``."""
    if "/" in manifest_id and not manifest_id.startswith(("/", "~", ".")) and manifest_id.count("/") == 1:
        return manifest_id.replace("/", "--")
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(manifest_id).name)[:40] or "adapter"
    return f"local--{name}--{hashlib.sha1(manifest_id.encode()).hexdigest()[:10]}"  # noqa: S324 - a name
