"""``loradoc publish DIR --repo ORG/NAME``: push a repaired, certified adapter back to the Hub in ONE commit.

- Refused unless DIR holds a passing ``loradoc-certificate.json`` whose file hashes match DIR's files now
  (``force=True`` overrides; the plan and the result then carry a loud ``warning``, and the card says
  "Not verified" and loses the ``loradoc-verified`` tag).
- First, before anything else, the stale-parent check: the branch head is read again; if it is not the parent
  (``loradoc-repair.json`` ``source.commit``, or the argument) and does not already hold exactly these files,
  :class:`StaleParentError` and nothing is written (the Hub's 412 stays as the second line of defence).
- Nothing to publish: when every file to push (and the generated card) equals the head's file (LFS sha256 or git
  blob id, from ``paths-info``) and every file to delete is absent, no commit is made and
  :class:`NothingToPublishError` (exit 4) names that head; no tag is placed unless ``tag_existing``.
- Otherwise one ``HfApi.create_commit`` with every file (adapter files, certificate, repair report, updated
  README.md and deletions of stale weight/record files) and ``parent_commit`` = the expected parent; then the ref
  is read back: it must be the returned commit and that commit's parent the expected one, else :class:`HubError`
  and no tag.
- Optional tag on the new commit; optional pull request (``create_pr``) instead of a direct commit.
- The card's generated section depends only on DIR (repair report, certificate, DIR's README or the card at the
  parent): publishing the same directory twice gives the same bytes, hence "nothing to publish" the second time.
- The plan (:meth:`PublishPlan.to_json`) lists every operation, the parent, the tag and the card diff, and is
  computed without writing anything.
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
    HubAuthError,
    HubError,
    HubNetworkError,
    NothingToPublishError,
    StaleParentError,
    TagExistsError,
    first_line,
    hf_api,
    http_status,
    is_transport_error,
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


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    endpoint: str
    commit_sha: str
    commit_url: str
    parent_commit: str | None
    pr_num: int | None
    pr_revision: str | None
    tag: str | None
    verified: bool
    warning: str | None
    operations: int

    @property
    def spec(self) -> str:
        return f"{self.repo_id}@{self.commit_sha}"

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "endpoint": self.endpoint,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "parent_commit": self.parent_commit,
            "pr_num": self.pr_num,
            "pr_revision": self.pr_revision,
            "tag": self.tag,
            "verified": self.verified,
            "warning": self.warning,
            "operations": self.operations,
        }


# ---------------------------------------------------------------------------------------------------------------
# planning


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
        _refuse_existing_tag(api, repo, tag, endpoint=ep, token=tok)

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
        sha = hashes.get(name) or _sha256(p)
        ops.append(PlannedOp("add", name, p.stat().st_size, sha, "directory", local=p))
    if stored_cert is not None:
        ops.append(
            PlannedOp(
                "add", CERTIFICATE_NAME, stored_cert.stat().st_size, _sha256(stored_cert), "registry", local=stored_cert
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

    head_equal = head is not None and _matches_head(api, repo, head, ops, endpoint=ep, token=tok)
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


def _op_bytes(o: PlannedOp) -> bytes:
    if o.content is not None:
        return o.content
    assert o.local is not None
    return o.local.read_bytes()


def _matches_head(api: Any, repo: str, head: str, ops: list[PlannedOp], *, endpoint: str, token: str | None) -> bool:
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
        elif not r.blob_id or r.blob_id.lower() != git_blob_id(_op_bytes(o)):
            return False
    return True


def _sha256(path: Path) -> str:
    from loradoc.io.hashing import sha256_file

    return sha256_file(path)


def _refuse_existing_tag(api: Any, repo: str, tag: str, *, endpoint: str, token: str | None) -> None:
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


def publish(plan: PublishPlan, *, endpoint: str | None = None, token: str | None = None) -> PublishResult:
    """Carry out ``plan``: the stale-parent check, then nothing-to-publish, else one commit (or pull request),
    read back from the Hub, then the tag."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ep = resolve_endpoint(endpoint) if endpoint else plan.endpoint
    tok = resolve_token(token)
    api = hf_api(ep, tok)
    repo = plan.repo_id
    what = f"publish to {repo}"

    # 1. the stale-parent check, before anything else: where is the branch now, and does it hold these files?
    head, equal = None, False
    if not plan.create_repo:
        head = _read_head(api, plan, endpoint=ep, token=tok)
        equal = (
            plan.head_equal
            if head == plan.head_commit
            else _matches_head(api, repo, head, plan.operations, endpoint=ep, token=tok)
        )
        if not plan.create_pr and plan.parent_commit is not None and head != plan.parent_commit and not equal:
            raise StaleParentError(
                f"{what}: {repo} has moved since the parent commit ({plan.revision} is at {head[:12]}, the parent is "
                f"{plan.parent_commit[:12]}); nothing was written",
                hint="pull the new revision, repair and check-load it again, then publish",
            )
    # the files must still be the ones the plan checked (and the certificate covers)
    for o in plan.operations:
        if o.op == "add" and o.local is not None and (not o.local.is_file() or _sha256(o.local) != o.sha256):
            raise BadInputError(f"{o.local} changed since the publish plan was made", hint="plan and publish again")

    # 2. nothing to publish: no commit, no record, a tag only on explicit request
    if equal and head is not None:
        _nothing_to_publish(api, plan, head, endpoint=ep, token=tok)

    if not tok:
        raise HubAuthError(
            f"publishing to {repo} needs a Hugging Face token with write access; none was found",
            hint="set HF_TOKEN, or run `hf auth login`",
        )
    if plan.create_repo:
        try:
            api.create_repo(repo, exist_ok=True)
        except Exception as e:  # noqa: BLE001
            raise_hub_error(e, what=f"create {repo}", endpoint=ep, token=tok, repo=repo)
        head = _read_head(api, plan, endpoint=ep, token=tok)
    if plan.tag is not None:
        _refuse_existing_tag(api, repo, plan.tag, endpoint=ep, token=tok)

    # 3. one commit on the expected parent
    expected = plan.parent_commit if plan.parent_commit is not None and not plan.create_repo else head
    operations: list[Any] = []
    for o in plan.operations:
        if o.op == "delete":
            operations.append(CommitOperationDelete(path_in_repo=o.path))
        elif o.local is not None:
            operations.append(CommitOperationAdd(path_in_repo=o.path, path_or_fileobj=str(o.local)))
        else:
            assert o.content is not None
            operations.append(CommitOperationAdd(path_in_repo=o.path, path_or_fileobj=o.content))
    try:
        info = api.create_commit(
            repo,
            operations,
            commit_message=plan.message,
            commit_description=plan.description,
            revision=plan.revision,
            parent_commit=expected,
            create_pr=plan.create_pr,
        )
    except Exception as e:  # noqa: BLE001
        if is_transport_error(e):
            _raise_dropped(api, plan, e, endpoint=ep, token=tok)
        raise_hub_error(e, what=what, endpoint=ep, token=tok, repo=repo)
    sha = str(info.oid)
    if info.pr_num is None and sha in {expected, head}:
        # huggingface_hub skips a commit that changes nothing and returns the current head: not ours
        _nothing_to_publish(api, plan, sha, endpoint=ep, token=tok)

    # 4. the printed commit is the one this publish created: read the ref back, check the parent
    ref = info.pr_revision if plan.create_pr and info.pr_revision else plan.revision
    _verify_commit(api, repo, ref, sha, expected, endpoint=ep, token=tok)

    if plan.tag is not None:
        try:
            api.create_tag(repo, tag=plan.tag, revision=sha)
        except Exception as e:  # noqa: BLE001
            raise HubError(
                f"committed {repo}@{sha[:12]}, but creating tag {plan.tag} failed: {first_line(e, tok)}",
                hint=f"create the tag on commit {sha} (hf repos tag create {repo} {plan.tag} -r {sha})",
            ) from None
    return PublishResult(
        repo_id=repo,
        endpoint=ep,
        commit_sha=sha,
        commit_url=str(info.commit_url),
        parent_commit=expected,
        pr_num=info.pr_num,
        pr_revision=info.pr_revision,
        tag=plan.tag,
        verified=plan.verified,
        warning=plan.warning,
        operations=len(operations),
    )


