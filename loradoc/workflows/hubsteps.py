"""Hub steps: pull a revision pinned to its commit, publish a certified directory in one commit, scan a base's
adapters from headers alone; each records what it saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.progress import Progress, report
from loradoc.workflows.recording import (
    RegistryRef,
    record_publish,
    record_pull,
    record_scan,
    registry_of,
    registry_path,
)


@dataclass
class Pulled:
    pull: Any  # loradoc.hub.pull.PullResult
    recorded: Path | None = None


def pull(
    spec: str,
    *,
    endpoint: str | None = None,
    cache_dir: str | None = None,
    offline: bool = False,
    base: str | None = None,
    record: bool = True,
    registry: RegistryRef = None,
) -> Pulled:
    """Fetch ``org/name[@rev]`` through the huggingface_hub cache, pinned to the commit the revision resolves to;
    with ``record``, record that commit (with a static diagnosis when the base is known here)."""
    from loradoc.hub.pull import pull as run
    from loradoc.io.snapshot import parse_source

    repo_id, rev = parse_source(spec)
    got = run(repo_id, rev, endpoint=endpoint, cache_dir=cache_dir, offline=offline)
    if not record:
        return Pulled(got)
    with registry_of(registry) as reg:
        return Pulled(got, record_pull(reg, got, base))


def plan_publish(
    directory: str | Path,
    repo: str,
    *,
    parent: str | None = None,
    create_pr: bool = False,
    tag: str | None = None,
    tag_existing: bool = False,
    message: str | None = None,
    force: bool = False,
    endpoint: str | None = None,
    registry: RegistryRef = None,
) -> Any:
    """What publish will do (reads the Hub, writes nothing): loradoc.hub.publish.PublishPlan. The certificate is
    looked up in the directory, then in ``registry``'s certificate store."""
    from loradoc.hub.publish_plan import plan_publish as plan

    return plan(
        Path(directory),
        repo,
        parent_commit=parent,
        create_pr=create_pr,
        tag=tag,
        message=message,
        force=force,
        endpoint=endpoint,
        tag_existing=tag_existing,
        registry=registry_path(registry),
    )


@dataclass
class Published:
    result: Any  # loradoc.hub.publish.PublishResult
    recorded: Path | None = None


def publish(
    plan: Any,
    *,
    endpoint: str | None = None,
    record: bool = True,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> Published:
    """Carry out ``plan`` (one commit, read back from the Hub, then the tag); with ``record``, record the commit on
    the published directory's revision. Nothing to publish raises NothingToPublishError (exit 4), recording
    nothing."""
    from loradoc.hub.publish import publish as run

    report(progress, 0, 1, "pushing")  # the last point a cancel stops it
    result = run(plan, endpoint=endpoint)
    done = Published(result)
    if record:
        with registry_of(registry) as reg:
            done.recorded = record_publish(reg, plan.directory, result)
    return done


def scan_hub(
    base: str,
    *,
    limit: int | None = None,
    endpoint: str | None = None,
    concurrency: int = 16,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> Any:
    """Audit every adapter of ``base`` on the Hub from adapter_config.json and the safetensors header alone, and
    record each one diagnosed (loradoc.hub.scan.ScanResult)."""
    from loradoc.hub.scan import scan_hub as run

    res = run(base, limit=limit, endpoint=endpoint, concurrency=concurrency, progress=progress)
    with registry_of(registry) as reg:
        record_scan(reg, base, res.rows)
    return res
