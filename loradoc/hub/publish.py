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

from dataclasses import dataclass
from typing import Any

from loradoc.errors import BadInputError
from loradoc.hub._common import (
    HubAuthError,
    HubError,
    HubNetworkError,
    NothingToPublishError,
    StaleParentError,
    first_line,
    hf_api,
    is_transport_error,
    raise_hub_error,
    resolve_endpoint,
    resolve_token,
)
from loradoc.hub.publish_plan import PublishPlan, matches_head, refuse_existing_tag, sha256_of


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
            else matches_head(api, repo, head, plan.operations, endpoint=ep, token=tok)
        )
        if not plan.create_pr and plan.parent_commit is not None and head != plan.parent_commit and not equal:
            raise StaleParentError(
                f"{what}: {repo} has moved since the parent commit ({plan.revision} is at {head[:12]}, the parent is "
                f"{plan.parent_commit[:12]}); nothing was written",
                hint="pull the new revision, repair and check-load it again, then publish",
            )
    # the files must still be the ones the plan checked (and the certificate covers)
    for o in plan.operations:
        if o.op == "add" and o.local is not None and (not o.local.is_file() or sha256_of(o.local) != o.sha256):
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
        refuse_existing_tag(api, repo, plan.tag, endpoint=ep, token=tok)

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
        refuse_existing_tag(api, repo, plan.tag, endpoint=endpoint, token=token)
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
