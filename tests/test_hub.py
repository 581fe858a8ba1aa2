"""loradoc.hub pull / publish against a real Hub-compatible HTTP server (tests/hubserver.py), through the real
huggingface_hub client (nothing mocked): the whole pull -> repair -> check-load -> publish -> pull path, and the
ways a publish must fail without writing anything."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import HubServer
from huggingface_hub import CommitOperationAdd, HfApi

from loradoc.demo.builder import ExampleSet
from loradoc.diagnose.doctor import diagnose
from loradoc.errors import BadInputError, EnvironmentProblem, LoradocError, exit_code_for
from loradoc.hub import (
    VERIFIED_TAG,
    HubAuthError,
    HubNetworkError,
    StaleParentError,
    TagExistsError,
    UnverifiedError,
    loading_fix_section,
    plan_publish,
    publish,
    pull,
    update_card,
)
from loradoc.hub.card import END_MARK, SECTION_TITLE, START_MARK
from loradoc.io.snapshot import open_snapshot
from loradoc.model.profiles import get_profile, resolve_base
from loradoc.repair.apply import CERTIFICATE_NAME, REPORT_NAME, apply_plan
from loradoc.repair.passes import build_plan
from loradoc.verify.checkload import adapter_file_hashes, check_load, stored_certificate_path

SEED = "seed-clinical-endpoint-extractor"
BASE = "tiny-gemma4-e4b"
TOKEN = "hf_loradocTESTsecretTOKEN0123456789"  # must never appear anywhere
WRONG_TOKEN = "hf_loradocWRONGtoken9876543210abcd"  # neither
REPO = "alice/clinical-extractor"


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    assert isinstance(e, LoradocError) and e.hint, msg
    assert TOKEN not in msg and WRONG_TOKEN not in msg
    return msg


def _server_state(server: HubServer) -> tuple[int, str]:
    return server.store.commit_count(), json.dumps({r.id: r.to_json() for r in server.store.repos.values()})


@pytest.fixture(scope="module", autouse=True)
def _no_ambient_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No token from the environment or a login file unless a test puts one there."""
    import huggingface_hub.constants as C

    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
            mp.delenv(var, raising=False)
        mp.setattr(C, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("hf-home") / "token"))
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    srv = HubServer(tmp_path_factory.mktemp("hub") / "store")
    srv.add_token(TOKEN, "alice")
    with srv:
        yield srv


def _upload_v1(server: HubServer, repo: str, adapter: Path) -> str:
    """Revision 1 of ``repo``: the broken seed replica, uploaded with the real client."""
    api = HfApi(endpoint=server.url, token=TOKEN)
    api.create_repo(repo, exist_ok=True)
    ops = [CommitOperationAdd(name, str(adapter / name)) for name in _files(adapter)]
    return api.create_commit(repo, ops, commit_message="upload adapter").oid


