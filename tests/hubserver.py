"""A small Hugging Face Hub-compatible HTTP server for the tests (and benchmarks/scan_hub.py). Not shipped.

It speaks the endpoints huggingface_hub 2.x really calls, checked against its source:

    GET  /api/whoami-v2
    POST /api/validate-yaml                                   README front matter check
    POST /api/repos/create                                    create_repo (409 when it exists)
    GET  /api/models?filter=base_model:adapter:ID&...         list_models (Link-header pagination, expand=sha)
    GET  /api/models/{repo}[/revision/{rev}]                  model_info / repo_info (siblings, lfs with blobs=1)
    GET  /api/models/{repo}/tree/{rev}[/{path}]               list_repo_tree (recursive=)
    POST /api/models/{repo}/paths-info/{rev}                  get_paths_info
    GET  /api/models/{repo}/refs?include_prs=1                list_repo_refs (branches, converts, tags, pullRequests)
    GET  /api/models/{repo}/commits/{rev}                     list_repo_commits
    POST /api/models/{repo}/tag/{rev}                         create_tag (409 when it exists)
    POST /api/models/{repo}/preupload/{rev}                   answers uploadMode "regular": no LFS batch, no xet
    POST /api/models/{repo}/commit/{rev}[?create_pr=1]        NDJSON header/file/lfsFile/deletedFile/deletedFolder;
                                                              parentCommit != head -> 412; create_pr -> refs/pr/N
    HEAD/GET /{repo}/resolve/{rev}/{path}                     X-Repo-Commit, quoted ETag, X-Linked-Etag/-Size for
                                                              LFS files, Range -> 206 (416 when unsatisfiable)

Storage is content-addressed on disk: ``blobs/<sha256>``, ``commits/<id>.json`` (parent + tree = path -> blob),
``repos/<org>/<name>.json`` (branches, tags, pull-request refs). A commit is made visible by one atomic rename of
the repo file after everything it references is on disk, so a request that dies half-way leaves no partial commit.

Writes need ``Authorization: Bearer <token>`` with a token the server knows (else 401); an unknown token is refused
(401) on every request. Bytes served are counted per request kind and per file name (``server.stats``), and
``server.fail_next(kind, mode)`` injects faults: ``drop`` (close the socket half-way through the request body, or
half-way through the response body for GETs), ``after`` (commit only: apply the commit, then drop the connection
before answering), ``race`` (commit only: apply the commit, then another user's commit on top of it on the same
branch, then answer with the first), or an HTTP status such as ``503``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

LFS_PATTERNS = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".model",
    ".npz",
    ".zip",
    ".tar.gz",
)
GITATTRIBUTES = "".join(f"*{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_FRONT_MATTER = re.compile(r"\A\s*---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_PATTERNS)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# The store


@dataclass
class FileEntry:
    sha256: str
    size: int
    oid: str  # git blob oid: of the content, or of the LFS pointer for LFS files
    lfs: bool

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "oid": self.oid, "lfs": self.lfs}


@dataclass
class Commit:
    id: str
    parent: str | None
    tree: dict[str, FileEntry]
    title: str
    message: str
    author: str
    date: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "tree": {p: e.to_json() for p, e in sorted(self.tree.items())},
            "title": self.title,
            "message": self.message,
            "author": self.author,
            "date": self.date,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Commit:
        tree = {p: FileEntry(**e) for p, e in d["tree"].items()}
        return cls(d["id"], d["parent"], tree, d["title"], d["message"], d["author"], d["date"])


@dataclass
class Repo:
    id: str
    private: bool = False
    created: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)  # every commit of this repo, oldest first

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "private": self.private,
            "created": self.created,
            "branches": self.branches,
            "tags": self.tags,
            "prs": {str(k): v for k, v in self.prs.items()},
            "commits": self.commits,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Repo:
        return cls(
            d["id"],
            d["private"],
            d["created"],
            dict(d["branches"]),
            dict(d["tags"]),
            {int(k): v for k, v in d["prs"].items()},
            list(d["commits"]),
        )


@dataclass(frozen=True)
class Blob:
    """An object already in the blob store (seeding: many repositories share one weights file)."""

    sha256: str
    size: int


@dataclass
class Op:
    kind: str  # add | delete | delete-folder
    path: str
    data: bytes | None = None  # add: regular content
    sha256: str | None = None  # add: an LFS object already in the blob store
    src: Path | None = None  # add: a local file (seeding only)


class HubStore:
    """Blobs by sha256, commits as JSON, refs per repo; all under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for d in ("blobs", "commits", "repos"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self._commits: dict[str, Commit] = {}
        self._card_cache: dict[str, dict[str, Any]] = {}
        for p in sorted((self.root / "repos").glob("*/*.json")):
            r = Repo.from_json(json.loads(p.read_text()))
            self.repos[r.id] = r

    # -- blobs ---------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        p = self.blob_path(sha)
        if not p.exists():
            _write_atomic(p, data)
        return sha

    def put_file(self, src: Path) -> tuple[str, int]:
        """Copy a local file in (zero runs stay sparse), return (sha256, size)."""
        h = hashlib.sha256()
        tmp = self.root / "blobs" / f".in.{os.getpid()}.{threading.get_ident()}"
        size = 0
        zero = bytes(1 << 20)
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            while chunk := fi.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
                if chunk == zero[: len(chunk)]:
                    fo.seek(len(chunk), os.SEEK_CUR)
                else:
                    fo.write(chunk)
            fo.truncate(size)
        sha = h.hexdigest()
        if self.blob_path(sha).exists():
            tmp.unlink()
        else:
            os.replace(tmp, self.blob_path(sha))
        return sha, size

    def entry_for_blob(self, path: str, sha256: str, size: int, data: bytes | None = None) -> FileEntry:
        if _is_lfs(path):
            return FileEntry(sha256, size, git_blob_oid(lfs_pointer(sha256, size)), True)
        if data is None:
            data = self.blob_path(sha256).read_bytes()
        return FileEntry(sha256, size, git_blob_oid(data), False)

    # -- commits -------------------------------------------------------------------------------------------
    def commit(self, cid: str) -> Commit:
        c = self._commits.get(cid)
        if c is None:
            c = Commit.from_json(json.loads((self.root / "commits" / f"{cid}.json").read_text()))
            self._commits[cid] = c
        return c

    def commit_count(self) -> int:
        return len(list((self.root / "commits").glob("*.json")))

    def _save_repo(self, repo: Repo) -> None:
        org, name = repo.id.split("/", 1)
        _write_atomic(self.root / "repos" / org / f"{name}.json", json.dumps(repo.to_json(), indent=1).encode())

    def create_repo(self, repo_id: str, *, private: bool = False, author: str = "hub") -> Repo:
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, f"You already created this model repo: {repo_id}", "RepoExists")
            repo = Repo(repo_id, private=private)
            cid = self._write_commit(
                None, {}, [Op("add", ".gitattributes", data=GITATTRIBUTES)], "initial commit", "", author
            )
            repo.branches["main"] = cid
            repo.commits.append(cid)
            self._save_repo(repo)
            self.repos[repo_id] = repo
            return repo

    def get_repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, rev: str) -> str:
        """A branch, tag, refs/pr/N, refs/heads/x, refs/tags/x, or a full commit id of this repo."""
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
        elif rev.startswith("refs/tags/"):
            hit = repo.tags.get(rev[len("refs/tags/") :])
            if hit:
                return hit
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and int(m.group(1)) in repo.prs:
            return repo.prs[int(m.group(1))]
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        if _HEX40.match(rev) and rev in repo.commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _write_commit(
        self, parent: str | None, tree: dict[str, FileEntry], ops: list[Op], title: str, message: str, author: str
    ) -> str:
        tree = dict(tree)
        for op in ops:
            if op.kind == "delete":
                if op.path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound")
                del tree[op.path]
            elif op.kind == "delete-folder":
                prefix = op.path.rstrip("/") + "/"
                gone = [p for p in tree if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {op.path}", "EntryNotFound")
                for p in gone:
                    del tree[p]
            elif op.data is not None:
                sha = self.put_bytes(op.data)
                tree[op.path] = self.entry_for_blob(op.path, sha, len(op.data), op.data)
            elif op.src is not None:
                sha, size = self.put_file(op.src)
                tree[op.path] = self.entry_for_blob(op.path, sha, size)
            else:
                assert op.sha256 is not None
                bp = self.blob_path(op.sha256)
                if not bp.exists():
                    raise HubError(422, f"LFS object {op.sha256} of {op.path} was never uploaded", "LfsMissing")
                tree[op.path] = FileEntry(
                    op.sha256, bp.stat().st_size, git_blob_oid(lfs_pointer(op.sha256, bp.stat().st_size)), True
                )
        date = _now()
        body = {
            "parent": parent,
            "tree": {p: e.to_json() for p, e in sorted(tree.items())},
            "title": title,
            "message": message,
            "author": author,
            "date": date,
            "nonce": time.time_ns(),
        }
        cid = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        c = Commit(cid, parent, tree, title, message, author, date)
        _write_atomic(self.root / "commits" / f"{cid}.json", json.dumps(c.to_json(), indent=1).encode())
        self._commits[cid] = c
        return cid

    def apply_commit(
        self,
        repo_id: str,
        revision: str,
        ops: list[Op],
        *,
        title: str,
        message: str = "",
        author: str = "hub",
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[str, int | None]:
        """Make a commit on ``revision`` (a branch, or refs/pr/N) or open a pull request. Returns (id, pr number)."""
        with self.lock:
            repo = self.get_repo(repo_id)
            head = self.resolve(repo, revision)
            if create_pr:
                base = head
                if parent_commit is not None:
                    if parent_commit not in repo.commits:
                        raise HubError(412, f"parent commit {parent_commit} is not a commit of {repo_id}")
                    base = parent_commit
            else:
                if parent_commit is not None and parent_commit != head:
                    raise HubError(
                        412,
                        f"A commit has happened since. Please refresh and try again. (parent {parent_commit[:12]} "
                        f"is not the head {head[:12]} of {revision})",
                    )
                base = head
            cid = self._write_commit(base, self.commit(base).tree, ops, title, message, author)
            repo.commits.append(cid)
            pr_num = None
            m = re.fullmatch(r"refs/pr/(\d+)", revision)
            if create_pr:
                pr_num = max([0, *repo.prs]) + 1
                repo.prs[pr_num] = cid
            elif m:
                repo.prs[int(m.group(1))] = cid
            else:
                repo.branches[revision.removeprefix("refs/heads/")] = cid
            self._save_repo(repo)  # the commit point: one atomic rename
            return cid, pr_num

    def create_tag(self, repo_id: str, revision: str, tag: str) -> str:
        with self.lock:
            repo = self.get_repo(repo_id)
            cid = self.resolve(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists", "TagExists")
            repo.tags[tag] = cid
            self._save_repo(repo)
            return cid

    # -- seeding (tests and benchmarks: no HTTP) -----------------------------------------------------------
    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path | Blob],
        *,
        message: str = "upload",
        author: str = "seeder",
        revision: str = "main",
    ) -> str:
        if repo_id not in self.repos:
            self.create_repo(repo_id, author=author)
        ops = []
        for p, v in files.items():
            if isinstance(v, Blob):
                ops.append(Op("add", p, sha256=v.sha256))
            elif isinstance(v, Path):
                ops.append(Op("add", p, src=v))
            else:
                ops.append(Op("add", p, data=v.encode() if isinstance(v, str) else v))
        cid, _ = self.apply_commit(repo_id, revision, ops, title=message, author=author)
        return cid

    # -- model cards -----------------------------------------------------------------------------------------
    def card_data(self, commit: Commit) -> dict[str, Any]:
        hit = self._card_cache.get(commit.id)
        if hit is not None:
            return hit
        data: dict[str, Any] = {}
        e = commit.tree.get("README.md")
        if e is not None:
            m = _FRONT_MATTER.match(self.blob_path(e.sha256).read_text(encoding="utf-8", errors="replace"))
            if m:
                with contextlib.suppress(yaml.YAMLError):
                    loaded = yaml.safe_load(m.group(1))
                    if isinstance(loaded, dict):
                        data = loaded
        self._card_cache[commit.id] = data
        return data

    def model_tags(self, commit: Commit) -> tuple[list[str], dict[str, Any]]:
        """The tags the Hub derives: the card's tags, library, base_model:X and base_model:<relation>:X."""
        card = self.card_data(commit)
        tags = [str(t) for t in (card.get("tags") or []) if isinstance(t, str | int | float)]
        if card.get("library_name"):
            tags.append(str(card["library_name"]))
        bases = card.get("base_model") or []
        bases = [bases] if isinstance(bases, str) else [b for b in bases if isinstance(b, str)]
        relation = card.get("base_model_relation") or ("adapter" if "adapter_config.json" in commit.tree else None)
        for b in bases:
            tags.append(f"base_model:{b}")
            if relation:
                tags.append(f"base_model:{relation}:{b}")
        return list(dict.fromkeys(tags)), card


# --------------------------------------------------------------------------------------------------------------
# Statistics and faults


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes_by_kind: Counter[str] = Counter()
        self.bytes_by_file: Counter[str] = Counter()  # resolve GET bodies, by file name (last path part)
        self.bytes_received: Counter[str] = Counter()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_by_kind.clear()
            self.bytes_by_file.clear()
            self.bytes_received.clear()

    def weight_bytes(self) -> int:
        """Bytes of weight files (*.safetensors, *.bin, ...) served by /resolve GETs."""
        with self.lock:
            return sum(n for name, n in self.bytes_by_file.items() if _is_lfs(name))

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "bytes_by_kind": dict(self.bytes_by_kind),
                "bytes_by_file": dict(self.bytes_by_file),
                "bytes_received": dict(self.bytes_received),
            }


