"""The Hub commands: ``loradoc pull``, ``loradoc publish`` and ``loradoc registry scan-hub``."""

from __future__ import annotations

import sys

import click

from loradoc.cli._output import REGISTRY_OPT, emit_json, progress_bar
from loradoc.errors import exit_code_for


@click.command()
@click.argument("repo", metavar="REPO[@REVISION]")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT, then huggingface.co).")
@click.option("--base", "base", default=None, help="Diagnose against this base when recording (default: declared).")
@click.option("--no-record", is_flag=True, help="Do not record the pulled commit in the registry.")
@click.option("--cache-dir", default=None, help="huggingface_hub cache directory (default: its own).")
@click.option("--offline", is_flag=True, help="Answer from this endpoint's cache only (as HF_HUB_OFFLINE=1).")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def pull(
    repo: str,
    endpoint: str | None,
    base: str | None,
    no_record: bool,
    cache_dir: str | None,
    offline: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Fetch an adapter snapshot through the huggingface_hub cache, pinned to the commit its revision resolves to."""
    from loradoc import workflows

    done = workflows.pull(
        repo,
        endpoint=endpoint,
        cache_dir=cache_dir,
        offline=offline,
        base=base,
        record=not no_record,
        registry=registry_path,
    )
    got, recorded = done.pull, done.recorded
    if got.from_cache:
        click.echo(f"note: offline: {got.spec} comes from the cache, not from the endpoint", err=True)
    if as_json:
        emit_json({**got.to_json(), "recorded": str(recorded) if recorded else None})
    else:
        click.echo(f"{got.repo_id}@{got.commit_sha} -> {got.path}")
        if recorded:
            click.echo(f"recorded in {recorded}")


@click.command()
@click.argument("directory", metavar="DIR")
@click.option("--repo", "repo", required=True, help="Hub repo id to push to.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--tag", default=None, help="Tag the new commit.")
@click.option(
    "--tag-existing",
    is_flag=True,
    help="With --tag: when there is nothing to publish, tag the existing commit that already holds DIR's files.",
)
@click.option("--message", "-m", default=None, help="Commit message.")
@click.option("--parent", "parent", default=None, help="Parent commit (default: the revision the repair started from).")
@click.option("--force", is_flag=True, help="Push without a passing certificate (said loudly in the card).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the commit (operations, card diff) and write nothing.")
@click.option("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT, then huggingface.co).")
@click.option("--no-record", is_flag=True, help="Do not record the pushed commit in the registry.")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def publish(
    directory: str,
    repo: str,
    create_pr: bool,
    tag: str | None,
    tag_existing: bool,
    message: str | None,
    parent: str | None,
    force: bool,
    plan_only: bool,
    endpoint: str | None,
    no_record: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Push a repaired, certified adapter DIR to REPO as ONE commit with the card, certificate and repair report.

    Exit code: 0 pushed (the new commit, read back from the Hub), 4 nothing to publish (REPO's head already holds
    exactly these files: no commit, no record, no tag unless --tag-existing), 2 bad input / refused (stale parent,
    unverified files, existing tag), 3 network."""
    from loradoc import workflows
    from loradoc.errors import NothingToDo
    from loradoc.hub import NothingToPublishError

    plan = workflows.plan_publish(
        directory,
        repo,
        parent=parent,
        create_pr=create_pr,
        tag=tag,
        tag_existing=tag_existing,
        message=message,
        force=force,
        endpoint=endpoint,
        registry=registry_path,
    )
    if plan.warning:
        click.secho(plan.warning, fg="red", bold=True, err=True)
    if plan_only:
        if as_json:
            emit_json({"plan": plan.to_json(), "written": False})
        else:
            data = plan.to_json()
            click.echo(f"commit to {plan.repo_id} (parent {plan.parent_commit or 'none'}, {plan.parent_source})")
            for op in data.get("operations", []):
                click.echo(f"  {op.get('op', op.get('kind', ''))} {op.get('path')} {op.get('size', '')}")
            if data.get("card_diff"):
                click.echo(data["card_diff"])
            if plan.nothing_to_publish:
                click.echo(f"nothing to publish: {plan.directory} equals {plan.repo_id}@{plan.head_commit}")
        if plan.nothing_to_publish:
            sys.exit(NothingToDo.exit_code)  # what publish would exit with
        return
    try:
        done = workflows.publish(plan, endpoint=endpoint, record=not no_record, registry=registry_path)
    except NothingToPublishError as e:  # not a failure: say so on stdout (or as JSON), exit 4, record nothing
        if as_json:
            emit_json({**e.to_json(), "recorded": None})
        else:
            click.echo(e.one_line())
        sys.exit(exit_code_for(e))
    result, recorded = done.result, done.recorded
    if result.warning:
        click.secho(result.warning, fg="red", bold=True, err=True)
    if as_json:
        emit_json({**result.to_json(), "recorded": str(recorded) if recorded else None})
    else:
        where = f"{result.commit_sha} as PR #{result.pr_num}" if result.pr_num else result.commit_sha
        click.echo(f"pushed {where} to {result.repo_id} (parent {result.parent_commit}): {result.commit_url}")
        if recorded:
            click.echo(f"recorded in {recorded}")


@click.command("scan-hub")
@click.option("--base", "base", required=True, help="Base id whose adapters to audit (base_model:adapter:ID).")
@click.option("--limit", type=int, default=None)
@click.option("--concurrency", type=int, default=16, show_default=True)
@click.option("--endpoint", default=None)
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True)
def registry_scan_hub(
    base: str, limit: int | None, concurrency: int, endpoint: str | None, registry_path: str | None, as_json: bool
) -> None:
    """Audit every adapter of BASE on the Hub from adapter_config.json and the safetensors header alone."""
    from loradoc import workflows

    with progress_bar("scan-hub", as_json) as progress:
        res = workflows.scan_hub(
            base, limit=limit, endpoint=endpoint, concurrency=concurrency, registry=registry_path, progress=progress
        )
    if as_json:
        emit_json(res.to_json())
        return
    if res.profile_note:
        click.echo(f"note: {res.profile_note}", err=True)
    for row in res.rows:
        click.echo(f"{row.repo_id:<56} {row.verdict or 'error':<11} {row.error or ''}")
    click.echo(
        f"{len(res.rows)} adapters in {res.seconds:.1f} s; fetched {res.bytes_fetched} bytes "
        f"({res.weight_bytes_fetched} of {res.weight_bytes_total} weight bytes)"
    )


COMMANDS = [pull, publish]
REGISTRY_COMMANDS = [registry_scan_hub]
