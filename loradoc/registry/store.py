"""The registry: TOML manifests (the source of truth) indexed in an embedded SQLite database.

- Manifest directories, lowest precedence first: the shipped ``manifests/`` then the user's directory
  (``user_dir=``, or ``$LORADOC_MANIFESTS``, or ``manifests/`` beside the index: by default
  ``platformdirs.user_data_dir("loradoc")/manifests``). In each:
  ``adapters/<org>--<name>.toml`` and ``bases/<org>--<name>/manifest.toml``. When two files define the same id, the
  one in the later directory wins (a user's copy overrides a shipped manifest).
- The index: ``registry.sqlite`` in ``platformdirs.user_data_dir("loradoc")``, or ``$LORADOC_REGISTRY``, or
  ``path=``. ``sync`` is incremental: a file whose mtime and size are unchanged is not opened; one whose bytes hash
  to the indexed sha256 is not parsed again. A file modified within :data:`RACY_NS` of its indexing is re-hashed
  at the next sync (coarse file-system timestamps cannot hide an edit).
- Writes: every ``record_*`` takes an exclusive lock file in the user directory, then ``BEGIN IMMEDIATE`` on the
  index (WAL, busy_timeout), re-reads the manifest from disk, applies the change, writes the TOML atomically
  (temp file + fsync + rename) and updates the index in the same transaction. Two processes recording at once
  serialise on those locks: nothing is lost.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sqlite3
import stat
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, EnvironmentProblem, LoradocError, MalformedConfigError
from loradoc.io.atomic import write_file_atomic
from loradoc.model.profiles import installed_version, manifests_dir
from loradoc.registry import fasttoml
from loradoc.registry import record as R
from loradoc.registry.compat import CompatAnswer, evaluate
from loradoc.registry.schema import (
    STATUSES,
    UNKNOWN,
    AdapterManifest,
    Artifact,
    BaseManifest,
    BaseRef,
    HubPush,
    Manifest,
    Relation,
    SchemaError,
    format_path,
    key_lines,
    line_of,
    manifest_to_toml,
    now_iso,
    parse_manifest,
)

ENV_REGISTRY = "LORADOC_REGISTRY"
ENV_MANIFESTS = "LORADOC_MANIFESTS"
INDEX_FORMAT = 3
RACY_NS = 2_000_000_000
LOCK_NAME = ".loradoc-registry.lock"


def default_registry_path() -> Path:
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("loradoc")) / "registry.sqlite"


def default_user_dir() -> Path:
    env = os.environ.get(ENV_MANIFESTS)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("loradoc")) / "manifests"


def manifest_filename(manifest_id: str) -> str:
    """``org/name`` -> ``org--name``; a local path -> ``local--<dirname>--<hash>``."""
    if "/" in manifest_id and not manifest_id.startswith(("/", "~", ".")) and manifest_id.count("/") == 1:
        return manifest_id.replace("/", "--")
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(manifest_id).name)[:40] or "adapter"
    return f"local--{name}--{hashlib.sha1(manifest_id.encode()).hexdigest()[:10]}"  # noqa: S324 - a name


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ManifestProblem:
    path: str
    line: int | None
    message: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line if self.line is not None else '?'}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "key": self.key, "message": self.message}


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # files opened (stat changed or new)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": len(self.unchanged),
            "read": len(self.read),
            "problems": [p.to_json() for p in self.problems],
            "seconds": round(self.seconds, 4),
        }


@dataclass
class AdapterRow:
    id: str
    base: str
    status: str
    current: str  # label of the current revision
    revision: str  # its commit sha, or "unknown"
    architecture: str
    peft_type: str
    r: int | str
    alpha: int | float | str
    revisions: int
    file: str
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime -> verdict, of the current revision

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BaseRow:
    id: str
    architecture: str
    relation: str | None  # e.g. "bnb-4bit-repack"
    of: str | None  # the original it relates to
    file: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _runtime_codes(spec: str) -> list[str]:
    """``vllm`` -> the record codes of a loading verdict; ``vllm:refused`` -> that verdict's."""
    from loradoc.registry.schema import RUNTIME_VERDICTS, RUNTIMES

    aliases = {"llama.cpp": "llama_cpp", "llamacpp": "llama_cpp", "mlx-lm": "mlx_lm", "mlx": "mlx_lm"}
    rt, _, verdict = spec.strip().lower().partition(":")
    rt = aliases.get(rt, rt)
    if rt not in RUNTIMES:
        raise BadInputError(f"unknown runtime {spec!r}", hint="choose one of: " + ", ".join(RUNTIMES))
    if verdict and verdict not in RUNTIME_VERDICTS:
        raise BadInputError(
            f"unknown runtime verdict {verdict!r}", hint="choose one of: " + ", ".join(RUNTIME_VERDICTS)
        )
    verdicts = [verdict] if verdict else ["loads", "loads-with-flags"]
    return [f"{rt}={v}" for v in verdicts]


# ---------------------------------------------------------------------------------------------------------
# reading one manifest
# ---------------------------------------------------------------------------------------------------------


#: No real manifest comes near this (thousands of revisions are well under 1 MB): a bigger file is refused unread.
MAX_MANIFEST_BYTES = 4 * 2**20


def _too_large(path: Path, size: int) -> ManifestProblem | None:
    if size <= MAX_MANIFEST_BYTES:
        return None
    return ManifestProblem(
        str(path), None, f"{size / 2**20:.1f} MiB is over the {MAX_MANIFEST_BYTES // 2**20} MiB limit for a manifest"
    )