@pytest.fixture(scope="module")
def certified(
    server: HubServer, example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """v1 uploaded, pulled, repaired against the tiny E4B base and check-loaded (done once: check-load is real)."""
    root = tmp_path_factory.mktemp("hubflow")
    seed = example_root.adapters[SEED]
    v1 = _upload_v1(server, REPO, seed)
    got = pull(REPO, None, endpoint=server.url, cache_dir=root / "hf-cache")
    src = resolve_base(str(example_root.bases[BASE]))
    plan = build_plan(open_snapshot(str(got.path)), get_profile(src))
    res = apply_plan(plan, root / "fixed", src)
    assert res.verdict == "healthy"
    # the user puts the certificate beside the repaired files (repair --out + check-load --certificate OUT/...)
    cert = check_load(str(root / "fixed"), str(example_root.bases[BASE]), certificate=root / "fixed" / CERTIFICATE_NAME)
    assert cert.passed
    return {"v1": v1, "pulled": got, "fixed": root / "fixed", "root": root, "seed": seed}


def _copy_fixed(certified: dict[str, object], tmp: Path) -> Path:
    dst = tmp / "fixed-copy"
    shutil.copytree(certified["fixed"], dst)  # type: ignore[arg-type]
    return dst


# ----------------------------------------------------------------------------------------------------------------
# the whole path


@pytest.fixture(scope="module")
def published(server: HubServer, certified: dict[str, object], example_root: ExampleSet) -> dict[str, object]:
    before = _server_state(server)
    plan = plan_publish(
        certified["fixed"],  # type: ignore[arg-type]
        REPO,
        parent_commit=None,
        create_pr=False,
        tag="loradoc-fix",
        message=None,
        force=False,
        endpoint=server.url,
        token=TOKEN,
    )
    assert _server_state(server) == before, "planning wrote something"
    res = publish(plan, token=TOKEN)
    return {"plan": plan, "result": res, "commits_added": server.store.commit_count() - before[0]}


def test_pull_resolves_the_revision_to_a_commit(certified: dict[str, object]) -> None:
    got = certified["pulled"]
    assert got.commit_sha == certified["v1"] and got.requested_revision is None  # type: ignore[attr-defined]
    assert got.path.name == got.commit_sha and "models--alice--clinical-extractor" in str(got.path)  # type: ignore
    assert _files(got.path) == _files(certified["seed"])  # type: ignore[attr-defined,arg-type]
    report = json.loads((certified["fixed"] / REPORT_NAME).read_text())  # type: ignore[operator]
    assert report["source"]["commit"] == certified["v1"] and report["source"]["repo_id"] == REPO


def test_plan_lists_every_operation_and_writes_nothing(
    published: dict[str, object], certified: dict[str, object]
) -> None:
    plan = published["plan"]
    data = plan.to_json()  # type: ignore[attr-defined]
    fixed: Path = certified["fixed"]  # type: ignore[assignment]
    ops = {o["path"]: o for o in data["operations"]}
    assert set(ops) == {"adapter_config.json", "adapter_model.safetensors", CERTIFICATE_NAME, REPORT_NAME, "README.md"}
    for name in ("adapter_model.safetensors", CERTIFICATE_NAME, REPORT_NAME):
        import hashlib

        assert ops[name]["sha256"] == hashlib.sha256((fixed / name).read_bytes()).hexdigest()
        assert ops[name]["size"] == (fixed / name).stat().st_size and ops[name]["op"] == "add"
    assert ops["README.md"]["origin"] == "generated"
    assert data["parent_commit"] == certified["v1"] and data["parent_source"] == f"{REPORT_NAME} source.commit"
    assert data["tag"] == "loradoc-fix" and data["verified"] and data["warning"] is None and not data["stale"]
    assert data["card_diff"].startswith("--- a/README.md") and f"+{SECTION_TITLE}" in data["card_diff"]
    assert "+- loradoc-verified" in data["card_diff"]
    json.dumps(data)  # the --plan output is plain JSON


def test_publish_then_pull_gives_a_healthy_adapter(
    server: HubServer,
    published: dict[str, object],
    certified: dict[str, object],
    example_root: ExampleSet,
    tmp_path: Path,
) -> None:
    res = published["result"]
    assert res.tag == "loradoc-fix" and res.pr_num is None and res.verified and res.warning is None  # type: ignore
    assert res.parent_commit == certified["v1"]  # type: ignore[attr-defined]
    api = HfApi(endpoint=server.url)
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits[:2]] == [res.commit_sha, certified["v1"]]  # type: ignore[attr-defined]
    refs = api.list_repo_refs(REPO)
    assert {t.name: t.target_commit for t in refs.tags} == {"loradoc-fix": res.commit_sha}  # type: ignore
    assert published["commits_added"] == 1  # ONE commit

    new = pull(f"{REPO}@loradoc-fix", endpoint=server.url, cache_dir=tmp_path / "cache")
    assert new.commit_sha == res.commit_sha and new.requested_revision == "loradoc-fix"  # type: ignore
    fixed: Path = certified["fixed"]  # type: ignore[assignment]
    got = _files(new.path)
    for name in ("adapter_config.json", "adapter_model.safetensors", CERTIFICATE_NAME, REPORT_NAME):
        assert got[name] == (fixed / name).read_bytes(), f"{name} did not travel byte for byte"
    d = diagnose(str(new.path), str(example_root.bases[BASE]))  # the full doctor (peft dry load)
    assert d.verdict == "healthy", [f.code for f in d.findings]

    # the old revision is still there, byte-identical to what was uploaded
    old = pull(REPO, certified["v1"], endpoint=server.url, cache_dir=tmp_path / "cache2")  # type: ignore[arg-type]
    assert _files(old.path) == _files(certified["seed"])  # type: ignore[arg-type]
    assert diagnose(str(old.path), str(example_root.bases[BASE]), fast=True).verdict != "healthy"


