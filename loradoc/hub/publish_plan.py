"""Planning a publish: what ``loradoc publish DIR --repo ORG/NAME`` would push, computed without writing anything.

The certificate check, the card, the parent, the tag and every file operation; :mod:`loradoc.hub.publish` carries
the plan out in one commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, MissingFileError
from loradoc.hub._common import (
    TagExistsError,
    hf_api,
    http_status,
    raise_hub_error,
    resolve_endpoint,
    resolve_token,
)
from loradoc.hub.card import card_diff, loading_fix_section, update_card
from loradoc.io.outputs import escapes
from loradoc.io.snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME
from loradoc.repair.apply import CERTIFICATE_NAME, REPORT_NAME
from loradoc.verify.checkload import adapter_file_hashes, find_stored_certificate, stored_certificate_path

README = "README.md"
#: Files on the Hub that are removed when DIR no longer has them (a stale weights file next to the repaired one
#: makes the load ambiguous; stale loradoc records would describe other files).
_STALE_IF_ABSENT = (SAFETENSORS_NAME, PICKLE_NAME, CONFIG_NAME, CERTIFICATE_NAME, REPORT_NAME)
_HEX = re.compile(r"^[0-9a-fA-F]{7,40}\Z")
_TAG = re.compile(r"^[A-Za-z0-9][\w.\-]*\Z")


class UnverifiedError(BadInputError):
    """DIR has no passing certificate matching its files (exit 2)."""


@dataclass
class PlannedOp:
    op: str  # "add" | "delete"
    path: str
    size: int | None = None
    sha256: str | None = None
    origin: str = "directory"  # directory | generated | hub
    local: Path | None = None
    content: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "path": self.path, "size": self.size, "sha256": self.sha256, "origin": self.origin}


@dataclass
class PublishPlan:
    directory: Path
    repo_id: str
    endpoint: str
    revision: str
    parent_commit: str | None
    parent_source: str
    head_commit: str | None
    create_repo: bool
    create_pr: bool
    tag: str | None
    message: str
    description: str
    operations: list[PlannedOp]
    card_before: str | None
    card_after: str
    card_source: str
    certificate: dict[str, Any]
    verified: bool
    force: bool
    warning: str | None = None
    skipped: list[str] = field(default_factory=list)  # what DIR holds that is not pushed (dotfiles, folders)
    tag_existing: bool = False  # nothing to publish: tag the head commit that already holds these files
    head_equal: bool = False  # every file to push equals the head's (and every file to delete is absent)

    @property
    def nothing_to_publish(self) -> bool:
        return self.head_equal and self.head_commit is not None

    @property
    def stale(self) -> bool:
        """The branch head is not the parent (and does not already hold these files): publish refuses."""
        return (
            not self.create_pr
            and not self.head_equal
            and self.parent_commit is not None
            and self.head_commit is not None
            and not self.head_commit.lower().startswith(self.parent_commit.lower())
        )

    @property
    def card_diff(self) -> str:
        return card_diff(self.card_before, self.card_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "repo_id": self.repo_id,
            "endpoint": self.endpoint,
            "revision": self.revision,
            "parent_commit": self.parent_commit,
            "parent_source": self.parent_source,
            "head_commit": self.head_commit,
            "stale": self.stale,
            "nothing_to_publish": self.nothing_to_publish,
            "create_repo": self.create_repo,
            "create_pr": self.create_pr,
            "tag": self.tag,
            "tag_existing": self.tag_existing,
            "message": self.message,
            "description": self.description,
            "operations": [o.to_json() for o in self.operations],
            "card_source": self.card_source,
            "card_diff": self.card_diff,
            "certificate": self.certificate,
            "verified": self.verified,
            "force": self.force,
            "warning": self.warning,
            "skipped": self.skipped,
            "writes": "nothing (plan only)",
        }


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(
            f"{path}: {what} cannot be read ({e.__class__.__name__})", hint=f"re-create {what}"
        ) from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: {what} is not a JSON object", hint=f"re-create {what}")
    return data


def _check_certificate(
    directory: Path, hashes: dict[str, str], registry: str | Path | None = None
) -> tuple[dict[str, Any], str | None, dict | None, Path | None]:
    """(summary, problem or None, certificate, its path). The certificate must pass and cover exactly DIR's files.

    Looked for in DIR/loradoc-certificate.json (where ``check-load --certificate`` may put it) and in the registry's
    certificate store, by the sha256 of DIR's files (where ``check-load`` puts it by default); the first that
    passes and matches wins. With neither, the newest stored certificate of the same weights file names what
    changed since check-load."""
    local = directory / CERTIFICATE_NAME
    exact, newest = find_stored_certificate(hashes, registry)
    first: tuple[dict[str, Any], str | None, dict | None, Path | None] | None = None
    for path, origin in ((local, "directory"), (exact, "registry")):
        if path is None or not path.is_file():
            continue
        summary, problem, cert = _check_certificate_file(path, hashes)
        summary["origin"] = origin
        if problem is None:
            return summary, None, cert, path
        first = first or (summary, problem, cert, path)
    if first is not None:
        return first
    if newest is not None:
        summary, problem, cert = _check_certificate_file(newest, hashes)
        summary["origin"] = "registry"
        if problem is not None:
            return summary, problem, cert, newest
    store = stored_certificate_path(hashes, registry)
    summary = {"path": str(local), "present": False, "searched": [str(local), str(store)]}
    problem = f"no {CERTIFICATE_NAME} in {directory} and none for these files in {store.parent.parent}"
    return summary, problem, None, None


def _check_certificate_file(path: Path, hashes: dict[str, str]) -> tuple[dict[str, Any], str | None, dict | None]:
    summary: dict[str, Any] = {"path": str(path), "present": True}
    cert = _read_json(path, CERTIFICATE_NAME)
    summary["passed"] = bool(cert.get("passed"))
    summary["created"] = cert.get("created")
    summary["versions"] = cert.get("versions")
    summary["device"] = cert.get("device")
    if not cert.get("passed"):
        failed = [c.get("name") for c in cert.get("checks", []) if not c.get("passed")]
        return summary, f"{CERTIFICATE_NAME} records failed checks: {', '.join(map(str, failed)) or '?'}", cert
    files = (cert.get("adapter") or {}).get("files") or {}
    if not isinstance(files, dict):
        files = {}
    changed = sorted(n for n in set(files) & set(hashes) if files[n] != hashes[n])
    added = sorted(set(hashes) - set(files))
    removed = sorted(set(files) - set(hashes))
    summary["mismatches"] = {"changed": changed, "not_certified": added, "missing": removed}
    if changed or added or removed:
        parts = []
        if changed:
            parts.append(f"changed since check-load: {', '.join(changed)}")
        if added:
            parts.append(f"not covered: {', '.join(added)}")
        if removed:
            parts.append(f"missing: {', '.join(removed)}")
        return summary, f"the certificate does not match the files ({'; '.join(parts)})", cert
    if CONFIG_NAME not in files or not ({SAFETENSORS_NAME, PICKLE_NAME} & set(files)):
        return summary, "the certificate does not cover the adapter config and weights", cert
    return summary, None, cert


def _default_message(report: dict[str, Any] | None, verified: bool) -> tuple[str, str]:
    if report is None:
        title = "loradoc: verified adapter" if verified else "loradoc: adapter (unverified)"
        return title, "Published by loradoc publish."
    dropped = len(report.get("dropped") or [])
    renamed = len(report.get("renamed") or [])
    changes = len(report.get("config_changes") or [])
    title = "loradoc: repair adapter so it loads" + (" (verified)" if verified else " (UNVERIFIED)")
    desc = [
        f"Passes: {', '.join(report.get('passes') or []) or 'none'}.",
        f"Dropped {dropped} tensors, renamed {renamed}, {changes} config change(s); kept tensors are byte-identical.",
        f"Findings before: {', '.join(sorted({f.get('code', '?') for f in report.get('findings_before') or []}))}.",
        "Details: loradoc-repair.json, loradoc-certificate.json and the 'Loading fix' section of README.md.",
    ]
    return title, "\n".join(desc)


def _fetch_readme(repo: str, revision: str, *, endpoint: str, token: str | None) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with tempfile.TemporaryDirectory(prefix="loradoc-card-") as tmp:
        try:
            p = hf_hub_download(
                repo, README, revision=revision, endpoint=endpoint, token=token if token else False, cache_dir=tmp
            )
        except RemoteEntryNotFoundError:  # not LocalEntryNotFoundError: a network failure must not drop the card
            return None
        except Exception as e:  # noqa: BLE001
            raise_hub_error(e, what=f"read {repo}@{revision[:12]} {README}", endpoint=endpoint, token=token, repo=repo)
        return Path(p).read_text(encoding="utf-8", errors="replace")


def plan_publish(
    dir: str | Path,  # noqa: A002 - the CLI's name for it
    repo: str,
    *,
    parent_commit: str | None = None,
    create_pr: bool = False,
    tag: str | None = None,
    message: str | None = None,
    force: bool = False,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | None = None,
    tag_existing: bool = False,
    registry: str | Path | None = None,
) -> PublishPlan:
    """Everything :func:`publish` will do, computed without writing anything (reads the Hub: the branch head,
    the card at the parent when DIR has none, the files to delete). ``registry``: the index whose certificate
    store to search (None: ``$LORADOC_REGISTRY`` or the default)."""
    directory = Path(dir).expanduser()
    if not directory.is_dir():
        raise MissingFileError(f"{directory} is not a directory", hint="pass the repaired adapter directory (--out)")
    if not (directory / CONFIG_NAME).is_file() or not (
        (directory / SAFETENSORS_NAME).is_file() or (directory / PICKLE_NAME).is_file()
    ):
        raise MissingFileError(
            f"{directory} has no {CONFIG_NAME} + {SAFETENSORS_NAME}", hint="pass the adapter directory to publish"
        )
    if "/" not in repo or repo.count("/") != 1 or not all(repo.split("/")):
        raise BadInputError(f"repository id {repo!r} is not ORG/NAME", hint="pass --repo ORG/NAME")
    if tag_existing and tag is None:
        raise BadInputError("--tag-existing needs --tag", hint="pass --tag NAME --tag-existing")
    if tag is not None and not _TAG.match(tag):
        raise BadInputError(f"tag {tag!r} is not a valid tag name", hint="use letters, digits, '.', '-', '_'")
    if parent_commit is not None and not _HEX.match(parent_commit):
        raise BadInputError(f"parent commit {parent_commit!r} is not a commit sha", hint="pass a 40-hex commit id")

    hashes = adapter_file_hashes(directory)
    cert_summary, problem, cert, cert_path = _check_certificate(directory, hashes, registry)
    # a passing certificate from the registry's store is pushed as DIR/loradoc-certificate.json
    stored_cert = cert_path if problem is None and cert_path != directory / CERTIFICATE_NAME else None
    verified = problem is None
    warning = None
    if not verified:
        if not force:
            raise UnverifiedError(
                f"refusing to publish {directory}: {problem}",
                hint=f"run `loradoc check-load {directory} --base BASE` first (or pass --force to publish unverified)",
            )
        warning = f"FORCED: publishing UNVERIFIED files: {problem}"
    report = _read_json(directory / REPORT_NAME, REPORT_NAME) if (directory / REPORT_NAME).is_file() else None
    adapter_config = _read_json(directory / CONFIG_NAME, CONFIG_NAME)

    ep = resolve_endpoint(endpoint)
    tok = resolve_token(token)
    api = hf_api(ep, tok)
    head: str | None = None
    exists = True
    try:
        head = api.repo_info(repo, revision=revision).sha
    except Exception as e:  # noqa: BLE001
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(e, RepositoryNotFoundError) or (
            http_status(e) == 404 and not isinstance(e, RevisionNotFoundError)
        ):
            exists = False
        else:
            raise_hub_error(e, what=f"read {repo}@{revision}", endpoint=ep, token=tok, repo=repo)

    source = (report or {}).get("source") or {}
    if parent_commit is not None:
        parent, parent_source = parent_commit, "argument"
    elif source.get("commit") and exists and str(source.get("repo_id") or "").lower() == repo.lower():
        parent, parent_source = str(source["commit"]), f"{REPORT_NAME} source.commit"
    elif head is not None:
        parent = head
        parent_source = (
            f"current head of {revision} ({REPORT_NAME} records no commit of {repo})"
            if report is not None
            else f"current head of {revision}"
        )
    else:
        parent, parent_source = None, "none (new repository)"
    if parent is not None and not exists:
        raise BadInputError(
            f"parent commit {parent[:12]} given, but {repo} does not exist on {ep}",
            hint="check --repo, or drop the parent commit to create a new repository",
        )
    if parent is not None and parent != head:
        try:
            parent = api.repo_info(repo, revision=parent).sha or parent  # a short sha becomes the full one
        except Exception as e:  # noqa: BLE001
            from huggingface_hub.errors import RevisionNotFoundError

            if isinstance(e, RevisionNotFoundError):
                raise BadInputError(
                    f"parent commit {parent[:12]} is not a commit of {repo} on {ep}",
                    hint="pass the commit the repair started from (loradoc pull ORG/NAME@REV records it)",
                ) from None
            raise_hub_error(e, what=f"read {repo}@{parent[:12]}", endpoint=ep, token=tok, repo=repo)

    if tag is not None and exists:
        refuse_existing_tag(api, repo, tag, endpoint=ep, token=tok)

    remote_files: set[str] = set()
    if exists:
        from huggingface_hub.hf_api import RepoFile

        try:
            remote_files = {
                f.path for f in api.list_repo_tree(repo, revision=parent or head or revision) if isinstance(f, RepoFile)
            }
        except Exception as e:  # noqa: BLE001
            raise_hub_error(e, what=f"list {repo}", endpoint=ep, token=tok, repo=repo)

    if (directory / README).is_file() and not escapes(directory / README, directory):
        card_before: str | None = (directory / README).read_text(encoding="utf-8", errors="replace")
        card_source = "directory"
    elif exists and README in remote_files:
        rev = parent or head or revision
        card_before = _fetch_readme(repo, rev, endpoint=ep, token=tok)
        card_source = f"hub@{rev[:12]}"
    else:
        card_before, card_source = None, "generated"
    section = loading_fix_section(report, cert if verified else None, verified=verified, forced_reason=problem)
    card_after = update_card(
        card_before, adapter_config=adapter_config, section=section, verified=verified, repo_id=repo
    )

    ops: list[PlannedOp] = []
    local_names = sorted(
        p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and not escapes(p, directory)
    )
    for name in local_names:
        if name == README or (name == CERTIFICATE_NAME and stored_cert is not None):
            continue
        p = directory / name
        sha = hashes.get(name) or sha256_of(p)
        ops.append(PlannedOp("add", name, p.stat().st_size, sha, "directory", local=p))
    if stored_cert is not None:
        ops.append(
            PlannedOp(
                "add",
                CERTIFICATE_NAME,
                stored_cert.stat().st_size,
                sha256_of(stored_cert),
                "registry",
                local=stored_cert,
            )
        )
        local_names = sorted({*local_names, CERTIFICATE_NAME})
    readme_bytes = card_after.encode("utf-8")
    ops.append(
        PlannedOp(
            "add",
            README,
            len(readme_bytes),
            hashlib.sha256(readme_bytes).hexdigest(),
            "generated",
            content=readme_bytes,
        )
    )
    for name in _STALE_IF_ABSENT:
        if name in remote_files and name not in local_names:
            ops.append(PlannedOp("delete", name, origin="hub"))
    ops.sort(key=lambda o: (o.op != "add", o.path))
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir() if p.name not in local_names)

    head_equal = head is not None and matches_head(api, repo, head, ops, endpoint=ep, token=tok)
    title, desc = _default_message(report, verified)
    return PublishPlan(
        directory=directory,
        repo_id=repo,
        endpoint=ep,
        revision=revision,
        parent_commit=parent,
        parent_source=parent_source,
        head_commit=head,
        create_repo=not exists,
        create_pr=create_pr,
        tag=tag,
        message=message or title,
        description=desc,
        operations=ops,
        card_before=card_before,
        card_after=card_after,
        card_source=card_source,
        certificate=cert_summary,
        verified=verified,
        force=force,
        warning=warning,
        skipped=skipped,
        tag_existing=tag_existing,
        head_equal=head_equal,
    )


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def op_bytes(o: PlannedOp) -> bytes:
    if o.content is not None:
        return o.content
    assert o.local is not None
    return o.local.read_bytes()


def matches_head(api: Any, repo: str, head: str, ops: list[PlannedOp], *, endpoint: str, token: str | None) -> bool:
    """Whether committing ``ops`` on ``head`` would change nothing: each added file equals the head's (LFS sha256
    and size, or git blob id for a regular file) and each deleted file is absent. One ``paths-info`` request."""
    from huggingface_hub.hf_api import RepoFile

    try:
        infos = api.get_paths_info(repo, [o.path for o in ops], revision=head)
    except Exception as e:  # noqa: BLE001
        raise_hub_error(e, what=f"read {repo}@{head[:12]}", endpoint=endpoint, token=token, repo=repo)
    remote = {i.path: i for i in infos if isinstance(i, RepoFile)}
    for o in ops:
        r = remote.get(o.path)
        if o.op == "delete":
            if r is not None or any(i.path == o.path for i in infos):
                return False
            continue
        if r is None or (o.size is not None and r.size != o.size):
            return False
        if r.lfs is not None:
            if not o.sha256 or str(r.lfs.sha256).lower() != o.sha256.lower():
                return False
        elif not r.blob_id or r.blob_id.lower() != git_blob_id(op_bytes(o)):
            return False
    return True


def sha256_of(path: Path) -> str:
    from loradoc.io.hashing import sha256_file

    return sha256_file(path)


def refuse_existing_tag(api: Any, repo: str, tag: str, *, endpoint: str, token: str | None) -> None:
    try:
        refs = api.list_repo_refs(repo)
    except Exception as e:  # noqa: BLE001
        raise_hub_error(e, what=f"list the refs of {repo}", endpoint=endpoint, token=token, repo=repo)
    for t in refs.tags:
        if t.name == tag:
            raise TagExistsError(
                f"tag {tag} already exists on {repo} (at {t.target_commit[:12]})", hint="choose another --tag"
            )


# ---------------------------------------------------------------------------------------------------------------
# publishing