def check_manifest(path: Path, data: bytes) -> tuple[Manifest | None, list[ManifestProblem]]:
    """Parse + validate one manifest's bytes: the manifest, or the problems (file, line, message)."""
    m, problems, _ = _check(path, data)
    return m, problems


def _check(path: Path, data: bytes) -> tuple[Manifest | None, list[ManifestProblem], dict[str, Any] | None]:
    """check_manifest, plus the parsed TOML document (what the index stores: it validates to the same manifest)."""
    p = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, [ManifestProblem(p, line, f"not UTF-8 text (byte {e.start})")], None
    try:
        doc = fasttoml.loads(text)
    except RecursionError:
        return None, [ManifestProblem(p, None, "invalid manifest: nested too deeply to read")], None
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)
        msg = str(e)
        if line is None:
            import re

            hit = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            line = int(hit.group(1)) if hit else None
        return None, [ManifestProblem(p, line, f"invalid TOML: {msg}")], None
    try:
        return parse_manifest(doc), [], doc
    except RecursionError:
        return None, [ManifestProblem(p, None, "invalid manifest: nested too deeply to check")], None
    except SchemaError as e:
        lines = key_lines(text)
        out = [
            ManifestProblem(p, line_of(lines, i.path), f"{format_path(i.path)}: {i.message}", format_path(i.path))
            for i in e.issues[:20]
        ]
        out.sort(key=lambda x: x.line if x.line is not None else 0)
        return None, out, None


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read one manifest file, raising :class:`MalformedConfigError` naming the file and line."""
    p = Path(path)
    try:
        big = _too_large(p, p.stat().st_size)
        if big is not None:
            raise MalformedConfigError(str(big), hint="a manifest that large is not one loradoc wrote: check the file")
        data = p.read_bytes()
    except OSError as e:
        raise BadInputError(f"cannot read manifest {p}: {e.strerror or e}", hint="check the path") from None
    m, problems = check_manifest(p, data)
    if m is None:
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MalformedConfigError(
            f"{first}{more}", hint="fix that line (the schema is in loradoc/registry/SCHEMA.md) and re-run"
        )
    return m


def _manifest_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """(path, stat) of ``adapters/*.toml`` and ``bases/*/manifest.toml`` under root, sorted; one stat each."""
    try:
        with os.scandir(root / "adapters") as it:
            entries = sorted(
                (e for e in it if e.name.endswith(".toml") and not e.name.startswith(".")), key=lambda e: e.name
            )
        for e in entries:
            with contextlib.suppress(OSError):
                if e.is_file():
                    yield Path(e.path), e.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass
    try:
        with os.scandir(root / "bases") as it:
            dirs = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        for d in dirs:
            f = Path(d.path) / "manifest.toml"
            with contextlib.suppress(OSError):
                st = f.stat()
                if stat.S_ISREG(st.st_mode):
                    yield f, st
    except (FileNotFoundError, NotADirectoryError):
        pass


# ---------------------------------------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------------------------------------

_TABLES = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files(
  path TEXT PRIMARY KEY, root TEXT NOT NULL, precedence INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  size INTEGER NOT NULL, sha256 TEXT NOT NULL, kind TEXT, key TEXT, problems TEXT, duplicate_of TEXT);
CREATE TABLE IF NOT EXISTS adapters(
  file TEXT PRIMARY KEY, key TEXT NOT NULL, id TEXT NOT NULL, precedence INTEGER NOT NULL,
  shadowed INTEGER NOT NULL DEFAULT 0, base TEXT, base_key TEXT, status TEXT, current_label TEXT,
  current_revision TEXT, architecture TEXT, peft_type TEXT, r, alpha, n_revisions INTEGER);
CREATE INDEX IF NOT EXISTS adapters_key ON adapters(key);
CREATE INDEX IF NOT EXISTS adapters_base ON adapters(base_key, shadowed, key);
CREATE INDEX IF NOT EXISTS adapters_status ON adapters(status, shadowed, key);
CREATE INDEX IF NOT EXISTS adapters_list ON adapters(shadowed, key);
CREATE TABLE IF NOT EXISTS docs(file TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revisions(
  file TEXT NOT NULL, key TEXT NOT NULL, label TEXT NOT NULL, revision TEXT, status TEXT, fingerprint TEXT,
  path TEXT, is_current INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS revisions_file ON revisions(file);
CREATE INDEX IF NOT EXISTS revisions_path ON revisions(path);
CREATE INDEX IF NOT EXISTS revisions_commit ON revisions(revision);
CREATE TABLE IF NOT EXISTS records(
  file TEXT NOT NULL, key TEXT NOT NULL, label TEXT, kind TEXT NOT NULL, n INTEGER NOT NULL, code TEXT);
CREATE INDEX IF NOT EXISTS records_file ON records(file);
CREATE INDEX IF NOT EXISTS records_key ON records(key, kind);
CREATE TABLE IF NOT EXISTS bases(
  file TEXT PRIMARY KEY, key TEXT NOT NULL, id TEXT NOT NULL, precedence INTEGER NOT NULL,
  shadowed INTEGER NOT NULL DEFAULT 0, architecture TEXT);
CREATE INDEX IF NOT EXISTS bases_key ON bases(key);
CREATE TABLE IF NOT EXISTS relations(file TEXT NOT NULL, key TEXT NOT NULL, kind TEXT, of TEXT, of_key TEXT);
CREATE INDEX IF NOT EXISTS relations_file ON relations(file);
CREATE INDEX IF NOT EXISTS relations_of ON relations(of_key);
CREATE INDEX IF NOT EXISTS relations_key ON relations(key);
"""
_DATA_TABLES = ("files", "adapters", "revisions", "records", "bases", "relations", "docs")