def _read_head(api: Any, plan: PublishPlan, *, endpoint: str, token: str | None) -> str:
    try:
        sha = api.repo_info(plan.repo_id, revision=plan.revision).sha
    except Exception as e:  # noqa: BLE001
        what = f"read {plan.repo_id}@{plan.revision}"
        raise_hub_error(e, what=what, endpoint=endpoint, token=token, repo=plan.repo_id)
    if not sha:
        raise HubError(
            f"read {plan.repo_id}@{plan.revision}: the Hub at {endpoint} named no commit", hint="retry later"
        )
    return str(sha)


def _nothing_to_publish(api: Any, plan: PublishPlan, head: str, *, endpoint: str, token: str | None) -> None:
    """Raise :class:`NothingToPublishError` for ``head``; first tag it when the caller asked for exactly that."""
    repo = plan.repo_id
    tagged = None
    if plan.tag is not None and plan.tag_existing:
        if not token:
            raise HubAuthError(
                f"tagging {repo}@{head[:12]} needs a Hugging Face token with write access; none was found",
                hint="set HF_TOKEN, or run `hf auth login`",
            )
        _refuse_existing_tag(api, repo, plan.tag, endpoint=endpoint, token=token)
        try:
            api.create_tag(repo, tag=plan.tag, revision=head)
        except Exception as e:  # noqa: BLE001
            raise_hub_error(e, what=f"tag {repo}@{head[:12]}", endpoint=endpoint, token=token, repo=repo)
        tagged = plan.tag
    message = f"nothing to publish: {plan.directory} equals {repo}@{head}"
    if tagged:
        message += f" (tagged {tagged} on that existing commit)"
        hint = "nothing was committed or recorded"
    elif plan.tag is not None:
        hint = (
            f"nothing was committed, recorded or tagged; to tag that existing commit pass --tag {plan.tag} "
            "--tag-existing"
        )
    else:
        hint = "nothing was committed or recorded"
    raise NothingToPublishError(message, hint, repo_id=repo, commit=head, directory=str(plan.directory), tagged=tagged)