def test_published_card_has_metadata_and_the_generated_section(
    published: dict[str, object], certified: dict[str, object], tmp_path: Path, server: HubServer
) -> None:
    from huggingface_hub import ModelCard

    new = pull(f"{REPO}@loradoc-fix", endpoint=server.url, cache_dir=tmp_path / "cache")
    text = (new.path / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == "google/gemma-4-E4B-it"
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    assert card.data.tags == ["lora", "loradoc-fixture", VERIFIED_TAG]  # the author's tags kept
    assert text.count(SECTION_TITLE) == 1 and START_MARK in text and END_MARK in text
    section = text[text.index(START_MARK) : text.index(END_MARK)]
    for code in ("tower-lora", "tower-injection", "orphan-keys"):
        assert f"`{code}`" in section
    assert "drop-orphans" in section and "drop-tower-loras" in section and "exclude_modules" in section
    assert "dropped 48 tensors" in section and "peft 0.21.2" in section and "on cpu" in section
    assert f"revision `{str(certified['v1'])[:12]}`" in section
    assert "Replicates the key layout" in text  # the author's text kept
    # the Hub indexes it as an adapter of the base
    ids = [m.id for m in HfApi(endpoint=server.url).list_models(filter="base_model:adapter:google/gemma-4-E4B-it")]
    assert REPO in ids


def test_card_update_is_idempotent_and_names_the_original_of_a_repack() -> None:
    report = {
        "passes": ["full-precision-base"],
        "findings_before": [{"code": "quantized-base", "severity": "warning", "count": 1, "message": "a | b"}],
        "dropped": [],
        "kept": [{"key": "k"}],
        "renamed": [],
        "config_changes": [],
    }
    cfg = {"base_model_name_or_path": "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit"}
    readme = "---\nlicense: apache-2.0\ntags: [medical]\n---\n# My adapter\n\nIntro.\n\n## Usage\n\nText.\n"
    section = loading_fix_section(report, None, verified=False, forced_reason="x")
    once = update_card(readme, adapter_config=cfg, section=section, verified=False, repo_id="a/b")
    twice = update_card(once, adapter_config=cfg, section=section, verified=False, repo_id="a/b")
    assert once == twice
    assert once.index(SECTION_TITLE) < once.index("## Usage")  # before the author's first section
    assert "license: apache-2.0" in once and "- medical" in once and VERIFIED_TAG not in once
    assert "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit" in once and "google/gemma-4-E4B-it" in once
    assert "Not verified" in once and "a \\| b" in once
    # a section written by hand under the same title is replaced, not duplicated
    by_hand = readme.replace("## Usage", f"{SECTION_TITLE}\n\nold text\n\n## Usage")
    replaced = update_card(by_hand, adapter_config=cfg, section=section, verified=False, repo_id="a/b")
    assert replaced.count(SECTION_TITLE) == 1 and "old text" not in replaced and "## Usage" in replaced
    # no card at all: one is generated
    fresh = update_card(None, adapter_config=cfg, section=section, verified=True, repo_id="org/name")
    assert fresh.startswith("---\n") and "# name" in fresh and VERIFIED_TAG in fresh


# ----------------------------------------------------------------------------------------------------------------
# publish tells the truth and is idempotent


def _commit_ids(server: HubServer, repo: str) -> list[str]:
    return [c.commit_id for c in HfApi(endpoint=server.url).list_repo_commits(repo)]


def _tags(server: HubServer, repo: str) -> dict[str, str]:
    return {t.name: t.target_commit for t in HfApi(endpoint=server.url).list_repo_refs(repo).tags}


def _nothing_to_publish(exc: BaseException, directory: object, repo: str, commit: str) -> str:
    msg = _one_line(exc)
    assert exit_code_for(exc) == 4, msg
    assert msg.startswith(f"nothing to publish: {directory} equals {repo}@{commit}"), msg
    return msg


def test_publishing_the_same_directory_twice_is_nothing_to_publish(
    server: HubServer, published: dict[str, object], certified: dict[str, object]
) -> None:
    """The branch moved from the repair's source (v1) to our own first publish: that is not a stale parent but
    "nothing to publish", exit 4, no new commit and no tag."""
    first = published["result"]
    commits_before = _commit_ids(server, REPO)
    assert commits_before[:2] == [first.commit_sha, certified["v1"]]  # type: ignore[attr-defined]
    plan = plan_publish(certified["fixed"], REPO, tag="again", endpoint=server.url, token=TOKEN)  # type: ignore
    assert plan.parent_commit == certified["v1"] and plan.head_commit == first.commit_sha  # type: ignore
    assert plan.to_json()["nothing_to_publish"] and not plan.stale
    before = _server_state(server)
    with pytest.raises(LoradocError) as exc:
        publish(plan, token=TOKEN)
    msg = _nothing_to_publish(exc.value, certified["fixed"], REPO, first.commit_sha)  # type: ignore[attr-defined]
    assert "--tag-existing" in msg
    assert _server_state(server) == before  # exactly the one commit of the first publish, no tag "again"
    assert _commit_ids(server, REPO) == commits_before
    assert _tags(server, REPO) == {"loradoc-fix": first.commit_sha}  # type: ignore[attr-defined]


def test_card_names_the_repair_source_and_a_second_publish_changes_nothing(
    server: HubServer, certified: dict[str, object], tmp_path: Path
) -> None:
    """Published to another repository (so the parent is that repository's head), the card still names the
    revision the repair started from, never the head; publishing again produces the same bytes."""
    repo = _fresh_repo(server, certified, "card-source")
    api = HfApi(endpoint=server.url)
    head = api.repo_info(repo).sha
    first = publish(plan_publish(certified["fixed"], repo, endpoint=server.url, token=TOKEN), token=TOKEN)
    assert first.parent_commit == head
    card = Path(api.hf_hub_download(repo, "README.md", revision=first.commit_sha, cache_dir=tmp_path / "c"))
    text = card.read_text()
    section = text[text.index(START_MARK) : text.index(END_MARK)]
    v1 = str(certified["v1"])
    assert f"as published in `{REPO}` revision `{v1[:12]}` did not load as trained" in section
    assert str(head)[:12] not in text and first.commit_sha[:12] not in text

    again = plan_publish(certified["fixed"], repo, endpoint=server.url, token=TOKEN)
    assert again.parent_commit == first.commit_sha  # the head: the report names another repository
    readme = next(o for o in again.operations if o.path == "README.md")
    assert readme.content == card.read_bytes()  # deterministic card
    before = _server_state(server)
    with pytest.raises(LoradocError) as exc:
        publish(again, token=TOKEN)
    _nothing_to_publish(exc.value, certified["fixed"], repo, first.commit_sha)
    assert _server_state(server) == before and _commit_ids(server, repo)[0] == first.commit_sha


def test_a_foreign_commit_equal_in_content_is_not_tagged_unless_asked(
    server: HubServer, certified: dict[str, object]
) -> None:
    repo = _fresh_repo(server, certified, "foreign-copy")
    plan = plan_publish(certified["fixed"], repo, tag="fix", endpoint=server.url, token=TOKEN)
    assert not plan.nothing_to_publish
    # before the publish runs, someone else pushes exactly these files (same card bytes included)
    same = {o.path: o.content if o.content is not None else o.local.read_bytes() for o in plan.operations}  # type: ignore
    assert all(o.op == "add" for o in plan.operations)
    foreign = server.store.seed(repo, same, message="bob's copy", author="bob")
    before = _server_state(server)
    with pytest.raises(LoradocError) as exc:
        publish(plan, token=TOKEN)  # the parent is stale, but the head already holds these files
    msg = _nothing_to_publish(exc.value, certified["fixed"], repo, foreign)
    assert "to tag that existing commit pass --tag fix --tag-existing" in msg
    assert _server_state(server) == before and _tags(server, repo) == {}  # no commit, no tag on bob's commit

    with pytest.raises(BadInputError, match="--tag-existing needs --tag"):
        plan_publish(certified["fixed"], repo, tag_existing=True, endpoint=server.url, token=TOKEN)
    asked = plan_publish(certified["fixed"], repo, tag="fix", tag_existing=True, endpoint=server.url, token=TOKEN)
    assert asked.nothing_to_publish and asked.head_commit == foreign
    with pytest.raises(LoradocError) as exc:
        publish(asked, token=TOKEN)
    assert "(tagged fix on that existing commit)" in _nothing_to_publish(exc.value, certified["fixed"], repo, foreign)
    assert _tags(server, repo) == {"fix": foreign}
    assert _commit_ids(server, repo)[0] == foreign and server.store.commit_count() == before[0]


def test_the_result_is_the_commit_read_back_from_the_hub(server: HubServer, certified: dict[str, object]) -> None:
    repo = _fresh_repo(server, certified, "read-back")
    v1 = HfApi(endpoint=server.url).repo_info(repo).sha
    res = publish(plan_publish(certified["fixed"], repo, tag="fix", endpoint=server.url, token=TOKEN), token=TOKEN)
    assert _commit_ids(server, repo)[:2] == [res.commit_sha, v1] and res.parent_commit == v1
    assert _tags(server, repo) == {"fix": res.commit_sha}

    # another user commits on the branch between our commit and the read-back: a clear error, no tag
    repo = _fresh_repo(server, certified, "raced")
    plan = plan_publish(certified["fixed"], repo, tag="fix", endpoint=server.url, token=TOKEN)
    server.fail_next("commit", "race")
    with pytest.raises(LoradocError) as exc:
        publish(plan, token=TOKEN)
    msg = _one_line(exc.value)
    ours, theirs = _commit_ids(server, repo)[1], _commit_ids(server, repo)[0]
    assert f"the Hub returned commit {ours}, but main is at {theirs[:12]}" in msg and "no tag was placed" in msg
    assert exit_code_for(exc.value) == 2 and _tags(server, repo) == {}


# ----------------------------------------------------------------------------------------------------------------
# refusals and faults: a one-line error and nothing written


def _fresh_repo(server: HubServer, certified: dict[str, object], name: str) -> str:
    repo = f"alice/{name}"
    _upload_v1(server, repo, certified["seed"])  # type: ignore[arg-type]
    return repo


def test_stale_parent_is_refused_and_nothing_is_written(
    server: HubServer, certified: dict[str, object], tmp_path: Path
) -> None:
    repo = _fresh_repo(server, certified, "stale")
    v1 = HfApi(endpoint=server.url).repo_info(repo).sha
    server.store.seed(repo, {"notes.md": "someone else pushed\n"}, message="meanwhile")
    plan = plan_publish(certified["fixed"], repo, parent_commit=v1, tag="fix", endpoint=server.url, token=TOKEN)
    assert plan.stale and plan.to_json()["stale"]
    before = _server_state(server)
    with pytest.raises(StaleParentError) as exc:
        publish(plan, token=TOKEN)
    msg = _one_line(exc.value)
    assert "moved since the parent commit" in msg and "nothing was written" in msg
    assert exit_code_for(exc.value) == 2
    assert _server_state(server) == before
    assert not HfApi(endpoint=server.url).list_repo_refs(repo).tags  # the tag was not created either


def test_missing_or_refused_token(server: HubServer, certified: dict[str, object], monkeypatch) -> None:
    repo = _fresh_repo(server, certified, "no-token")
    plan = plan_publish(certified["fixed"], repo, endpoint=server.url)  # reading needs no token
    before = _server_state(server)
    with pytest.raises(HubAuthError) as exc:
        publish(plan)  # none given, none in HF_TOKEN, no login file
    assert "needs a Hugging Face token" in _one_line(exc.value) and exit_code_for(exc.value) == 2
    with pytest.raises(HubAuthError) as exc:
        publish(plan, token=WRONG_TOKEN)  # the server answers 401
    assert "refused the request (401" in _one_line(exc.value)
    assert _server_state(server) == before
    # HF_TOKEN is used when no token is passed
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert publish(plan).commit_sha != plan.parent_commit


def test_token_from_the_login_file(server: HubServer, certified: dict[str, object], monkeypatch) -> None:
    import tempfile

    import huggingface_hub.constants as C

    with tempfile.TemporaryDirectory(prefix="hf-login-") as home:  # the one file allowed to hold the token
        login = Path(home) / "token"
        login.write_text(TOKEN)
        monkeypatch.setattr(C, "HF_TOKEN_PATH", str(login))
        repo = _fresh_repo(server, certified, "login-file")
        res = publish(plan_publish(certified["fixed"], repo, endpoint=server.url))
    assert HfApi(endpoint=server.url).repo_info(repo).sha == res.commit_sha


def test_unverified_files_are_refused_unless_forced(
    server: HubServer, certified: dict[str, object], tmp_path: Path
) -> None:
    repo = _fresh_repo(server, certified, "unverified")
    verified = publish(plan_publish(certified["fixed"], repo, endpoint=server.url, token=TOKEN), token=TOKEN)
    d = _copy_fixed(certified, tmp_path)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["lora_dropout"] = 0.1  # changed after check-load
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    before = _server_state(server)
    with pytest.raises(UnverifiedError) as exc:
        plan_publish(d, repo, endpoint=server.url, token=TOKEN)
    msg = _one_line(exc.value)
    assert "changed since check-load: adapter_config.json" in msg and "--force" in msg
    (d / CERTIFICATE_NAME).unlink()
    with pytest.raises(UnverifiedError, match="no loradoc-certificate.json"):
        plan_publish(d, repo, endpoint=server.url, token=TOKEN)
    assert _server_state(server) == before

    plan = plan_publish(d, repo, force=True, endpoint=server.url, token=TOKEN)
    assert plan.warning and plan.warning.startswith("FORCED") and plan.to_json()["warning"] == plan.warning
    assert plan.parent_commit == verified.commit_sha
    assert {"op": "delete", "path": CERTIFICATE_NAME} in [
        {k: o[k] for k in ("op", "path")} for o in plan.to_json()["operations"]
    ]
    res = publish(plan, token=TOKEN)
    assert res.warning == plan.warning and not res.verified
    api = HfApi(endpoint=server.url)
    text = Path(api.hf_hub_download(repo, "README.md", revision=res.commit_sha, cache_dir=tmp_path / "c")).read_text()
    assert "**Not verified**" in text and VERIFIED_TAG not in text and text.count(SECTION_TITLE) == 1
    # the previous revision's certificate is removed rather than left to describe other files
    assert api.file_exists(repo, CERTIFICATE_NAME, revision=verified.commit_sha)
    assert not api.file_exists(repo, CERTIFICATE_NAME, revision=res.commit_sha)


def test_readme_comes_from_the_hub_when_the_directory_has_none(
    server: HubServer, certified: dict[str, object], tmp_path: Path
) -> None:
    repo = _fresh_repo(server, certified, "hub-card")
    d = _copy_fixed(certified, tmp_path)
    (d / "README.md").unlink()
    plan = plan_publish(d, repo, force=True, endpoint=server.url, token=TOKEN)
    assert plan.card_source.startswith("hub@") and "Replicates the key layout" in plan.card_after
    assert "not covered" not in (plan.warning or "") and "missing: README.md" in (plan.warning or "")


def test_dropped_connection_leaves_no_partial_commit(server: HubServer, certified: dict[str, object]) -> None:
    repo = _fresh_repo(server, certified, "dropped")
    plan = plan_publish(certified["fixed"], repo, tag="fix", endpoint=server.url, token=TOKEN)
    before = _server_state(server)
    server.fail_next("commit", "drop")  # the server closes the socket half-way through the commit body
    with pytest.raises(HubNetworkError) as exc:
        publish(plan, token=TOKEN)
    msg = _one_line(exc.value)
    assert "failed during the commit" in msg and "nothing was committed" in msg
    assert exit_code_for(exc.value) == 3 and isinstance(exc.value, EnvironmentProblem)
    assert _server_state(server) == before
    # the same plan goes through once the connection is back
    res = publish(plan, token=TOKEN)
    assert res.parent_commit == plan.parent_commit and res.tag == "fix"


def test_connection_lost_after_the_commit_says_it_may_have_landed(
    server: HubServer, certified: dict[str, object]
) -> None:
    repo = _fresh_repo(server, certified, "lost-answer")
    plan = plan_publish(certified["fixed"], repo, endpoint=server.url, token=TOKEN)
    server.fail_next("commit", "after")
    with pytest.raises(HubNetworkError) as exc:
        publish(plan, token=TOKEN)
    assert "the commit may have landed" in _one_line(exc.value)


def test_existing_tag_is_refused_before_committing(server: HubServer, certified: dict[str, object]) -> None:
    repo = _fresh_repo(server, certified, "tagged")
    HfApi(endpoint=server.url, token=TOKEN).create_tag(repo, tag="fix")
    before = _server_state(server)
    with pytest.raises(TagExistsError) as exc:
        plan_publish(certified["fixed"], repo, tag="fix", endpoint=server.url, token=TOKEN)
    assert "already exists" in _one_line(exc.value)
    assert _server_state(server) == before


def test_pull_request_instead_of_a_commit(server: HubServer, certified: dict[str, object], tmp_path: Path) -> None:
    repo = _fresh_repo(server, certified, "as-pr")
    api = HfApi(endpoint=server.url)
    main_before = api.repo_info(repo).sha
    res = publish(plan_publish(certified["fixed"], repo, create_pr=True, endpoint=server.url, token=TOKEN), token=TOKEN)
    assert res.pr_num == 1 and res.pr_revision == "refs/pr/1"
    assert api.repo_info(repo).sha == main_before  # main untouched
    got = pull(repo, "refs/pr/1", endpoint=server.url, cache_dir=tmp_path / "c")
    assert got.commit_sha == res.commit_sha and (got.path / CERTIFICATE_NAME).is_file()


def test_publish_creates_a_missing_repository(server: HubServer, certified: dict[str, object], tmp_path: Path) -> None:
    d = _copy_fixed(certified, tmp_path)
    (d / ".scratch").write_text("not pushed")
    (d / "checkpoints").mkdir()
    plan = plan_publish(d, "bob/brand-new", tag="v1", endpoint=server.url, token=TOKEN)
    assert plan.create_repo and plan.parent_commit is None and plan.card_source == "directory"
    assert plan.skipped == [".scratch", "checkpoints/"]
    res = publish(plan, token=TOKEN)
    got = pull("bob/brand-new@v1", endpoint=server.url, cache_dir=tmp_path / "c")
    assert got.commit_sha == res.commit_sha and (got.path / "adapter_model.safetensors").is_file()


def test_pull_errors_are_one_line(server: HubServer, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(BadInputError) as exc:
        pull("alice/does-not-exist", endpoint=server.url, cache_dir=tmp_path)
    assert "not found" in _one_line(exc.value)
    with pytest.raises(BadInputError) as exc:
        pull(f"{REPO}@no-such-branch", endpoint=server.url, cache_dir=tmp_path)
    assert "revision not found" in _one_line(exc.value)
    with pytest.raises(HubNetworkError) as exc:
        pull(REPO, endpoint="http://127.0.0.1:9", cache_dir=tmp_path)  # nothing listens on port 9
    assert "cannot reach" in _one_line(exc.value) and exit_code_for(exc.value) == 3
    # HF_ENDPOINT is read at call time (huggingface_hub reads it only at import)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    assert pull(REPO, cache_dir=tmp_path / "env").repo_id == REPO


def test_the_token_never_appears_anywhere(
    server: HubServer,
    certified: dict[str, object],
    published: dict[str, object],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every file under the session's tmp tree (HF caches, repaired dirs, certificates) and the server store, the
    logs, stdout/stderr, plans, results and error messages: neither the good nor a refused token."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    repo = _fresh_repo(server, certified, "leak-check")
    plan = plan_publish(certified["fixed"], repo, tag="t", endpoint=server.url, token=TOKEN)
    texts.append(json.dumps(plan.to_json()))
    for attempt in (
        lambda: publish(plan, token=WRONG_TOKEN),
        lambda: pull("alice/nope", endpoint=server.url, token=TOKEN),
    ):
        with pytest.raises(LoradocError) as exc:
            attempt()
        texts += [str(exc.value), repr(exc.value), str(exc.value.__cause__), str(exc.value.__context__)]
    server.fail_next("commit", "drop")
    with pytest.raises(HubNetworkError) as exc:
        publish(plan, token=TOKEN)
    texts.append(str(exc.value))
    res = publish(plan, token=TOKEN)
    texts += [json.dumps(res.to_json()), repr(res), repr(plan), json.dumps(published["result"].to_json())]  # type: ignore
    out, err = capfd.readouterr()
    texts += [out, err, caplog.text, "\n".join(server.access_log)]
    for t in texts:
        assert TOKEN not in t and WRONG_TOKEN not in t
    roots = [tmp_path_factory.getbasetemp(), server.store.root]
    scanned = 0
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                assert TOKEN.encode() not in data and WRONG_TOKEN.encode() not in data, p
                scanned += 1
    assert scanned > 20


def _seeded_server(root: Path, marker: str) -> HubServer:
    srv = HubServer(root / "store")
    srv.store.seed("carol/adapter", {"adapter_config.json": json.dumps({"peft_type": "LORA", "marker": marker})})
    return srv


def test_pull_never_answers_from_the_cache_in_silence(tmp_path: Path) -> None:
    """After a pull, main moves and the endpoint stops answering (or refuses the token): pull fails, names the
    commit the cache holds, and only --offline uses it, saying so."""
    srv = _seeded_server(tmp_path / "a", "v1")
    with srv:
        first = pull("carol/adapter", endpoint=srv.url, cache_dir=tmp_path / "c")
        srv.store.seed("carol/adapter", {"adapter_config.json": '{"peft_type": "LORA", "marker": "v2"}'})
        srv.fail_next("info", "401")
        with pytest.raises(HubAuthError) as refused:
            pull("carol/adapter", endpoint=srv.url, cache_dir=tmp_path / "c")
        assert f"the cache holds carol/adapter@{first.commit_sha[:12]}" in _one_line(refused.value)
        assert "--offline" in _one_line(refused.value) and exit_code_for(refused.value) == 2
        moved = pull("carol/adapter", endpoint=srv.url, cache_dir=tmp_path / "c")
        assert moved.commit_sha != first.commit_sha and not moved.from_cache
        url = srv.url
        srv.fail_next("info", "drop", times=20)  # the connection breaks (retries included)
        with pytest.raises(HubNetworkError) as down:
            pull("carol/adapter", endpoint=url, cache_dir=tmp_path / "c")
        srv.clear_faults()
    assert f"the cache holds carol/adapter@{moved.commit_sha[:12]}" in _one_line(down.value)
    assert exit_code_for(down.value) == 3
    cached = pull("carol/adapter", endpoint=url, cache_dir=tmp_path / "c", offline=True)
    assert cached.from_cache and cached.commit_sha == moved.commit_sha
    with pytest.raises(BadInputError, match="not in the cache"):
        pull("carol/other", endpoint=url, cache_dir=tmp_path / "c", offline=True)


def test_the_cache_is_keyed_by_endpoint(tmp_path: Path) -> None:
    """The same repo id on two servers: each pull gets its own server's files, never the other's snapshot."""
    a, b = _seeded_server(tmp_path / "a", "from-a"), _seeded_server(tmp_path / "b", "from-b")
    with a, b:
        got_a = pull("carol/adapter", endpoint=a.url, cache_dir=tmp_path / "c")
        got_b = pull("carol/adapter", endpoint=b.url, cache_dir=tmp_path / "c")
        url_b = b.url
    assert json.loads((got_a.path / "adapter_config.json").read_text())["marker"] == "from-a"
    assert json.loads((got_b.path / "adapter_config.json").read_text())["marker"] == "from-b"
    offline_b = pull("carol/adapter", endpoint=url_b, cache_dir=tmp_path / "c", offline=True)
    assert json.loads((offline_b.path / "adapter_config.json").read_text())["marker"] == "from-b"


def test_publish_finds_the_certificate_in_the_registry_store(
    server: HubServer, certified: dict[str, object], tmp_path: Path
) -> None:
    """check-load without --certificate stores it under the registry's data directory, keyed by the files' sha256:
    publish looks it up there and pushes it as loradoc-certificate.json."""
    repo = _fresh_repo(server, certified, "stored-cert")
    d = _copy_fixed(certified, tmp_path)
    real_cert = (d / CERTIFICATE_NAME).read_bytes()
    (d / CERTIFICATE_NAME).unlink()
    reg = tmp_path / "data" / "registry.sqlite"
    with pytest.raises(UnverifiedError, match="no loradoc-certificate.json"):
        plan_publish(d, repo, endpoint=server.url, token=TOKEN, registry=reg)
    stored = stored_certificate_path(adapter_file_hashes(d), reg)  # where check-load --registry REG writes it
    stored.parent.mkdir(parents=True)
    stored.write_bytes(real_cert)
    # a stale certificate left in DIR does not hide the matching stored one, and is not pushed
    (d / CERTIFICATE_NAME).write_text(json.dumps({"passed": False, "checks": [{"name": "effect", "passed": False}]}))
    plan = plan_publish(d, repo, endpoint=server.url, token=TOKEN, registry=reg)
    assert plan.verified and plan.warning is None and plan.certificate["origin"] == "registry"
    ops = {o.path: o for o in plan.operations}
    assert ops[CERTIFICATE_NAME].origin == "registry" and ops[CERTIFICATE_NAME].local == stored
    res = publish(plan, token=TOKEN)
    api = HfApi(endpoint=server.url)
    got = api.hf_hub_download(repo, CERTIFICATE_NAME, revision=res.commit_sha, cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == real_cert
    # files changed since: the stored certificate of the same weights says what changed
    (d / CERTIFICATE_NAME).unlink()
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["lora_dropout"] = 0.1
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnverifiedError, match="changed since check-load: adapter_config.json"):
        plan_publish(d, repo, endpoint=server.url, token=TOKEN, registry=reg)
