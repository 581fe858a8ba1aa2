"""``loradoc registry scan-hub --base BASE``: the verdict of every adapter of a base on the Hub, from headers alone.

For each repository listed by ``list_models(filter="base_model:adapter:BASE")`` it reads only
``adapter_config.json`` and the safetensors header (an HTTP Range request for the first 8 bytes, then one for
the header itself: no tensor data), and runs doctor's static analysis against BASE's profile (the same analysis
as ``loradoc doctor --fast`` without the data checks). Bounded concurrency, retries with backoff on transient
errors; a repository that fails gets ``row.error`` and the scan goes on.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import LoradocError
from loradoc.hub._common import (
    first_line,
    hf_api,
    http_status,
    is_transport_error,
    raise_hub_error,
    resolve_endpoint,
    resolve_token,
)
from loradoc.io.snapshot import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME
from loradoc.progress import Progress

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class ScanRow:
    repo_id: str
    sha: str | None
    verdict: str | None  # healthy | repairable | broken; None when the repository could not be analysed
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    tensors: int | None = None
    weights_size: int | None = None  # size of adapter_model.safetensors on the Hub
    bytes_fetched: int = 0  # bytes of file content fetched for this row (config + header ranges)
    weight_bytes_fetched: int = 0  # of which from the weights file
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "sha": self.sha,
            "verdict": self.verdict,
            "findings": self.findings,
            "error": self.error,
            "tensors": self.tensors,
            "weights_size": self.weights_size,
            "bytes_fetched": self.bytes_fetched,
            "weight_bytes_fetched": self.weight_bytes_fetched,
            "attempts": self.attempts,
        }


@dataclass
class ScanResult:
    base: str
    endpoint: str
    rows: list[ScanRow]
    bytes_fetched: int
    weight_bytes_fetched: int
    weight_bytes_total: int
    seconds: float
    cache_hits: int = 0  # adapters whose (config, header) pair was already analysed in this scan
    profile_note: str | None = None  # the base profile is a prediction under the installed transformers

    @property
    def verdicts(self) -> dict[str, int]:
        return dict(Counter(r.verdict or "error" for r in self.rows))

    @property
    def errors(self) -> list[ScanRow]:
        return [r for r in self.rows if r.error]

    @property
    def adapters_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "endpoint": self.endpoint,
            "adapters": len(self.rows),
            "verdicts": self.verdicts,
            "bytes_fetched": self.bytes_fetched,
            "weight_bytes_fetched": self.weight_bytes_fetched,
            "weight_bytes_total": self.weight_bytes_total,
            "seconds": round(self.seconds, 3),
            "cache_hits": self.cache_hits,
            "profile_note": self.profile_note,
            "rows": [r.to_json() for r in self.rows],
        }


class _Transient(Exception):
    """A failure worth retrying (connection trouble, 5xx, 429)."""


class _Fetcher:
    """Range GETs through huggingface_hub's HTTP session (its proxies, user agent and auth headers)."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        from huggingface_hub.utils import build_hf_headers, get_session

        self.endpoint = endpoint
        self.token = token
        self.session = get_session()
        self.headers = build_hf_headers(token=token if token else False)

    def get(self, repo: str, revision: str, filename: str, byte_range: tuple[int, int] | None = None) -> Any:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import hf_raise_for_status

        url = hf_hub_url(repo, filename, revision=revision, endpoint=self.endpoint)
        headers = dict(self.headers)
        headers["Accept-Encoding"] = "identity"
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        try:
            # follow_redirects: on the real Hub, LFS/xet files redirect to a CDN (httpx drops the auth header there)
            resp = self.session.get(url, headers=headers, follow_redirects=True, timeout=30)
        except Exception as e:
            if is_transport_error(e):
                raise _Transient(first_line(e, self.token)) from None
            raise
        if resp.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"{filename}: HTTP {resp.status_code}")
        hf_raise_for_status(resp)
        return resp