def _verify_commit(
    api: Any, repo: str, ref: str, sha: str, expected: str | None, *, endpoint: str, token: str | None
) -> None:
    """``ref`` must now point at ``sha`` and ``sha``'s parent must be ``expected`` (else no tag, a clear error)."""
    try:
        at_ref = api.repo_info(repo, revision=ref).sha
        history = api.list_repo_commits(repo, revision=sha)
    except Exception as e:  # noqa: BLE001
        raise HubError(
            f"committed {repo}@{sha[:12]}, but reading it back from {endpoint} failed: {first_line(e, token)}",
            hint=f"check the history of {repo} before tagging or publishing again",
        ) from None
    parent = history[1].commit_id if len(history) > 1 and history[0].commit_id == sha else None
    problems = []
    if at_ref != sha:
        problems.append(f"{ref} is at {str(at_ref)[:12]}")
    if expected is not None and parent != expected:
        problems.append(f"its parent is {parent[:12] if parent else 'unknown'}, not {expected[:12]}")
    if problems:
        raise HubError(
            f"publish to {repo}: the Hub returned commit {sha}, but {'; '.join(problems)}; no tag was placed",
            hint=f"check the history of {repo} (the commit may not be the one this publish made)",
        )


def _raise_dropped(api: Any, plan: PublishPlan, exc: BaseException, *, endpoint: str, token: str | None) -> None:
    """The connection failed during the commit: say whether the branch moved (the commit may have landed)."""
    line = first_line(exc, token)
    try:
        head = api.repo_info(plan.repo_id, revision=plan.revision).sha
    except Exception:  # noqa: BLE001
        head = None
    if plan.create_pr:
        state = "a pull request may or may not have been opened"
    elif head is not None and plan.parent_commit is not None and head == plan.parent_commit:
        state = f"nothing was committed ({plan.revision} is still at {head[:12]})"
    elif head is not None:
        state = f"{plan.revision} is now at {head[:12]}: the commit may have landed"
    else:
        state = "the Hub could not be asked whether the commit landed"
    raise HubNetworkError(
        f"publish to {plan.repo_id}: the connection to {endpoint} failed during the commit ({line}); {state}",
        hint="check the repository's history, then run publish again",
    ) from None
