"""scan-hub over 200 generated E4B-shaped adapters on the test Hub server: headers only, verdicts equal to a local
doctor --fast, broken repositories reported without stopping the scan, retries on transient failures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import BROKEN_KINDS, GeneratedSet, HubServer, generate_scan_adapters

from loradoc.diagnose.doctor import diagnose
from loradoc.hub import scan_hub

BASE = "google/gemma-4-E4B-it"
N = 200


@pytest.fixture(scope="module", autouse=True)
def _no_ambient_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real token from the environment would be refused (401) by the test server: keep it out."""
    import huggingface_hub.constants as C

    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
            mp.delenv(var, raising=False)
        mp.setattr(C, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("hf-home") / "token"))
        yield


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubServer, GeneratedSet, Path]]:
    root = tmp_path_factory.mktemp("scanhub")
    srv = HubServer(root / "store")
    gen = generate_scan_adapters(srv.store, BASE, N, root / "gen")
    # an adapter of another base: never listed
    srv.store.seed(
        "other/adapter", {"README.md": "---\nbase_model: google/medgemma-4b-it\n---\n", "adapter_config.json": "{}"}
    )
    with srv:
        yield srv, gen, root


@pytest.fixture(scope="module")
def scanned(hub: tuple[HubServer, GeneratedSet, Path]):
    srv, gen, _ = hub
    srv.stats.reset()
    seen: list[tuple[int, int, str]] = []
    res = scan_hub(BASE, endpoint=srv.url, concurrency=8, progress=lambda d, t, r: seen.append((d, t, r)))
    return res, srv.stats.snapshot(), srv.stats.weight_bytes(), seen


def test_scan_reads_headers_only(hub, scanned) -> None:
    srv, gen, _ = hub
    res, stats, weight_bytes_served, seen = scanned
    assert [r.repo_id for r in res.rows] == sorted(gen.repos)  # every adapter of the base, nothing else
    assert len(res.rows) == N and len(seen) == N and sorted(d for d, _, _ in seen) == list(range(1, N + 1))
    # the server's own byte counter: at most 0.1% of the weight bytes of the scanned repositories
    assert res.weight_bytes_total == gen.weight_bytes > 5e9
    assert weight_bytes_served == res.weight_bytes_fetched
    assert weight_bytes_served <= 0.001 * gen.weight_bytes, weight_bytes_served / gen.weight_bytes
    # one listing request; config + two Range requests per adapter (+ sniffing / pickle probes on broken ones)
    assert stats["requests"]["list"] == 1
    assert stats["requests"]["resolve"] <= 3 * N + 2 * (N // 20)
    assert set(stats["requests"]) == {"list", "resolve"}


def test_broken_repositories_do_not_stop_the_scan(hub, scanned) -> None:
    _, gen, _ = hub
    res = scanned[0]
    errors = {r.repo_id: r.error for r in res.rows if r.error}
    assert set(errors) == {repo for repo, kind in gen.repos.items() if kind in BROKEN_KINDS}
    by_kind = {gen.repos[repo]: msg for repo, msg in errors.items()}
    assert "no adapter_model.safetensors" in by_kind["missing-weights"]
    assert "HTML" in by_kind["html-weights"]
    assert "not a PEFT adapter config" in by_kind["not-peft"]
    assert "pickle" in by_kind["pickle-only"]
    assert "truncated" in by_kind["truncated-header"]
    assert all("\n" not in m for m in errors.values())
    ok = [r for r in res.rows if not r.error]
    assert all(r.verdict in ("healthy", "repairable", "broken") and r.sha and r.tensors for r in ok)
    assert res.verdicts["healthy"] > 0 and res.verdicts["repairable"] > 0
    assert res.cache_hits == 0  # every generated config differs: each adapter was really analysed


def test_verdicts_equal_a_local_doctor_fast(hub, scanned, tmp_path: Path) -> None:
    """The remote header path gives the same verdict and finding codes as doctor --fast on the same files."""
    srv, gen, root = hub
    res = scanned[0]
    rows = {r.repo_id: r for r in res.rows}
    done: set[str] = set()
    for repo, kind in sorted(gen.repos.items()):
        if kind in BROKEN_KINDS or kind in done:
            continue
        done.add(kind)
        c = srv.store.commit(srv.store.repos[repo].branches["main"])
        d = tmp_path / kind
        d.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(srv.store.blob_path(c.tree[name].sha256), d / name)  # sparse: cheap
        local = diagnose(str(d), BASE, fast=True, read_data=False)
        row = rows[repo]
        assert row.verdict == local.verdict, (kind, row.findings)
        assert [f["code"] for f in row.findings] == [f.code for f in local.findings], kind
        assert row.tensors == len(local.snapshot.tensors)
    assert len(done) >= 10


def test_transient_failures_are_retried(hub) -> None:
    srv, gen, _ = hub
    srv.fail_next("resolve", "503", times=4)
    srv.fail_next("resolve", "drop", times=2)  # the server closes the socket half-way through the answer
    res = scan_hub(BASE, endpoint=srv.url, limit=30, concurrency=4, retries=3, backoff=0.01)
    assert len(res.rows) == 30
    failed = [r for r in res.rows if r.error and gen.repos[r.repo_id] not in BROKEN_KINDS]
    assert not failed, [(r.repo_id, r.error) for r in failed]
    assert sum(r.attempts for r in res.rows) >= 30 + 4
    # a repository whose failures outlast the retries gets an error row; the others are unaffected
    srv.fail_next("resolve", "503", times=50)
    try:
        res = scan_hub(BASE, endpoint=srv.url, limit=3, concurrency=1, retries=1, backoff=0.0)
    finally:
        srv.clear_faults()
    assert all(r.error and "HTTP 503" in r.error and r.attempts == 2 for r in res.rows)


def test_listing_pages_and_limit(hub) -> None:
    srv, _, _ = hub
    srv.page_size = 16
    srv.stats.reset()
    try:
        res = scan_hub(BASE, endpoint=srv.url, limit=40, concurrency=8)
    finally:
        srv.page_size = 1000
    assert len(res.rows) == 40 and srv.stats.snapshot()["requests"]["list"] == 3  # 16 + 16 + 8
    assert json.dumps(res.to_json())  # the --json output
