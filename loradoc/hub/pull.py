"""``loradoc pull ORG/NAME[@REV]``: fetch an adapter snapshot through huggingface_hub's cache, pinned to a commit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingFileError
from ..snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME
from ._common import raise_hub_error, resolve_endpoint, resolve_token

#: What an adapter snapshot needs: config, weights, card, tokenizer / chat template files, loradoc's own records.
PULL_PATTERNS = [
    CONFIG_NAME,
    SAFETENSORS_NAME,
    PICKLE_NAME,
    "README.md",
    "loradoc-*.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "*.jinja",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
]


@dataclass(frozen=True)
class PullResult:
    path: Path  # the snapshot folder in the huggingface_hub cache (``.../snapshots/<commit_sha>``)
    repo_id: str
    requested_revision: str | None
    commit_sha: str

    @property
    def spec(self) -> str:
        """``org/name@sha``: the pinned form of what was pulled."""
        return f"{self.repo_id}@{self.commit_sha}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "repo_id": self.repo_id,
            "requested_revision": self.requested_revision,
            "commit_sha": self.commit_sha,
        }


def pull(
    repo: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PullResult:
    """Download the adapter files of ``repo`` at ``revision`` (branch, tag, ``refs/pr/N`` or commit; default
    ``main``) into the huggingface_hub cache and resolve the revision to its commit sha.

    ``repo`` may carry the revision itself (``org/name@rev``); an explicit ``revision`` wins."""
    from huggingface_hub import snapshot_download

    from ..snapshot import parse_source

    repo_id, rev_in_spec = parse_source(repo)
    revision = revision or rev_in_spec
    ep = resolve_endpoint(endpoint)
    tok = resolve_token(token)
    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            endpoint=ep,
            token=tok if tok else False,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            allow_patterns=PULL_PATTERNS,
        )
    except Exception as e:  # noqa: BLE001 - every failure becomes one scrubbed line
        raise_hub_error(e, what=f"pull {repo_id}@{revision or 'main'}", endpoint=ep, token=tok, repo=repo_id)
    path = Path(local)
    if not (path / CONFIG_NAME).is_file():
        raise MissingFileError(
            f"{repo_id}@{path.name[:12]} on {ep} has no {CONFIG_NAME}: not a PEFT adapter repository",
            hint="check the repo id (a base model or a merged model is not an adapter)",
        )
    return PullResult(path=path, repo_id=repo_id, requested_revision=revision, commit_sha=path.name)