def _analyse(repo: str, sha: str, config_bytes: bytes, header: Any, profile: Any) -> tuple[str, list[Any], int]:
    """doctor --fast's verdict (static analysis, no data checks) for a remote adapter."""
    from loradoc.diagnose import findings as F
    from loradoc.diagnose.analysis import analyze
    from loradoc.diagnose.doctor import explain_error, verdict_of
    from loradoc.io.adapter_config import decode_config_json, parse_adapter_config, with_notes
    from loradoc.io.snapshot import AdapterSnapshot, TensorRecord

    label = f"{repo}@{sha[:12]}"
    notes: list[str] = []
    cfg = parse_adapter_config(
        decode_config_json(config_bytes, f"{label}/{CONFIG_NAME}", notes), source=f"{label}/{CONFIG_NAME}"
    )
    if notes:
        cfg = with_notes(cfg, notes)
    tensors = {n: TensorRecord(n, i.dtype, i.shape) for n, i in header.tensors.items()}
    where = Path(f"hub:{label}")
    snap = AdapterSnapshot(where, cfg, where / SAFETENSORS_NAME, "safetensors", tensors, "hub", repo, sha, sha, header)
    st = analyze(snap, profile)
    findings = list(st.findings)
    findings.extend(explain_error(findings, st.predicted, st.predicted))
    order = {F.ERROR: 0, F.WARNING: 1, F.INFO: 2}
    findings.sort(key=lambda f: (order[f.severity], f.tower or "", f.code))
    return verdict_of(findings, st.predicted), findings, len(tensors)


