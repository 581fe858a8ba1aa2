"""Shared Hub plumbing: endpoint, token resolution, error translation and token scrubbing.

Rules every function of :mod:`loradoc.hub` follows:

- the endpoint is resolved once (:func:`loradoc.hub.endpoint.resolve_endpoint`) and passed explicitly to every
  huggingface_hub call (``HfApi(endpoint=...)``, ``snapshot_download(endpoint=...)``): huggingface_hub reads
  ``HF_ENDPOINT`` only when it is imported;
- the token comes from the argument, else huggingface_hub's own resolution (``HF_TOKEN``, then the login file);
- no message, result, plan or file ever holds the token: every exception text that leaves this package goes
  through :func:`scrub` and is re-raised ``from None`` (the original exception, which holds the request, is
  dropped).
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from loradoc.errors import BadInputError, EnvironmentProblem, LoradocError, NothingToDo
from loradoc.hub.endpoint import resolve_endpoint

__all__ = [
    "HubAuthError",
    "HubError",
    "HubNetworkError",
    "NothingToPublishError",
    "StaleParentError",
    "TagExistsError",
    "resolve_endpoint",
    "resolve_token",
    "scrub",
]

_TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|api_org_[A-Za-z0-9]{8,})\b")
_BEARER = re.compile(r"(?i)(authorization\s*[:=]\s*|bearer\s+)[^\s'\"]+")


class HubError(LoradocError):
    """The Hub answered, but not what loradoc needs (exit 2)."""

    exit_code = 2


class HubAuthError(HubError):
    """No token, or the Hub refused it (401/403). Exit 2: the user must pass or fix a token."""


class StaleParentError(HubError, BadInputError):
    """The branch moved since the revision the repair started from (HTTP 412). Nothing was written."""


class TagExistsError(HubError, BadInputError):
    """The tag to create already exists on the repository."""


class NothingToPublishError(NothingToDo):
    """The files to push equal the target's head (exit 4): no commit was made, nothing is recorded, and no tag is
    placed unless the caller asked to tag that existing commit (``tagged``)."""

    def __init__(
        self, message: str, hint: str, *, repo_id: str, commit: str, directory: str, tagged: str | None
    ) -> None:
        super().__init__(message, hint=hint)
        self.repo_id, self.commit, self.directory, self.tagged = repo_id, commit, directory, tagged

    def to_json(self) -> dict[str, Any]:
        return {
            "nothing_to_publish": True,
            "directory": self.directory,
            "repo_id": self.repo_id,
            "commit_sha": self.commit,
            "tag": self.tagged,
            "message": self.one_line(),
        }


class HubNetworkError(EnvironmentProblem):
    """The endpoint could not be reached, or the connection dropped (exit 3)."""


def resolve_token(token: str | None) -> str | None:
    """The argument, else huggingface_hub's resolution: ``HF_TOKEN``, then the token file of ``hf auth login``."""
    if token:
        return token
    from huggingface_hub.utils import get_token

    return get_token()


def scrub(text: str, token: str | None = None) -> str:
    """``text`` with the token (and anything that looks like one, or like an Authorization header) masked."""
    if token:
        text = text.replace(token, "***")
    text = _BEARER.sub(lambda m: m.group(1) + "***", text)
    return _TOKEN_LIKE.sub("***", text)


def first_line(exc: BaseException, token: str | None = None) -> str:
    """The most useful single line of a huggingface_hub / httpx exception, scrubbed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("For more information check:")]
    text = lines[0] if lines else exc.__class__.__name__
    # hf_raise_for_status appends the server's message on a later line: it is usually the informative part
    server = [ln for ln in lines[1:] if not ln.lower().startswith(("http", "request id"))]
    if server and server[-1] not in text:
        text = f"{text} ({server[-1]})"
    return scrub(" ".join(text.split())[:300], token)


def http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def is_transport_error(exc: BaseException) -> bool:
    """Connection refused/reset/dropped, timeouts: the request may or may not have reached the server."""
    try:
        import httpx2 as httpx  # huggingface_hub 2.x
    except ImportError:  # pragma: no cover - huggingface_hub 1.x uses httpx
        import httpx  # type: ignore[no-redef]
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def raise_hub_error(exc: BaseException, *, what: str, endpoint: str, token: str | None, repo: str) -> NoReturn:
    """Translate a huggingface_hub / httpx exception into a one-line loradoc error (never chained)."""
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # snapshot_download wraps the HTTP failure it fell back from in LocalEntryNotFoundError: use the real one
    while isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__
    status = http_status(exc)
    line = first_line(exc, token)
    if isinstance(exc, RevisionNotFoundError):
        raise BadInputError(f"{what}: revision not found in {repo} on {endpoint}", hint="check the revision") from None
    if isinstance(exc, RemoteEntryNotFoundError):
        raise BadInputError(f"{what}: file not found in {repo} on {endpoint} ({line})", hint="check the repo") from None
    if status in (401, 403):
        raise HubAuthError(
            f"{what}: the Hub at {endpoint} refused the request ({status}{' unauthorized' if status == 401 else ''})",
            hint="use a token with write access (HF_TOKEN, or `hf auth login`)"
            if token
            else "no token was sent: set HF_TOKEN, or run `hf auth login`",
        ) from None
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        raise BadInputError(
            f"{what}: repository {repo} not found on {endpoint}",
            hint="check the repo id, the endpoint (--endpoint / HF_ENDPOINT) and your token",
        ) from None
    if status == 412:
        raise StaleParentError(
            f"{what}: {repo} has moved since the parent commit; nothing was written",
            hint="pull the new revision, repair and check-load it again, then publish",
        ) from None
    if is_transport_error(exc) or isinstance(exc, OSError):
        raise HubNetworkError(
            f"{what}: cannot reach {endpoint} ({line})", hint="check the endpoint and network"
        ) from None
    if status is not None:
        raise HubError(f"{what}: the Hub at {endpoint} answered {status}: {line}", hint="retry later") from None
    raise HubError(f"{what}: {line}", hint="check the repo, the endpoint and your token") from None


def hf_api(endpoint: str, token: str | None) -> Any:
    from huggingface_hub import HfApi

    # token=False: never fall back to a token the caller did not choose (resolve_token already did that)
    return HfApi(endpoint=endpoint, token=token if token else False)