@contextlib.contextmanager
def _exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """An inter-process lock file (POSIX flock; elsewhere the SQLite write lock alone serialises writers)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot create the lock file {path}: {e.strerror or e}",
            hint=f"make {path.parent} writable, or set {ENV_MANIFESTS} to a writable directory",
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"{path} stayed locked for {timeout:.0f} s",
                        hint="another loradoc process is recording; retry when it has finished",
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Registry:
    """Manifests + their SQLite index. Every public method returns plain dataclasses with ``to_json()``."""

    def __init__(
        self,
        path: Path | str | None = None,
        manifest_dirs: list[Path] | None = None,
        *,
        user_dir: Path | str | None = None,
        auto_sync: bool = True,
        busy_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_registry_path()
        if user_dir is not None:
            self.user_dir = Path(user_dir).expanduser()
        elif os.environ.get(ENV_MANIFESTS):
            self.user_dir = default_user_dir()
        else:  # beside the index: user_data_dir/manifests by default; a --registry elsewhere is self-contained
            self.user_dir = self.path.parent / "manifests"
        dirs = [Path(d).expanduser() for d in manifest_dirs] if manifest_dirs is not None else [manifests_dir()]
        if not any(_same(d, self.user_dir) for d in dirs):
            dirs.append(self.user_dir)
        self.manifest_dirs = dirs
        self.auto_sync = auto_sync
        self.busy_timeout = busy_timeout
        self.last_sync: SyncReport | None = None
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._versions: dict[str, str | None] = {}

    # -- connection ----------------------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise BadInputError(
                f"the registry index {self.path} is a directory",
                hint="pass --registry PATH (or set LORADOC_REGISTRY) to a file such as DIR/registry.sqlite",
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise EnvironmentProblem(
                f"cannot open the registry index {self.path}: {e}",
                hint=f"pass --registry PATH (or set {ENV_REGISTRY}) to a writable location",
            ) from None
        try:
            self._setup(conn)
        except sqlite3.OperationalError as e:
            conn.close()
            raise EnvironmentProblem(
                f"cannot use the registry index {self.path}: {e}", hint="retry when no other loradoc is writing"
            ) from None
        except sqlite3.DatabaseError as e:
            conn.close()
            raise BadInputError(
                f"{self.path} is not a loradoc registry index (SQLite): {e}",
                hint="pass another --registry path, or delete that file (the index is rebuilt from the manifests)",
            ) from None
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        for _ in range(50):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:  # another process is converting it right now
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx(conn):
            have_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() if have_meta else None
            if row is None or row[0] != str(INDEX_FORMAT):  # an index from another loradoc: rebuild it
                for t in ("meta", *_DATA_TABLES):
                    conn.execute(f"DROP TABLE IF EXISTS {t}")  # noqa: S608 - fixed table names
            for stmt in _TABLES.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(INDEX_FORMAT),))

    @contextlib.contextmanager
    def _tx(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        c = conn or self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise EnvironmentProblem(
                f"the registry index {self.path} stayed locked for {self.busy_timeout:.0f} s ({e})",
                hint="another loradoc process is writing to it; retry when it has finished",
            ) from None
        try:
            yield c
            c.execute("COMMIT")
        except sqlite3.OperationalError as e:  # locked past busy_timeout, disk full, I/O error...
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise EnvironmentProblem(
                f"the registry index {self.path} could not be updated: {e}",
                hint="retry; if it persists, delete the index file (it is rebuilt from the manifests)",
            ) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sync ----------------------------------------------------------------------------------------------
    def _roots(self) -> list[tuple[int, Path]]:
        return [(i, d.resolve() if d.exists() else d.absolute()) for i, d in enumerate(self.manifest_dirs)]

    def sync(self) -> SyncReport:
        """Bring the index up to date with the manifest directories. Never aborts on a bad manifest: its
        problems (file, line, message) are in the report and every other manifest is indexed."""
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        rep = SyncReport()
        with self._tx() as c:
            known = {
                r[0]: r
                for r in c.execute(
                    "SELECT path, root, precedence, mtime_ns, size, sha256, problems, duplicate_of, key FROM files"
                )
            }
            seen: set[str] = set()
            affected: set[str] = set()
            for prec, root in self._roots():
                root_s = str(root)
                for f, st in _manifest_files(root):
                    key = str(f)
                    if key in seen:
                        continue
                    seen.add(key)
                    row = known.get(key)
                    same_place = row is not None and row[1] == root_s and row[2] == prec
                    if same_place and row[3] == st.st_mtime_ns and row[4] == st.st_size:
                        rep.unchanged.append(key)
                        continue
                    big = _too_large(f, st.st_size)
                    if big is not None:
                        rep.problems.append(big)
                        continue
                    try:
                        data = f.read_bytes()
                    except OSError as e:
                        rep.problems.append(ManifestProblem(key, None, f"cannot read: {e.strerror or e}"))
                        continue
                    rep.read.append(key)
                    sha = hashlib.sha256(data).hexdigest()
                    mtime = st.st_mtime_ns if st.st_mtime_ns < start_ns - RACY_NS else -1
                    if same_place and row[5] == sha:
                        c.execute("UPDATE files SET mtime_ns = ?, size = ? WHERE path = ?", (mtime, st.st_size, key))
                        rep.unchanged.append(key)
                        continue
                    manifest, problems, doc = _check(f, data)
                    if row is not None and row[8]:
                        affected.add(row[8])
                    new_key = self._index_file(
                        c, key, root_s, prec, mtime, st.st_size, sha, manifest, problems, fresh=row is None, doc=doc
                    )
                    if new_key:
                        affected.add(new_key)
                    (rep.updated if row is not None else rep.added).append(key)
            for key, row in known.items():
                if key not in seen:
                    self._drop_file(c, key)
                    if row[8]:
                        affected.add(row[8])
                    rep.removed.append(key)
            self._reshadow(c, affected)
            # every file's current problems (parse / schema / duplicate id), changed or not
            for path, probs, dup in c.execute(
                "SELECT path, problems, duplicate_of FROM files "
                "WHERE problems IS NOT NULL OR duplicate_of IS NOT NULL ORDER BY path"
            ):
                rep.problems += _stored_problems(path, probs, dup)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('synced', ?)", (now_iso(),))
        rep.seconds = time.perf_counter() - t0
        self.last_sync = rep
        return rep

    def _ensure_synced(self) -> None:
        if self.auto_sync and self.last_sync is None:
            self.sync()

    def _drop_file(self, c: sqlite3.Connection, path: str) -> None:
        for t in _DATA_TABLES[1:]:
            c.execute(f"DELETE FROM {t} WHERE file = ?", (path,))  # noqa: S608 - fixed table names
        c.execute("DELETE FROM files WHERE path = ?", (path,))

    def _index_file(
        self,
        c: sqlite3.Connection,
        path: str,
        root: str,
        prec: int,
        mtime: int,
        size: int,
        sha: str,
        m: Manifest | None,
        problems: list[ManifestProblem],
        *,
        fresh: bool = False,
        doc: dict[str, Any] | None = None,
    ) -> str | None:
        if not fresh:  # a file the index has never seen has no rows to delete
            for t in _DATA_TABLES[1:]:
                c.execute(f"DELETE FROM {t} WHERE file = ?", (path,))  # noqa: S608 - fixed table names
        key = m.id.lower() if m is not None else None
        kind = m.kind if m is not None else None
        c.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,NULL)",
            (
                path,
                root,
                prec,
                mtime,
                size,
                sha,
                kind,
                key,
                json.dumps([p.to_json() for p in problems]) if problems else None,
            ),
        )
        doc_json = (
            (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) if doc is not None else _doc_json(m))
            if m is not None
            else ""
        )
        if isinstance(m, AdapterManifest):
            self._index_adapter(c, path, prec, m, doc_json)
        elif isinstance(m, BaseManifest):
            c.execute("INSERT INTO bases VALUES (?,?,?,?,0,?)", (path, m.id.lower(), m.id, prec, m.architecture))
            c.execute("INSERT INTO docs VALUES (?,?)", (path, doc_json))
            c.executemany(
                "INSERT INTO relations VALUES (?,?,?,?,?)",
                [(path, m.id.lower(), r.kind, r.of, r.of.lower()) for r in m.relations],
            )
        return key

    def _index_adapter(self, c: sqlite3.Connection, path: str, prec: int, m: AdapterManifest, doc_json: str) -> None:
        key = m.id.lower()
        cur = m.find_revision(None) or m.revisions[-1]
        base = m.base_of(cur).id
        c.execute(
            "INSERT INTO adapters VALUES (?,?,?,?,0,?,?,?,?,?,?,?,?,?,?)",
            (
                path,
                key,
                m.id,
                prec,
                base,
                base.lower(),
                cur.status,
                cur.label,
                cur.revision,
                m.architecture,
                cur.peft.type,
                cur.peft.r,
                cur.peft.alpha,
                len(m.revisions),
            ),
        )
        c.execute("INSERT INTO docs VALUES (?,?)", (path, doc_json))
        c.executemany(
            "INSERT INTO revisions VALUES (?,?,?,?,?,?,?,?)",
            [(path, key, r.label, r.revision, r.status, r.key_fingerprint, r.path, int(r is cur)) for r in m.revisions],
        )
        rows: list[tuple[Any, ...]] = []
        for r in m.revisions:  # one row per recorded item (its data is in the doc); code: a finding's / verdict
            lab = r.label
            rows += [(path, key, lab, "finding", i, f.code) for i, f in enumerate(r.findings)]
            rows += [(path, key, lab, "compat", i, e.verdict) for i, e in enumerate(r.compat)]
            rows += [
                (path, key, lab, "certificate", i, "passed" if x.passed else "failed")
                for i, x in enumerate(r.certificates)
            ]
            rows += [(path, key, lab, "artifact", i, a.kind) for i, a in enumerate(r.artifacts)]
            rows += [(path, key, lab, "hub", i, h.commit) for i, h in enumerate(r.hub)]
            rows += [(path, key, lab, "runtime", i, f"{x.runtime}={x.verdict}") for i, x in enumerate(r.runtimes)]
        rows += [(path, key, None, "lineage", i, s.output) for i, s in enumerate(m.lineage)]
        c.executemany("INSERT INTO records VALUES (?,?,?,?,?,?)", rows)

    def _reshadow(self, c: sqlite3.Connection, keys: set[str]) -> list[ManifestProblem]:
        """Per id, the file in the latest directory wins; a tie inside one directory: the first path wins and
        the others are reported as duplicates."""
        problems: list[ManifestProblem] = []
        if not keys:
            return problems
        klist = sorted(keys)
        for table in ("adapters", "bases"):
            for i in range(0, len(klist), 500):
                chunk = klist[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = c.execute(
                    f"SELECT t.key, t.file, t.precedence, t.shadowed, f.duplicate_of FROM {table} t "  # noqa: S608
                    f"JOIN files f ON f.path = t.file WHERE t.key IN ({marks})",
                    chunk,
                ).fetchall()
                by_key: dict[str, list[tuple[str, int, int, str | None]]] = {}
                for k, f, p, sh, dup in rows:
                    by_key.setdefault(k, []).append((f, p, sh, dup))
                shadow_updates: list[tuple[int, str]] = []
                dup_updates: list[tuple[str | None, str]] = []
                for files in by_key.values():
                    files.sort(key=lambda x: (-x[1], x[0]))
                    win_f, win_p = files[0][0], files[0][1]
                    for n, (f, p, sh, dup) in enumerate(files):
                        want_sh = 0 if n == 0 else 1
                        want_dup = win_f if n and p == win_p else None
                        if want_sh != sh:
                            shadow_updates.append((want_sh, f))
                        if want_dup != dup:
                            dup_updates.append((want_dup, f))
                        if want_dup:
                            problems.append(ManifestProblem(f, 1, _dup_message(win_f)))
                if shadow_updates:
                    c.executemany(f"UPDATE {table} SET shadowed = ? WHERE file = ?", shadow_updates)  # noqa: S608
                if dup_updates:
                    c.executemany("UPDATE files SET duplicate_of = ? WHERE path = ?", dup_updates)
        return problems

    # -- lookups -------------------------------------------------------------------------------------------
    def _row(self, table: str, key: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            f"SELECT t.file, d.doc FROM {table} t JOIN docs d ON d.file = t.file WHERE t.key = ? AND t.shadowed = 0",
            (key,),  # noqa: S608
        ).fetchone()
        return (row[0], row[1]) if row else None

    def locate(self, ref: str) -> tuple[Manifest, str | None, str]:
        """(manifest, revision ref or None, manifest file) for an id (``org/name``, ``org/name@rev``, case-
        insensitive) or a local path (an adapter directory, or a recorded revision's path)."""
        self._ensure_synced()
        ref = str(ref).strip()
        cands: list[tuple[str, str | None]] = [(ref, None)]
        if "@" in ref:
            head, tail = ref.rsplit("@", 1)
            if head and tail:
                cands.append((head, tail))
        for ident, rev in cands:
            for table in ("adapters", "bases"):
                hit = self._row(table, ident.lower())
                if hit:
                    if table == "bases" and rev:
                        continue
                    return parse_manifest(json.loads(hit[1])), rev, hit[0]
        for ident, rev in cands:
            p = Path(ident).expanduser()
            if not (p.exists() or p.is_absolute()):
                continue
            resolved = str(p.resolve())
            hit = self._row("adapters", resolved.lower())
            if hit:
                return parse_manifest(json.loads(hit[1])), rev, hit[0]
            row = self.conn.execute(
                "SELECT a.file, d.doc, r.label FROM revisions r JOIN adapters a ON a.file = r.file "
                "JOIN docs d ON d.file = a.file "
                "WHERE r.path = ? AND a.shadowed = 0 LIMIT 1",
                (resolved,),
            ).fetchone()
            if row:
                return parse_manifest(json.loads(row[1])), rev or row[2], row[0]
        raise BadInputError(
            f"{ref!r} is not in the registry",
            hint="check the id with `loradoc registry list` (repo ids are case-insensitive; add @label for a "
            "revision), or record it from a doctor run first",
        )

    def show(self, ref: str) -> AdapterManifest | BaseManifest:
        """The manifest of an adapter or base id (case-insensitive) or of a local adapter path."""
        return self.locate(ref)[0]

    def list(
        self, base: str | None = None, status: str | None = None, *, related: bool = False, runtime: str | None = None
    ) -> list[AdapterRow]:
        """Adapters (their current revision), optionally for one base id (``related``: also adapters on its
        repacks and mirrors) and/or one status. ``runtime``: only those whose current revision a recorded runtime
        check says that runtime loads (``vllm``: loads or loads-with-flags), or ``RUNTIME:VERDICT`` (e.g.
        ``sglang:refused``)."""
        self._ensure_synced()
        sql = (
            "SELECT id, base, status, current_label, current_revision, architecture, peft_type, r, alpha, "
            "n_revisions, file FROM adapters WHERE shadowed = 0"
        )
        args: list[Any] = []
        if status is not None:
            if status not in STATUSES:
                raise BadInputError(f"unknown status {status!r}", hint="choose one of: " + ", ".join(STATUSES))
            sql += " AND status = ?"
            args.append(status)
        if base is not None:
            keys = {base.lower()}
            if related:
                keys |= {
                    r[0]
                    for r in self.conn.execute(
                        "SELECT r.key FROM relations r JOIN bases b ON b.file = r.file "
                        "WHERE r.of_key = ? AND b.shadowed = 0",
                        (base.lower(),),
                    )
                }
            sql += f" AND base_key IN ({','.join('?' * len(keys))})"
            args += sorted(keys)
        if runtime is not None:
            codes = _runtime_codes(runtime)
            sql += (
                " AND EXISTS (SELECT 1 FROM records x WHERE x.file = adapters.file AND x.kind = 'runtime'"
                f" AND x.label = adapters.current_label AND x.code IN ({','.join('?' * len(codes))}))"
            )
            args += codes
        sql += " ORDER BY key"
        rows = [AdapterRow(*row) for row in self.conn.execute(sql, args)]
        by_file = {r.file: r for r in rows}
        if by_file:
            q = (
                "SELECT x.file, x.code FROM records x JOIN adapters a ON a.file = x.file "
                "WHERE x.kind = 'runtime' AND x.label = a.current_label AND a.shadowed = 0"
            )
            for file, code in self.conn.execute(q):
                if file in by_file:
                    rt, _, verdict = code.partition("=")
                    by_file[file].runtimes[rt] = verdict
        return rows

    def list_bases(self) -> list[BaseRow]:
        self._ensure_synced()
        out = []
        for file, doc in self.conn.execute(
            "SELECT b.file, d.doc FROM bases b JOIN docs d ON d.file = b.file WHERE b.shadowed = 0 ORDER BY b.key"
        ):
            m = parse_manifest(json.loads(doc))
            assert isinstance(m, BaseManifest)
            rel = m.original()
            out.append(BaseRow(m.id, m.architecture, rel.kind if rel else None, rel.of if rel else None, file))
        return out

    def base_relation(self, base_id: str) -> Relation | None:
        """How ``base_id`` relates to an original: from its base manifest, else from manifests/repacks.toml."""
        self._ensure_synced()
        hit = self._row("bases", base_id.lower())
        if hit:
            m = parse_manifest(json.loads(hit[1]))
            assert isinstance(m, BaseManifest)
            rel = m.original()
            if rel is not None:
                return rel
        from loradoc.model.repacks import lookup_repack

        rp = lookup_repack(base_id)
        if rp is None:
            return None
        return Relation(
            kind=rp.relation if rp.relation in ("bnb-4bit-repack", "mirror") else "other",
            of=rp.original,
            quantization=rp.quantization,
            verified=rp.verified,
            evidence="manifests/repacks.toml",
            source="manifests/repacks.toml",
        )

    def compat(
        self,
        ref: str,
        peft: str | None = None,
        transformers: str | None = None,
        *,
        revision: str | None = None,
    ) -> CompatAnswer:
        """Does the adapter (its current revision, or ``ref@rev`` / ``revision=``) load cleanly with these
        versions? Defaults: the installed peft and transformers."""
        m, rev_ref, _ = self.locate(ref)
        if not isinstance(m, AdapterManifest):
            raise BadInputError(
                f"{m.id} is a base, not an adapter", hint="ask compat about an adapter id (loradoc registry list)"
            )
        rev = m.revision(revision or rev_ref)
        peft = peft if peft is not None else self._installed("peft")
        transformers = transformers if transformers is not None else self._installed("transformers")
        relation = self.base_relation(m.base_of(rev).id)
        return evaluate(m, rev, peft=peft, transformers=transformers, relation=relation)

    def _installed(self, dist: str) -> str | None:
        if dist not in self._versions:
            self._versions[dist] = installed_version(dist)
        return self._versions[dist]

    # -- writing -------------------------------------------------------------------------------------------
    def update(
        self,
        ref: str,
        change: Callable[[AdapterManifest], Any],
        *,
        create: Callable[[], AdapterManifest] | None = None,
    ) -> Path:
        """Apply ``change`` to the adapter manifest ``ref`` (or to ``create()`` when there is none) and write it
        to the user directory atomically, updating the index in the same transaction. Writers serialise on a
        lock file and on the index's write lock, and re-read the manifest from disk under them."""
        self._ensure_synced()
        prec, user_root = self._user_root()
        with _exclusive_lock(self.user_dir / LOCK_NAME, self.busy_timeout), self._tx() as c:
            key = ref.lower()
            row = c.execute("SELECT file FROM adapters WHERE key = ? AND shadowed = 0", (key,)).fetchone()
            current: AdapterManifest | None = None
            src_file: Path | None = Path(row[0]) if row else None
            if src_file is not None and _inside(src_file, user_root):
                target = src_file
            else:
                target = user_root / "adapters" / f"{manifest_filename(ref)}.toml"
                if target.exists():  # a user file the index has not seen yet wins over a shipped one
                    src_file = target
            if src_file is not None and src_file.exists():
                m = self._read_for_update(c, src_file)
                if not isinstance(m, AdapterManifest):
                    raise BadInputError(f"{ref} is a base, not an adapter", hint="record results on an adapter id")
                current = m
            if current is None:
                if create is None:
                    raise BadInputError(
                        f"{ref!r} is not in the registry",
                        hint="record it from a doctor run first (add_from_diagnosis), or check the id",
                    )
                current = create()
            change(current)
            text = manifest_to_toml(current)
            again, problems = check_manifest(target, text.encode())
            if again is None or again.to_dict() != current.to_dict():
                detail = str(problems[0]) if problems else "the TOML round trip changed the data"
                raise LoradocError(
                    f"refusing to write {target}: {detail}",
                    hint="this is a loradoc bug; please report it with the manifest",
                )
            write_file_atomic(target, text.encode())
            st = target.stat()
            mtime = st.st_mtime_ns if st.st_mtime_ns < time.time_ns() - RACY_NS else -1
            old = c.execute("SELECT key FROM files WHERE path = ?", (str(target),)).fetchone()
            self._index_file(
                c,
                str(target),
                str(user_root),
                prec,
                mtime,
                st.st_size,
                hashlib.sha256(text.encode()).hexdigest(),
                current,
                [],
            )
            self._reshadow(c, {current.id.lower(), key} | ({old[0]} if old and old[0] else set()))
        return target

    def _read_for_update(self, c: sqlite3.Connection, f: Path) -> Manifest:
        """The manifest in ``f`` as it is on disk now: the indexed JSON when the file's bytes hash to the indexed
        sha256 (skips a TOML parse), else the file itself."""
        try:
            data = f.read_bytes()
        except OSError as e:
            raise BadInputError(f"cannot read manifest {f}: {e.strerror or e}", hint="check the file") from None
        row = c.execute(
            "SELECT f.sha256, d.doc FROM files f JOIN docs d ON d.file = f.path WHERE f.path = ?", (str(f),)
        ).fetchone()
        if row is not None and row[0] == hashlib.sha256(data).hexdigest():
            return parse_manifest(json.loads(row[1]))
        m, problems = check_manifest(f, data)
        if m is None:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise MalformedConfigError(
                f"{problems[0]}{more}", hint="fix that line (the schema is in loradoc/registry/SCHEMA.md) and re-run"
            )
        return m

    def _user_root(self) -> tuple[int, Path]:
        for prec, root in self._roots():
            if _same(root, self.user_dir):
                return prec, root
        raise AssertionError("the user directory is always a manifest directory")  # pragma: no cover

    def put(self, manifest: AdapterManifest) -> Path:
        """Write a whole adapter manifest (new, or replacing the current one of that id) to the user directory."""

        def change(m: AdapterManifest) -> None:
            m.__dict__.update(copy.deepcopy(manifest).__dict__)

        return self.update(manifest.id, change, create=lambda: copy.deepcopy(manifest))

    def add_from_diagnosis(
        self,
        diag: Any,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
        label: str | None = None,
        make_current: bool = True,
    ) -> Path:
        """Write (or update) the manifest of the diagnosed adapter in the user directory and index it.

        ``diag``: a :class:`loradoc.diagnose.doctor.Diagnosis` (key fingerprint and per-tower targets come from its
        snapshot's header) or its ``to_json()`` dict. The adapter id is ``repo_id``, else the snapshot's repo id,
        else the adapter directory's absolute path. ``revision``: the commit sha, else the snapshot's."""
        shapes: dict[str, Any] | None = None
        requires: str | None = None
        if isinstance(diag, Mapping):
            d = dict(diag)
        else:
            d = diag.to_json()
            snap = diag.snapshot
            shapes = {n: t.shape for n, t in snap.tensors.items()}
            from loradoc.io.adapter_config import required_peft_specifier

            requires = required_peft_specifier(snap.config)
            d["adapter"] = {
                **d["adapter"],
                "lora_dropout": snap.config.lora_dropout,
                "peft_version": snap.config.peft_version_recorded,
                "base_model_is_local_path": snap.config.base_model_is_local_path,
            }
        a = d.get("adapter", {}) or {}
        ident = repo_id or a.get("repo_id") or R.local_id(Path(a.get("path") or "."))
        hub_id = repo_id or a.get("repo_id")
        commit = revision or a.get("commit")
        declared = a.get("base_model")
        diag_base = (d.get("base") or {}).get("name")
        from loradoc.io.adapter_config import is_local_path

        local_decl = a.get("base_model_is_local_path", bool(declared) and is_local_path(str(declared)))
        base_id = declared if declared and not local_decl else (diag_base or UNKNOWN)
        path = R.local_id(Path(a["path"])) if a.get("path") else None

        def create() -> AdapterManifest:
            return AdapterManifest(id=ident, repo_id=hub_id, base=BaseRef(base_id), revisions=[], current="")

        def change(m: AdapterManifest) -> None:
            rev = R.ensure_revision(m, ref=revision, commit=commit, path=path, label=label, make_current=make_current)
            if path and rev.path is None:
                rev.path = path
            if base_id != UNKNOWN and base_id.lower() != m.base.id.lower():
                if m.base.id == UNKNOWN:
                    m.base = BaseRef(base_id)
                else:
                    rev.base = BaseRef(base_id)
            R.apply_diagnosis(m, rev, d, shapes=shapes, requires=requires)

        return self.update(ident, change, create=create)

    def record_repair(
        self,
        report: Mapping[str, Any],
        out_path: str | os.PathLike[str],
        *,
        adapter_id: str | None = None,
        label: str | None = None,
        revision: str | None = None,
        make_current: bool = True,
    ) -> Path:
        """Record a repair (the ``loradoc-repair.json`` dict): source revision -> passes -> a new output revision
        at ``out_path`` (``revision``: its commit, when it was pushed)."""
        src = report.get("source", {}) or {}
        ident = adapter_id or src.get("repo_id") or (R.local_id(Path(src["path"])) if src.get("path") else None)
        if not ident:
            raise BadInputError("the repair report names no source adapter", hint="pass adapter_id=")
        out = R.local_id(Path(out_path))
        base_id = (report.get("base") or {}).get("name") or UNKNOWN

        def create() -> AdapterManifest:
            return AdapterManifest(
                id=ident, repo_id=src.get("repo_id"), base=BaseRef(base_id), revisions=[], current=""
            )

        def change(m: AdapterManifest) -> None:
            if m.architecture == UNKNOWN and (report.get("base") or {}).get("architecture"):
                m.architecture = report["base"]["architecture"]
            rp = Path(out) / "loradoc-repair.json"
            R.apply_repair(
                m,
                report,
                out,
                label=label,
                commit=revision,
                make_current=make_current,
                report_path=str(rp) if rp.is_file() else None,
            )

        return self.update(ident, change, create=create)

    def _ident_for(self, adapter_id: str | None, repo_id: str | None, path: str | None) -> tuple[str, str | None]:
        if adapter_id:
            m, rev, _ = self.locate(adapter_id)
            return m.id, rev
        if repo_id:
            m, rev, _ = self.locate(repo_id)
            return m.id, rev
        if path:
            m, rev, _ = self.locate(path)
            return m.id, rev
        raise BadInputError("no adapter named", hint="pass adapter_id=")

    def record_certificate(
        self,
        cert: Mapping[str, Any],
        *,
        adapter_id: str | None = None,
        revision: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Record a check-load certificate dict on the adapter revision it names (or ``adapter_id`` /
        ``revision``). ``path``: the certificate file (its sha256 is recorded)."""
        a = cert.get("adapter", {}) or {}
        apath = R.local_id(Path(a["path"])) if a.get("path") else None
        ident, rev_ref = self._ident_for(adapter_id, a.get("repo_id"), apath)
        sha = None
        if path is not None and Path(path).is_file():
            sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        rec = R.certificate_record(cert, path=str(path) if path is not None else None, sha256=sha)

        def change(m: AdapterManifest) -> None:
            rev = R.ensure_revision(m, ref=revision or rev_ref, commit=a.get("commit"), path=apath, make_current=False)
            R.apply_certificate(rev, rec)

        return self.update(ident, change)

    def record_artifact(
        self,
        adapter_id: str,
        *,
        kind: str,
        path: str | os.PathLike[str],
        sha256: str | None = None,
        size_bytes: int | None = None,
        format: str | None = None,  # noqa: A002 - the field's name
        tool: str | None = None,
        notes: str | None = None,
        revision: str | None = None,
        hash_file: bool = True,
    ) -> Path:
        """Record a merged / GGUF / GGUF-LoRA output of a revision (sha256 computed from the file when it exists
        and ``hash_file``; else "unknown")."""
        from loradoc.registry.schema import ARTIFACT_KINDS

        if kind not in ARTIFACT_KINDS:
            raise BadInputError(f"unknown artifact kind {kind!r}", hint="use one of: " + ", ".join(ARTIFACT_KINDS))
        p = Path(path)
        if sha256 is None and hash_file and p.is_file():
            from loradoc.io.hashing import sha256_file

            sha256 = sha256_file(p)
            size_bytes = size_bytes if size_bytes is not None else p.stat().st_size
        art = Artifact(
            kind=kind,
            path=str(p.resolve()) if p.exists() else str(path),
            sha256=sha256 or UNKNOWN,
            size_bytes=size_bytes,
            format=format,
            tool=tool,
            created=now_iso(),
            notes=notes,
        )
        ident, rev_ref = self._ident_for(adapter_id, None, None)

        def change(m: AdapterManifest) -> None:
            R.apply_artifact(m.revision(revision or rev_ref), art)

        return self.update(ident, change)

    def record_runtimes(
        self,
        report: Mapping[str, Any],
        *,
        adapter_id: str | None = None,
        base_id: str | None = None,
        revision: str | None = None,
    ) -> Path:
        """Record a runtime check (``loradoc.runtimes.RuntimeReport.to_json()``) on a revision: an adapter the
        registry knows by ``adapter_id`` / its path, else a new local adapter manifest for the checked directory
        (base: ``base_id``, else the checked base, else "unknown")."""
        path = R.local_id(Path(report["adapter"]))
        records = R.runtime_records(report)
        ident, rev_ref = path, None
        for cand in [x for x in (adapter_id, path) if x]:
            try:
                m0, rev_ref, _ = self.locate(cand)
            except LoradocError:
                continue
            ident = m0.id
            break
        base = base_id or report.get("base") or UNKNOWN

        def create() -> AdapterManifest:
            return AdapterManifest(id=ident, base=BaseRef(base), revisions=[], current="")

        def change(m: AdapterManifest) -> None:
            ref = revision or rev_ref
            rev = m.find_revision(ref) if ref else None
            if rev is None:
                rev = next((r for r in m.revisions if r.path == path), None)
            if rev is None:
                rev = R.ensure_revision(m, path=path if not m.revisions or m.id == path else None)
            R.apply_runtimes(rev, records)

        return self.update(ident, change, create=create)

    def record_hub_revision(
        self,
        adapter_id: str,
        *,
        commit: str,
        pr: int | None = None,
        tag: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
    ) -> Path:
        """Record a push to the Hub (commit sha, PR number, tag) for a revision (default: the current one)."""
        ident, rev_ref = self._ident_for(adapter_id, None, None)
        c = commit.lower() if commit else UNKNOWN
        if c != UNKNOWN and not R._COMMIT_RE.match(c):
            raise BadInputError(f"{commit!r} is not a commit sha", hint="pass the 40-hex sha the Hub returned")

        def change(m: AdapterManifest) -> None:
            push = HubPush(repo_id=repo_id or m.repo_id or m.id, commit=c, pr=pr, tag=tag, created=now_iso())
            R.apply_hub_push(m, m.revision(revision or rev_ref), push)

        return self.update(ident, change)

    # -- raw counts (tests, benchmarks, the CLI's summary line) -------------------------------------------
    def count_records(self, ref: str, kind: str) -> int:
        m, _, file = self.locate(ref)
        row = self.conn.execute("SELECT COUNT(*) FROM records WHERE file = ? AND kind = ?", (file, kind)).fetchone()
        return int(row[0])


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover
        return False


def _inside(f: Path, root: Path) -> bool:
    try:
        f.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _doc_json(m: Manifest) -> str:
    return json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _dup_message(winner: str) -> str:
    return f"duplicate id: {winner} defines it too (same directory); this file is ignored"


def _stored_problems(path: str, problems: str | None, duplicate_of: str | None) -> list[ManifestProblem]:
    out = [ManifestProblem(p["path"], p["line"], p["message"], p.get("key")) for p in json.loads(problems or "[]")]
    if duplicate_of:
        out.append(ManifestProblem(path, 1, _dup_message(duplicate_of)))
    return out
