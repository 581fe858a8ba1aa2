"""``loradoc pull ORG/NAME[@REV]``: fetch an adapter snapshot through huggingface_hub's cache, pinned to a commit."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from loradoc.errors import BadInputError, LoradocError, MissingFileError
from loradoc.hub._common import HubError, hf_api, raise_hub_error, resolve_endpoint, resolve_token
from loradoc.hub.endpoint import DEFAULT_ENDPOINT
from loradoc.io.snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME

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
    from_cache: bool = False  # answered from the cache alone (--offline / HF_HUB_OFFLINE)

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
            "from_cache": self.from_cache,
        }


def endpoint_cache_dir(endpoint: str, cache_dir: str | os.PathLike[str] | None) -> str | None:
    """The huggingface_hub cache to use for ``endpoint``: snapshots are keyed by endpoint as well as repo id, so a
    snapshot fetched from one server is never served for another.

    The public Hub uses ``cache_dir`` (None: huggingface_hub's own cache, shared with other tools); any other
    endpoint gets a folder of its own, inside ``cache_dir`` when given, else in loradoc's cache."""
    if endpoint == DEFAULT_ENDPOINT:
        return str(cache_dir) if cache_dir is not None else None
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{parts.netloc}{parts.path}").strip("-") or "endpoint"
    key = f"{readable}-{hashlib.sha256(endpoint.encode()).hexdigest()[:10]}"
    if cache_dir is not None:
        return str(Path(cache_dir) / "endpoints" / key)
    from loradoc.model.profiles import cache_dir as loradoc_cache

    return str(loradoc_cache() / "hub" / key)


def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (1/ON/YES/TRUE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def pull(
    repo: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
) -> PullResult:
    """Download the adapter files of ``repo`` at ``revision`` (branch, tag, ``refs/pr/N`` or commit; default
    ``main``) into the huggingface_hub cache and resolve the revision to its commit sha.

    ``repo`` may carry the revision itself (``org/name@rev``); an explicit ``revision`` wins. The revision is
    resolved on the endpoint first: when the endpoint fails, nothing is answered from the cache in silence (the
    error says which commit the cache holds and that ``--offline`` uses it). ``offline`` (or ``HF_HUB_OFFLINE``)
    answers from this endpoint's cache only, and ``PullResult.from_cache`` says so."""
    from huggingface_hub import snapshot_download

    from loradoc.io.snapshot import parse_source

    repo_id, rev_in_spec = parse_source(repo)
    revision = revision or rev_in_spec
    ep = resolve_endpoint(endpoint)
    tok = resolve_token(token)
    cache = endpoint_cache_dir(ep, cache_dir)
    what = f"pull {repo_id}@{revision or 'main'}"
    kwargs: dict[str, Any] = {"endpoint": ep, "cache_dir": cache, "allow_patterns": PULL_PATTERNS}
    if offline or offline_requested():
        try:
            local = snapshot_download(repo_id, revision=revision, local_files_only=True, **kwargs)
        except Exception:  # noqa: BLE001 - not in this endpoint's cache, whatever the reason
            raise BadInputError(
                f"{what}: not in the cache for {ep} (offline)",
                hint="pull it once with the endpoint reachable (without --offline / HF_HUB_OFFLINE)",
            ) from None
        return _result(Path(local), repo_id, revision, ep, from_cache=True)
    try:
        info = hf_api(ep, tok).repo_info(repo_id, revision=revision)
        commit = info.sha
        if not commit:
            raise HubError(f"{what}: {ep} did not say which commit {revision or 'main'} is", hint="retry later")
    except Exception as e:  # noqa: BLE001 - every failure becomes one scrubbed line, naming a cached commit
        _raise_with_cache_note(e, what=what, endpoint=ep, token=tok, repo=repo_id, revision=revision, kwargs=kwargs)
    try:
        # by the revision's name, so that the cache records the ref (what --offline answers from later)
        local = snapshot_download(repo_id, revision=revision, token=tok if tok else False, **kwargs)
    except Exception as e:  # noqa: BLE001 - every failure becomes one scrubbed line
        raise_hub_error(e, what=what, endpoint=ep, token=tok, repo=repo_id)
    if Path(local).name != commit:  # huggingface_hub fell back to the cache, or the branch moved meanwhile
        raise HubError(
            f"{what}: {ep} said {revision or 'main'} is {commit[:12]}, but the download gave {Path(local).name[:12]}",
            hint="retry the pull",
        )
    return _result(Path(local), repo_id, revision, ep, from_cache=False)


def _raise_with_cache_note(
    exc: BaseException, *, what: str, endpoint: str, token: str | None, repo: str, revision: str | None, kwargs: Any
) -> NoReturn:
    from huggingface_hub import snapshot_download

    err: LoradocError
    if isinstance(exc, LoradocError):
        err = exc
    else:
        try:
            raise_hub_error(exc, what=what, endpoint=endpoint, token=token, repo=repo)
        except LoradocError as e:
            err = e
    try:
        cached = Path(snapshot_download(repo, revision=revision, local_files_only=True, **kwargs)).name
    except Exception:  # noqa: BLE001 - nothing cached: the plain error
        raise err from None
    # same class (and so the same exit code) as the plain error, with the cached commit named
    raise type(err)(
        f"{err.message}; the cache holds {repo}@{cached[:12]} from an earlier pull, which may be stale",
        hint="retry when the endpoint answers, or pass --offline to use the cached commit",
    ) from None


def _result(path: Path, repo_id: str, revision: str | None, endpoint: str, *, from_cache: bool) -> PullResult:
    if not (path / CONFIG_NAME).is_file():
        raise MissingFileError(
            f"{repo_id}@{path.name[:12]} on {endpoint} has no {CONFIG_NAME}: not a PEFT adapter repository",
            hint="check the repo id (a base model or a merged model is not an adapter)",
        )
    return PullResult(
        path=path, repo_id=repo_id, requested_revision=revision, commit_sha=path.name, from_cache=from_cache
    )
