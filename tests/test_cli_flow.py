"""The headless CLI end to end, with --json and --record, against the loopback Hub server:
pull -> doctor -> repair -> check-load -> publish --tag -> registry show / compat -> scan-hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import HubServer
from huggingface_hub import CommitOperationAdd, HfApi

from loradoc.cli import main
from loradoc.demo.builder import ExampleSet

TOKEN = "hf_loradocCLIflowTOKEN000111222333"
REPO = "alice/clinical-cli"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    srv = HubServer(tmp_path_factory.mktemp("hub-cli") / "store")
    srv.add_token(TOKEN, "alice")
    with srv:
        yield srv


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | list | str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        return code, out + err


def test_cli_flow(
    server: HubServer,
    example_root: ExampleSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LORADOC_MANIFESTS", str(tmp_path / "manifests"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    reg = ["--registry", str(tmp_path / "reg.sqlite")]
    base = str(example_root.bases["tiny-gemma4-e4b"])
    seed = example_root.adapters["seed-clinical-endpoint-extractor"]
    api = HfApi(endpoint=server.url, token=TOKEN)
    api.create_repo(REPO)
    v1 = api.create_commit(
        REPO, [CommitOperationAdd(p.name, str(p)) for p in sorted(seed.iterdir()) if p.is_file()], commit_message="v1"
    ).oid

    code, got = run(
        ["pull", REPO, "--endpoint", server.url, "--base", base, "--cache-dir", str(tmp_path / "hf"), *reg, "--json"],
        capsys,
    )
    assert code == 0 and got["commit_sha"] == v1
    pulled = got["path"]

    # doctor reads REPO@REV straight from the endpoint too (through the same download path as pull)
    code, remote = run(["doctor", f"{REPO}@{v1}", "--endpoint", server.url, "--base", base, "--json"], capsys)
    assert code == 1 and remote["verdict"] == "repairable" and remote["adapter"]["commit"] == v1

    code, d = run(["doctor", pulled, "--base", base, "--json", "--record", *reg], capsys)
    assert code == 1 and d["verdict"] == "repairable"

    out = str(tmp_path / "fixed")
    code, r = run(["repair", pulled, "--base", base, "--out", out, "--json", "--record", *reg], capsys)
    assert code == 0 and r["verdict"] == "healthy"
    assert r["report"]["source"]["commit"] == v1

    code, c = run(["check-load", out, "--base", base, "--device", "cpu", "--json", "--record", *reg], capsys)
    assert code == 0 and c["passed"]
    # the certificate goes to the registry's data directory, keyed by the files' sha256, never into the adapter
    assert Path(c["certificate_path"]).parent.parent == tmp_path / "certificates"
    assert not (Path(out) / "loradoc-certificate.json").exists()

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, plan = run(
        ["publish", out, "--repo", REPO, "--tag", "loradoc-fix", "--endpoint", server.url, *reg, "--plan", "--json"],
        capsys,
    )
    assert code == 0 and plan["written"] is False and plan["plan"]["parent_commit"] == v1
    assert plan["plan"]["verified"] and plan["plan"]["certificate"]["origin"] == "registry"
    assert {"op": "add", "path": "loradoc-certificate.json", "origin": "registry"} in [
        {k: o[k] for k in ("op", "path", "origin")} for o in plan["plan"]["operations"]
    ]
    code, pushed = run(
        ["publish", out, "--repo", REPO, "--tag", "loradoc-fix", "--endpoint", server.url, *reg, "--json"], capsys
    )
    assert code == 0 and pushed["tag"] == "loradoc-fix" and pushed["recorded"]
    # the printed commit is the branch head read back, made on the repair's source
    assert pushed["commit_sha"] == api.repo_info(REPO).sha and pushed["parent_commit"] == v1
    history = [c.commit_id for c in api.list_repo_commits(REPO)]
    assert history[:2] == [pushed["commit_sha"], v1]

    # the same directory again: nothing to publish (exit 4), no commit, no tag, nothing recorded
    again = ["publish", out, "--repo", REPO, "--tag", "again", "--endpoint", server.url, *reg]
    code, text = run([*again, "--plan"], capsys)
    assert code == 4 and f"nothing to publish: {out} equals {REPO}@{pushed['commit_sha']}" in text
    code, text = run(again, capsys)
    assert code == 4 and str(text).startswith(f"nothing to publish: {out} equals {REPO}@{pushed['commit_sha']};")
    assert "--tag-existing" in str(text) and "pushed" not in str(text)
    code, nothing = run([*again, "--json"], capsys)
    assert code == 4 and nothing["nothing_to_publish"] and nothing["commit_sha"] == pushed["commit_sha"]
    assert nothing["recorded"] is None and nothing["tag"] is None
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == history
    assert {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags} == {"loradoc-fix": pushed["commit_sha"]}
    monkeypatch.delenv("HF_TOKEN")

    code, m = run(["registry", "show", REPO, "--json", *reg], capsys)
    assert code == 0
    revisions = {rv["revision"]: rv for rv in m["revisions"]}
    assert v1 in revisions and revisions[v1]["status"] == "repairable"
    hub = [h for rv in m["revisions"] for h in rv.get("hub", [])]
    assert len(hub) == 1 and hub[0]["commit"] == pushed["commit_sha"] and hub[0]["tag"] == "loradoc-fix"
    assert m["lineage"] and "drop-orphans" in m["lineage"][-1]["passes"]
    assert any(rv.get("certificates") for rv in m["revisions"])

    code, listing = run(["registry", "list", "--json", *reg], capsys)
    assert REPO in {a["id"] for a in listing["adapters"]}

    # the pulled-back new revision is healthy
    code, got2 = run(
        [
            "pull",
            f"{REPO}@loradoc-fix",
            "--endpoint",
            server.url,
            "--cache-dir",
            str(tmp_path / "hf2"),
            "--no-record",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and got2["commit_sha"] == pushed["commit_sha"]
    code, d2 = run(["doctor", got2["path"], "--base", base, "--json"], capsys)
    assert code == 0 and d2["verdict"] == "healthy"

    # the token never reaches the registry's files
    for p in (tmp_path / "manifests").rglob("*"):
        if p.is_file():
            assert TOKEN not in p.read_text(errors="ignore")


def test_scan_hub_records_rows(
    server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hubserver import generate_scan_adapters

    monkeypatch.setenv("LORADOC_MANIFESTS", str(tmp_path / "manifests"))
    base = "google/gemma-4-E4B-it"
    gen = generate_scan_adapters(server.store, base, 6, tmp_path / "gen", org="cliscan", broken_every=5)
    repos = list(gen.repos)
    reg = ["--registry", str(tmp_path / "reg.sqlite")]
    code, res = run(["registry", "scan-hub", "--base", base, "--endpoint", server.url, *reg, "--json"], capsys)
    assert code == 0
    scanned = {row["repo_id"] for row in res["rows"]}
    assert set(repos) <= scanned
    code, listing = run(["registry", "list", "--base", base, "--json", *reg], capsys)
    ok = {row["repo_id"] for row in res["rows"] if row["verdict"]}
    assert ok and ok <= {a["id"] for a in listing["adapters"]}
