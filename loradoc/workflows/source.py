"""Where an adapter comes from: a local directory, an HF cache snapshot, or ``org/name[@rev]`` on a Hub endpoint.

The Hub case is resolved here, through :func:`loradoc.hub.pull.pull` (one download path: patterns, endpoint, token
scrubbing, error mapping), and the local snapshot is handed on: :mod:`loradoc.io.snapshot` reads local paths only.
"""

from __future__ import annotations

import os
from pathlib import Path

from loradoc.io.snapshot import AdapterSnapshot, is_repo_spec, open_snapshot, parse_source


def local_adapter(spec: str | os.PathLike[str], *, endpoint: str | None = None) -> str:
    """``spec`` itself when it is local; else the snapshot folder a pull of ``org/name[@rev]`` gives."""
    if not is_repo_spec(spec):
        return str(spec)
    from loradoc.hub.pull import pull

    repo, rev = parse_source(str(spec))
    return str(pull(repo, rev, endpoint=endpoint).path)


def open_adapter(
    spec: str | os.PathLike[str], *, endpoint: str | None = None, allow_pickle: bool = False
) -> AdapterSnapshot:
    """The adapter snapshot of a local path, or of ``org/name[@rev]`` pulled from ``endpoint`` (then the snapshot
    says so: source ``hub``, the repo id, the revision asked for and the commit it resolved to)."""
    if not is_repo_spec(spec):
        return open_snapshot(spec, allow_pickle=allow_pickle)
    from loradoc.hub.pull import pull

    repo, rev = parse_source(str(spec))
    got = pull(repo, rev, endpoint=endpoint)
    snap = open_snapshot(Path(got.path), allow_pickle=allow_pickle)
    snap.source, snap.repo_id, snap.revision, snap.commit = "hub", got.repo_id, rev, got.commit_sha
    return snap