# --------------------------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loradoc-test-hub/1"
    timeout = 60
    server: HubServer

    # silence the default access log (it would go to stderr); keep a short log without headers
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.access_log.append(format % args)

    # -- plumbing ------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self.parts = [unquote(p) for p in url.path.split("/") if p != ""]
        self.method = method
        self.kind = "api"
        try:
            route = self._route()
            self.kind = route[0]
            with self.server.stats.lock:
                self.server.stats.requests[self.kind] += 1
            fault = self.server.take_fault(self.kind)
            self.user = self._auth()
            if fault is not None and fault not in ("drop", "after", "race"):
                raise HubError(int(fault), f"injected fault {fault}")
            if fault == "drop" and method in ("POST", "PUT"):
                self._drop_mid_body()
                return
            self.fault = fault
            route[1](*route[2:])
        except HubError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a malformed request must not kill the handler thread silently
            self._send_error(HubError(400 if isinstance(e, ValueError | KeyError) else 500, f"{e.__class__.__name__}"))

    def _route(self) -> tuple[Any, ...]:
        p, m = self.parts, self.method
        if p[:2] == ["api", "whoami-v2"]:
            return ("api", self._whoami)
        if p[:2] == ["api", "validate-yaml"] and m == "POST":
            return ("validate-yaml", self._validate_yaml)
        if p[:3] == ["api", "repos", "create"] and m == "POST":
            return ("create-repo", self._create_repo)
        if p == ["api", "models"] and m == "GET":
            return ("list", self._list_models)
        if len(p) >= 4 and p[:2] == ["api", "models"]:
            repo_id, rest = f"{p[2]}/{p[3]}", p[4:]
            if not rest and m == "GET":
                return ("info", self._info, repo_id, "main")
            if len(rest) == 2 and rest[0] == "revision" and m == "GET":
                return ("info", self._info, repo_id, rest[1])
            if rest and rest[0] == "tree" and len(rest) >= 2 and m == "GET":
                return ("tree", self._tree, repo_id, rest[1], "/".join(rest[2:]))
            if len(rest) == 2 and rest[0] == "paths-info" and m == "POST":
                return ("paths-info", self._paths_info, repo_id, rest[1])
            if rest == ["refs"] and m == "GET":
                return ("refs", self._refs, repo_id)
            if len(rest) == 2 and rest[0] == "commits" and m == "GET":
                return ("commits", self._commits, repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "tag" and m == "POST":
                return ("tag", self._tag, repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "preupload" and m == "POST":
                return ("preupload", self._preupload, repo_id, rest[1])
            if len(rest) == 2 and rest[0] == "commit" and m == "POST":
                return ("commit", self._commit, repo_id, rest[1])
        if len(p) >= 5 and p[2] == "resolve" and m in ("GET", "HEAD"):
            return ("resolve", self._resolve, f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        raise HubError(404, f"no route for {self.method} {urlsplit(self.path).path}")

    def _auth(self) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            if self.kind in self.server.WRITE_KINDS:
                raise HubError(401, "Authorization header is required to write to the Hub")
            return None
        scheme, _, tok = header.partition(" ")
        user = self.server.tokens.get(tok.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        with self.server.stats.lock:
            self.server.stats.bytes_received[self.kind] += len(data)
        return data

    def _json_body(self) -> Any:
        raw = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: v for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise HubError(400, "body is not JSON") from None

    def _drop_mid_body(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(max(1, n // 2))
        self._kill_socket()

    def _kill_socket(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        *,
        file_name: str | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.method == "HEAD":
            return
        if self.fault == "drop" and body:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._kill_socket()
            n = len(body) // 2
        else:
            self.wfile.write(body)
            n = len(body)
        with self.server.stats.lock:
            self.server.stats.bytes_by_kind[self.kind] += n
            if file_name is not None:
                self.server.stats.bytes_by_file[file_name] += n

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _send_error(self, e: HubError) -> None:
        self.fault = None
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        # the request body may be unread: do not reuse the connection
        self.close_connection = True
        headers["Connection"] = "close"
        self._send(e.status, json.dumps({"error": e.message}).encode(), headers)

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def store(self) -> HubStore:
        return self.server.store

    def _repo(self, repo_id: str) -> Repo:
        repo = self.store.get_repo(repo_id)
        if repo.private and self.user is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _flag(self, name: str) -> bool:
        v = self.query.get(name, [""])[-1].lower()
        return v in ("1", "true", "yes")

    def _url(self, path: str) -> str:
        return f"{self.server.url}/{path.lstrip('/')}"

    def _tree_entry(self, path: str, e: FileEntry) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
        if e.lfs:
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        return d

    def _model_json(self, repo: Repo, cid: str, *, blobs: bool, full: bool = True, expand: list[str] | None = None):
        c = self.store.commit(cid)
        tags, card = self.store.model_tags(c)
        d: dict[str, Any] = {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.split("/")[0],
            "sha": cid,
            "lastModified": c.date,
            "createdAt": repo.created,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "library_name": card.get("library_name"),
            "cardData": card or None,
        }
        if full:
            sib = []
            for path, e in sorted(c.tree.items()):
                s: dict[str, Any] = {"rfilename": path}
                if blobs:
                    s["size"] = e.size
                    s["blobId"] = e.oid
                    if e.lfs:
                        s["lfs"] = {
                            "size": e.size,
                            "sha256": e.sha256,
                            "pointerSize": len(lfs_pointer(e.sha256, e.size)),
                        }
                sib.append(s)
            d["siblings"] = sib
        if expand:
            d = {k: v for k, v in d.items() if k in ("_id", "id") or k in expand}
        return d

    # -- routes --------------------------------------------------------------------------------------------
    def _whoami(self) -> None:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(
            {"type": "user", "name": self.user, "auth": {"accessToken": {"displayName": "test", "role": "write"}}}
        )

    def _validate_yaml(self) -> None:
        body = self._json_body()
        m = _FRONT_MATTER.match(body.get("content") or "")
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                self._json({"errors": [{"message": f"Invalid YAML: {str(e).splitlines()[0]}"}]}, 400)
                return
            if meta is not None and not isinstance(meta, dict):
                self._json({"errors": [{"message": "metadata must be a YAML mapping"}]}, 400)
                return
        self._json({"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        body = self._json_body()
        name, org = body.get("name"), body.get("organization") or self.user
        if not name:
            raise HubError(400, "name is required")
        repo_id = f"{org}/{name}"
        self.store.create_repo(
            repo_id, private=body.get("visibility") == "private" or bool(body.get("private")), author=self.user or "hub"
        )
        self._json({"url": self._url(repo_id), "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _list_models(self) -> None:
        filters = self.query.get("filter", [])
        author = self.query.get("author", [None])[-1]
        search = self.query.get("search", [None])[-1]
        limit = int(self.query.get("limit", ["0"])[-1] or 0)
        expand = self.query.get("expand", []) or self.query.get("expand[]", [])
        full = self._flag("full")
        card = self._flag("cardData")
        cursor = int(self.query.get("cursor", ["0"])[-1] or 0)
        page = min(limit or self.server.page_size, self.server.page_size)
        with self.store.lock:
            repos = sorted(self.store.repos.values(), key=lambda r: r.id)
        out = []
        for r in repos:
            if r.private and self.user is None:
                continue
            if author and r.id.split("/")[0] != author:
                continue
            if search and search.lower() not in r.id.lower():
                continue
            c = self.store.commit(r.branches["main"])
            tags, _ = self.store.model_tags(c)
            if any(f not in tags for f in filters):
                continue
            out.append((r, c.id))
        chunk = out[cursor : cursor + page]
        items = []
        for r, cid in chunk:
            d = self._model_json(r, cid, blobs=False, full=full, expand=expand or None)
            if not full and not expand:
                d.pop("sha", None)
                d.pop("cardData", None)
            if card and not expand:
                d["cardData"] = self.store.card_data(self.store.commit(cid)) or None
            items.append(d)
        headers = {}
        if cursor + page < len(out):
            q = {k: v for k, v in self.query.items() if k != "cursor"}
            q["cursor"] = [str(cursor + page)]
            headers["Link"] = f'<{self._url("api/models")}?{urlencode(q, doseq=True)}>; rel="next"'
        self._json(items, headers=headers)

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        cid = self.store.resolve(repo, rev)
        self._json(self._model_json(repo, cid, blobs=self._flag("blobs")))

    def _tree(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        c = self.store.commit(self.store.resolve(repo, rev))
        recursive = self._flag("recursive")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in c.tree):
            raise HubError(404, f"{path} not found", "EntryNotFound")
        files, dirs = [], set()
        for p, e in sorted(c.tree.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest:
                parts = rest.split("/")
                for i in range(1, len(parts) if recursive else 2):
                    dirs.add(prefix + "/".join(parts[:i]))
                if not recursive:
                    continue
            files.append(self._tree_entry(p, e))
        entries = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(dirs)
        ]
        self._json(entries + files)

    def _paths_info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        c = self.store.commit(self.store.resolve(repo, rev))
        body = self._json_body()
        paths = body.get("paths") or []
        out = []
        for p in [paths] if isinstance(paths, str) else paths:
            if p in c.tree:
                out.append(self._tree_entry(p, c.tree[p]))
            elif any(q.startswith(p.rstrip("/") + "/") for q in c.tree):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._json(out)

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        with self.store.lock:
            data: dict[str, Any] = {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo.branches.items())
                ],
                "converts": [],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in sorted(repo.tags.items())],
            }
            if self._flag("include_prs"):
                data["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                    for n, c in sorted(repo.prs.items())
                ]
        self._json(data)

    def _commits(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        cid: str | None = self.store.resolve(repo, rev)
        out = []
        while cid is not None:
            c = self.store.commit(cid)
            out.append(
                {"id": c.id, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            )
            cid = c.parent
        self._json(out)

    def _tag(self, repo_id: str, rev: str) -> None:
        self._repo(repo_id)
        body = self._json_body()
        tag = body.get("tag")
        if not tag or not re.fullmatch(r"[\w.\-]+", tag):
            raise HubError(400, f"invalid tag name {tag!r}")
        self.store.create_tag(repo_id, rev, tag)
        self._json({"success": True})

    def _preupload(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        body = self._json_body()
        try:
            c = self.store.commit(self.store.resolve(repo, rev))
        except HubError:
            c = None
        files = []
        for f in body.get("files", []):
            e = c.tree.get(f["path"]) if c else None
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": self.server.upload_mode,
                    "shouldIgnore": False,
                    # as the Hub: the git oid of an existing regular file / sha256 of an LFS file
                    "oid": (e.sha256 if e.lfs else e.oid) if e is not None else None,
                }
            )
        self._json({"files": files, "commitOid": c.id if c else None})

    def _commit(self, repo_id: str, rev: str) -> None:
        self._repo(repo_id)
        raw = self._body()  # the whole body first: nothing is written for an incomplete request
        header: dict[str, Any] = {}
        ops: list[Op] = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "file content must be base64")
                ops.append(Op("add", value["path"], data=base64.b64decode(value["content"])))
            elif key == "lfsFile":
                ops.append(Op("add", value["path"], sha256=value["oid"]))
            elif key == "deletedFile":
                ops.append(Op("delete", value["path"]))
            elif key == "deletedFolder":
                ops.append(Op("delete-folder", value["path"]))
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        if not header.get("summary"):
            raise HubError(400, "commit summary is required")
        create_pr = self._flag("create_pr")
        cid, pr = self.store.apply_commit(
            repo_id,
            rev,
            ops,
            title=header["summary"],
            message=header.get("description") or "",
            author=self.user or "anonymous",
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        if self.fault == "after":
            self._kill_socket()
            return
        if self.fault == "race" and pr is None:  # someone else commits on the branch before the answer arrives
            self.store.apply_commit(
                repo_id, rev, [Op("add", "concurrent.txt", data=b"a concurrent commit\n")], title="race", author="bob"
            )
        self._json(
            {
                "success": True,
                "commitOid": cid,
                "commitUrl": self._url(f"{repo_id}/commit/{cid}"),
                "pullRequestUrl": self._url(f"{repo_id}/discussions/{pr}") if pr else None,
                "hookOutput": "",
            }
        )

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        cid = self.store.resolve(repo, rev)
        c = self.store.commit(cid)
        e = c.tree.get(path)
        if e is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=cid)
        headers = {
            "X-Repo-Commit": cid,
            "ETag": f'"{e.oid}"',
            "Accept-Ranges": "bytes",
        }
        if e.lfs:
            headers["X-Linked-Etag"] = f'"{e.sha256}"'
            headers["X-Linked-Size"] = str(e.size)
        name = path.rsplit("/", 1)[-1]
        blob = self.store.blob_path(e.sha256)
        rng = self.headers.get("Range")
        if rng is None:
            if self.method == "HEAD":  # Content-Length is the file's size (huggingface_hub reads it)
                self._send(200, b"", headers, "application/octet-stream", length=e.size)
                return
            self._send(200, blob.read_bytes(), headers, "application/octet-stream", file_name=name)
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        start = end = None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), e.size - 1) if m.group(2) else e.size - 1
            else:
                n = int(m.group(2))
                start, end = max(0, e.size - n), e.size - 1
        if start is None or end is None or start >= e.size or end < start:
            self._send(416, b"", {**headers, "Content-Range": f"bytes */{e.size}"}, "text/plain")
            return
        with open(blob, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start + 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{e.size}"
        self._send(206, data, headers, "application/octet-stream", file_name=name)


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    WRITE_KINDS = frozenset({"create-repo", "tag", "preupload", "commit"})

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.store = HubStore(root)
        self.stats = Stats()
        self.tokens: dict[str, str] = {}
        self.upload_mode = "regular"
        self.page_size = 1000
        self.access_log: list[str] = []
        self._faults: list[tuple[str, str]] = []
        self._fault_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add_token(self, token: str, user: str) -> None:
        self.tokens[token] = user

    def fail_next(self, kind: str, mode: str = "drop", times: int = 1) -> None:
        """The next ``times`` requests of ``kind`` (commit, preupload, resolve, info, list, tag, ...) fail:
        ``drop`` closes the socket mid-body, ``after`` (commit) commits then drops, ``race`` (commit) commits then
        lets another user commit on top before answering, a number answers that status."""
        with self._fault_lock:
            self._faults.extend([(kind, mode)] * times)

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()

    def take_fault(self, kind: str) -> str | None:
        with self._fault_lock:
            for i, (k, mode) in enumerate(self._faults):
                if k == kind:
                    del self._faults[i]
                    return mode
        return None

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def resolve_url(server: HubServer, repo_id: str, rev: str, path: str) -> str:
    return f"{server.url}/{repo_id}/resolve/{quote(rev, safe='')}/{quote(path)}"


# --------------------------------------------------------------------------------------------------------------
# Generated adapters for scan-hub (tests and benchmarks): real-shaped headers, zero (sparse) data


def write_sparse_safetensors(path: Path, specs: list[tuple[str, str, tuple[int, ...]]]) -> int:
    """A valid safetensors file whose data section is all zeros, written sparse (instant, no disk used for data).
    Returns the file size."""
    bits = {"BF16": 16, "F16": 16, "F32": 32}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, dtype, shape in sorted(specs):
        n = bits[dtype] // 8
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + pos)
    return 8 + len(raw) + pos


#: (layout, config) kinds cycled by :func:`generate_scan_adapters`; the broken kinds come every 20th repository.
SCAN_KINDS = [
    ("wrapper-qv", "regex"),
    ("wrapper-qv", "list"),
    ("wrapper-qv", "list-exclude"),
    ("wrapper-qv", "rank-32"),
    ("textonly-qv", "regex"),
    ("orphans-qv", "regex"),
    ("towers-q", "list"),
    ("noprefix-qv", "regex"),
    ("wrapper-qv", "bnb-base"),
    ("wrapper-qv", "rslora-alpha"),
]
BROKEN_KINDS = ["missing-weights", "html-weights", "not-peft", "pickle-only", "truncated-header"]


def _layout_specs(profile: Any, layout: str, rank: int) -> list[tuple[str, str, tuple[int, ...]]]:
    from loradoc.model.layout import address_of

    layers = sorted({address_of(n).layer for n in profile.modules if address_of(n).tower == "language"} - {None})
    specs: list[tuple[str, str, tuple[int, ...]]] = []
    projs = ("q_proj",) if layout == "towers-q" else ("q_proj", "v_proj")
    last_full = min(profile.kv_shared_layers) - 1 if profile.kv_shared_layers else None
    for i in layers:
        for proj in projs:
            mod = f"model.language_model.layers.{i}.self_attn.{proj}"
            info = profile.modules.get(mod)
            if info is None:
                if layout != "orphans-qv":
                    continue
                info = profile.modules[f"model.language_model.layers.{last_full}.self_attn.{proj}"]
            key_mod = {
                "textonly-qv": f"model.layers.{i}.self_attn.{proj}",
            }.get(layout, mod)
            prefix = "" if layout == "noprefix-qv" else "base_model.model."
            specs.append((f"{prefix}{key_mod}.lora_A.weight", "BF16", (rank, info.in_features)))
            specs.append((f"{prefix}{key_mod}.lora_B.weight", "BF16", (info.out_features, rank)))
    if layout == "towers-q":
        for name, info in profile.modules.items():
            if name.startswith("model.vision_tower.") and name.endswith("self_attn.q_proj.linear"):
                specs.append((f"base_model.model.{name}.lora_A.weight", "BF16", (rank, info.in_features)))
                specs.append((f"base_model.model.{name}.lora_B.weight", "BF16", (info.out_features, rank)))
    return specs


def _scan_config(kind: str, base: str, rank: int, variant: int = 0) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": variant / 10_000,  # every repository's config is different (no two scans are alike)
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": r".*language_model.*\.(q_proj|v_proj)",
        "exclude_modules": None,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "peft_version": "0.18.1",
    }
    if kind in ("list", "list-exclude"):
        cfg["target_modules"] = ["q_proj", "v_proj"]
    if kind == "list-exclude":
        cfg["exclude_modules"] = r".*\.(audio_tower|vision_tower)\..*"
    if kind == "rank-32":
        cfg["r"] = rank // 2
    if kind == "bnb-base":
        cfg["base_model_name_or_path"] = "unsloth/gemma-4-e4b-it-unsloth-bnb-4bit"
    if kind == "rslora-alpha":
        cfg["use_rslora"] = True
        cfg["lora_alpha"] = 16
    return cfg


def _card(base: str, explicit_relation: bool = False) -> str:
    rel = "base_model_relation: adapter\n" if explicit_relation else ""
    return f"---\nbase_model: {base}\nlibrary_name: peft\n{rel}tags:\n- lora\n---\n\n# generated adapter\n"


@dataclass
class GeneratedSet:
    repos: dict[str, str]  # repo id -> kind
    weight_bytes: int  # total size of the adapter_model.safetensors files of all repos
    blobs: int


def generate_scan_adapters(
    store: HubStore, base: str, n: int, workdir: Path, *, rank: int = 64, org: str = "gen", broken_every: int = 20
) -> GeneratedSet:
    """``n`` adapter repositories of ``base`` (a shipped base id: its profile gives real shapes) in ``store``:
    a few distinct weight files (shared blobs) with varied configs and key layouts, plus a broken repository
    every ``broken_every``-th (missing / HTML / truncated weights, a non-PEFT config, a pickle-only adapter)."""
    from loradoc.model.profiles import get_profile

    profile = get_profile(base, allow_build=False)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Blob] = {}

    def weights(layout: str) -> Blob:
        if layout not in files:
            p = workdir / f"{layout}.safetensors"
            write_sparse_safetensors(p, _layout_specs(profile, layout, rank))
            files[layout] = Blob(*store.put_file(p))
        return files[layout]

    repos: dict[str, str] = {}
    total = 0
    for i in range(n):
        if broken_every and i % broken_every == broken_every - 1:
            kind = BROKEN_KINDS[(i // broken_every) % len(BROKEN_KINDS)]
            repo = f"{org}/adapter-{i:04d}-{kind}"
            cfg = json.dumps(_scan_config("regex", base, rank)).encode()
            payload: dict[str, bytes | str | Path | Blob] = {"README.md": _card(base, explicit_relation=True)}
            if kind == "missing-weights":
                payload["adapter_config.json"] = cfg
            elif kind == "html-weights":
                payload["adapter_config.json"] = cfg
                payload["adapter_model.safetensors"] = b"<!DOCTYPE html><html><body>Sign in</body></html>\n"
            elif kind == "not-peft":
                payload["adapter_config.json"] = json.dumps({"fine_tune_type": "lora", "num_layers": 16}).encode()
                payload["adapter_model.safetensors"] = weights("wrapper-qv")
            elif kind == "pickle-only":
                payload["adapter_config.json"] = cfg
                payload["adapter_model.bin"] = b"\x80\x02}q\x00."
            elif kind == "truncated-header":
                payload["adapter_config.json"] = cfg
                payload["adapter_model.safetensors"] = (10_000_000).to_bytes(8, "little") + b'{"a":'
            w = payload.get("adapter_model.safetensors")
            total += w.size if isinstance(w, Blob) else len(w) if isinstance(w, bytes) else 0
        else:
            layout, ckind = SCAN_KINDS[i % len(SCAN_KINDS)]
            kind = f"{layout}+{ckind}"
            repo = f"{org}/adapter-{i:04d}-{layout}-{ckind}"
            blob = weights(layout)
            total += blob.size
            payload = {
                "README.md": _card(base),
                "adapter_config.json": json.dumps(_scan_config(ckind, base, rank, i), indent=2).encode(),
                "adapter_model.safetensors": blob,
            }
        store.seed(repo, payload, message="upload adapter")
        repos[repo] = kind
    return GeneratedSet(repos, total, len(files))


def main(argv: list[str] | None = None) -> int:
    """``python tests/hubserver.py --root DIR [--port N] [--token T] [--generate N --base ID]``: serve until killed.
    Prints ``READY <url> <json>`` once listening (the JSON describes the generated adapters)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", action="append", default=[])
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--base", default="google/gemma-4-E4B-it")
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args(argv)
    server = HubServer(args.root / "store", port=args.port)
    for t in args.token:
        server.add_token(t, "user")
    info: dict[str, Any] = {}
    if args.generate:
        gen = generate_scan_adapters(server.store, args.base, args.generate, args.root / "gen", rank=args.rank)
        info = {"repos": len(gen.repos), "weight_bytes": gen.weight_bytes, "blobs": gen.blobs, "kinds": gen.repos}
    print(f"READY {server.url} {json.dumps(info)}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