class _VerdictCache:
    """Identical (config, header) pairs get identical verdicts: re-uploads and forks are analysed once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[bytes, tuple[str, list[dict[str, Any]], int]] = {}
        self.hits = 0

    @staticmethod
    def key(config_bytes: bytes, header_bytes: bytes) -> bytes:
        h = hashlib.sha256(len(config_bytes).to_bytes(8, "little"))
        h.update(config_bytes)
        h.update(header_bytes)
        return h.digest()

    def get(self, key: bytes) -> tuple[str, list[dict[str, Any]], int] | None:
        with self.lock:
            hit = self.data.get(key)
            if hit is not None:
                self.hits += 1
            return hit

    def put(self, key: bytes, value: tuple[str, list[dict[str, Any]], int]) -> None:
        with self.lock:
            self.data[key] = value


def _scan_one(fetch: _Fetcher, repo: str, sha: str | None, profile: Any, row: ScanRow, cache: _VerdictCache) -> None:
    from loradoc.io.safetensors import header_bytes_needed, parse_header_bytes

    rev = sha or "main"
    try:
        resp = fetch.get(repo, rev, CONFIG_NAME)
    except Exception as e:
        if http_status(e) == 404:
            raise LoradocError(f"no {CONFIG_NAME} in {repo}@{rev[:12]}") from None
        raise
    row.sha = sha = sha or resp.headers.get("X-Repo-Commit") or None
    rev = sha or rev
    config_bytes = resp.content
    row.bytes_fetched += len(config_bytes)
    label = f"{repo}@{rev[:12]}/{SAFETENSORS_NAME}"
    try:
        first = fetch.get(repo, rev, SAFETENSORS_NAME, (0, 7))
    except Exception as e:
        if http_status(e) == 404:
            raise LoradocError(_missing_weights(fetch, repo, rev, row)) from None
        raise
    prefix = first.content
    row.bytes_fetched += len(prefix)
    row.weight_bytes_fetched += len(prefix)
    if first.status_code == 206:
        total = int(first.headers.get("Content-Range", "").rsplit("/", 1)[-1] or 0)
    else:  # the server ignored the Range header and sent the whole file
        total = len(prefix)
    row.weights_size = total
    try:
        need = header_bytes_needed(prefix, total, label)
    except LoradocError:
        # not a safetensors header: fetch a little more so the error can say what the file is (HTML, JSON...)
        if len(prefix) < min(total, 256):
            more = fetch.get(repo, rev, SAFETENSORS_NAME, (len(prefix), min(total, 256) - 1))
            row.bytes_fetched += len(more.content)
            row.weight_bytes_fetched += len(more.content)
            prefix += more.content if more.status_code == 206 else more.content[len(prefix) : 256]
        parse_header_bytes(prefix, total, Path(label))  # raises the specific error
        raise
    if len(prefix) < need:
        rest = fetch.get(repo, rev, SAFETENSORS_NAME, (len(prefix), need - 1))
        # a server that ignores Range sends the whole file: keep only the header bytes
        rest_bytes = rest.content if rest.status_code == 206 else rest.content[len(prefix) : need]
        row.bytes_fetched += len(rest.content)
        row.weight_bytes_fetched += len(rest.content)
        prefix += rest_bytes
    header = parse_header_bytes(prefix, total, Path(label))
    key = cache.key(config_bytes, bytes(prefix[:need]))
    hit = cache.get(key)
    if hit is None:
        verdict, findings, n = _analyse(repo, rev, config_bytes, header, profile)
        hit = (verdict, [f.to_json(max_keys=0) for f in findings], n)
        cache.put(key, hit)
    row.verdict, row.findings, row.tensors = hit[0], [dict(f) for f in hit[1]], hit[2]


def _missing_weights(fetch: _Fetcher, repo: str, rev: str, row: ScanRow) -> str:
    try:
        probe = fetch.get(repo, rev, PICKLE_NAME, (0, 0))
    except Exception:  # noqa: BLE001
        return f"no {SAFETENSORS_NAME} in {repo}@{rev[:12]}"
    row.bytes_fetched += len(probe.content)
    row.weight_bytes_fetched += len(probe.content)
    return f"weights are a pickle {PICKLE_NAME} (not read by scan-hub; run loradoc doctor --allow-pickle)"


def scan_hub(
    base: str,
    *,
    limit: int | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    concurrency: int = 16,
    retries: int = 3,
    progress: Progress | None = None,
    profile_base: str | None = None,
    backoff: float = 0.25,
) -> ScanResult:
    """Scan the adapters of ``base`` (a Hub model id) on the endpoint.

    ``profile_base`` (default: ``base``) names the base whose cached/shipped profile the analysis uses (a local
    directory works, once its profile is cached). ``progress(done, total, repo_id)`` is called after each repository.
    """
    from loradoc.model.profiles import get_profile

    t0 = time.perf_counter()
    profile = get_profile(profile_base or base, allow_build=False)
    # analyze() rebuilds the profile's address index on every call; this profile object is ours alone, so build
    # it once (a 20-30% saving per adapter)
    index = profile.address_index()
    profile.address_index = lambda: index  # type: ignore[method-assign]
    cache = _VerdictCache()
    ep = resolve_endpoint(endpoint)
    tok = resolve_token(token)
    api = hf_api(ep, tok)
    try:
        listed = [
            (m.id, getattr(m, "sha", None))
            for m in api.list_models(filter=f"base_model:adapter:{base}", limit=limit, expand=["sha"])
        ]
    except Exception as e:  # noqa: BLE001
        raise_hub_error(e, what=f"list the adapters of {base}", endpoint=ep, token=tok, repo=base)
    if limit is not None:
        listed = listed[:limit]
    fetch = _Fetcher(ep, tok)
    rows = [ScanRow(repo, sha, None) for repo, sha in listed]
    lock = threading.Lock()

    def work(row: ScanRow) -> ScanRow:
        for attempt in range(retries + 1):
            row.attempts = attempt + 1
            try:
                _scan_one(fetch, row.repo_id, row.sha, profile, row, cache)
                row.error = None
                return row
            except _Transient as e:
                row.error = f"{e} (after {attempt + 1} attempt{'s' if attempt else ''})"
                if attempt < retries:
                    time.sleep(backoff * (2**attempt) * (0.5 + random.random()))
                    continue
            except LoradocError as e:
                row.error = e.one_line()
            except Exception as e:  # noqa: BLE001 - one repository's failure never stops the scan
                row.error = first_line(e, tok)
            break
        row.verdict = None
        return row

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="loradoc-scan") as pool:
        futures = [pool.submit(work, r) for r in rows]
        for fut in as_completed(futures):
            row = fut.result()
            with lock:
                done += 1
            if progress is not None:
                progress(done, len(rows), row.repo_id)
    return ScanResult(
        base=base,
        endpoint=ep,
        rows=rows,
        bytes_fetched=sum(r.bytes_fetched for r in rows),
        weight_bytes_fetched=sum(r.weight_bytes_fetched for r in rows),
        weight_bytes_total=sum(r.weights_size or 0 for r in rows),
        seconds=time.perf_counter() - t0,
        cache_hits=cache.hits,
        profile_note=profile.note,
    )
