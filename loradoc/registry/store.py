"""The registry: TOML manifests (the source of truth) indexed in an embedded SQLite database.

- Manifest directories, lowest precedence first: the shipped ``manifests/`` then the user's directory
  (``user_dir=``, or ``$LORADOC_MANIFESTS``, or ``manifests/`` beside the index: by default
  ``platformdirs.user_data_dir("loradoc")/manifests``). In each:
  ``adapters/<org>--<name>.toml`` and ``bases/<org>--<name>/manifest.toml``. When two files define the same id, the
  one in the later directory wins (a user's copy overrides a shipped manifest).
- The index: ``registry.sqlite`` in ``platformdirs.user_data_dir("loradoc")``, or ``$LORADOC_REGISTRY``, or
  ``path=``. Its tables and connection: index.py; ``sync``: sync.py; lookups and lists: queries.py; ``record_*``
  under an inter-process lock: writes.py; reading one manifest file: reader.py.
"""

from __future__ import annotations

from loradoc.registry.index import INDEX_FORMAT
from loradoc.registry.paths import (
    ENV_MANIFESTS,
    ENV_REGISTRY,
    default_registry_path,
    default_user_dir,
    manifest_filename,
)
from loradoc.registry.reader import MAX_MANIFEST_BYTES, ManifestProblem, check_manifest, load_manifest
from loradoc.registry.rows import AdapterRow, BaseRow, SyncReport
from loradoc.registry.sync import RACY_NS
from loradoc.registry.writes import LOCK_NAME, Writes


class Registry(Writes):
    """Manifests + their SQLite index. Every public method returns plain dataclasses with ``to_json()``."""


__all__ = [
    "ENV_MANIFESTS",
    "ENV_REGISTRY",
    "INDEX_FORMAT",
    "LOCK_NAME",
    "MAX_MANIFEST_BYTES",
    "RACY_NS",
    "AdapterRow",
    "BaseRow",
    "ManifestProblem",
    "Registry",
    "SyncReport",
    "check_manifest",
    "default_registry_path",
    "default_user_dir",
    "load_manifest",
    "manifest_filename",
]
