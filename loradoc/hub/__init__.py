"""Hub workflows: pull an adapter pinned to a commit, publish a repaired and certified adapter in one commit,
and scan every adapter of a base from headers alone.

    from loradoc.hub import pull, plan_publish, publish, scan_hub
    got = pull("org/name@v1")                      # PullResult(path, repo_id, requested_revision, commit_sha)
    plan = plan_publish(out_dir, "org/name", parent_commit=None, create_pr=False, tag="loradoc-fix",
                        message=None, force=False)  # reads the Hub, writes nothing; plan.to_json() for --plan
    res = publish(plan)                            # PublishResult(commit_sha, commit_url, pr_num, tag, ...)
                                                   # NothingToPublishError (exit 4) when the head holds these files
    scan = scan_hub("google/gemma-4-E4B-it", limit=200)  # ScanResult(rows=[ScanRow(...)], bytes_fetched, ...)

Every huggingface_hub call gets the endpoint explicitly (argument, then HF_ENDPOINT, then the default); the
token (argument, then HF_TOKEN, then ``hf auth login``) never appears in a message, plan, result or file.
"""

from __future__ import annotations

from loradoc.hub._common import (
    HubAuthError,
    HubError,
    HubNetworkError,
    NothingToPublishError,
    StaleParentError,
    TagExistsError,
    resolve_token,
    scrub,
)
from loradoc.hub.card import VERIFIED_TAG, loading_fix_section, update_card
from loradoc.hub.publish import PublishResult, publish
from loradoc.hub.publish_plan import PlannedOp, PublishPlan, UnverifiedError, plan_publish
from loradoc.hub.pull import PULL_PATTERNS, PullResult, pull
from loradoc.hub.scan import ScanResult, ScanRow, scan_hub

__all__ = [
    "PULL_PATTERNS",
    "VERIFIED_TAG",
    "HubAuthError",
    "HubError",
    "HubNetworkError",
    "NothingToPublishError",
    "PlannedOp",
    "PublishPlan",
    "PublishResult",
    "PullResult",
    "ScanResult",
    "ScanRow",
    "StaleParentError",
    "TagExistsError",
    "UnverifiedError",
    "loading_fix_section",
    "plan_publish",
    "publish",
    "pull",
    "resolve_token",
    "scan_hub",
    "scrub",
    "update_card",
]
