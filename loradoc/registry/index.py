"""The registry's SQLite index (a cache of the manifests: delete it and ``sync`` rebuilds it): its tables, the
connection and its transactions, and the rows of one manifest file (adapters, revisions, records, bases, relations,
the validated document), with the precedence rule between directories (the later directory wins an id)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from loradoc.errors import BadInputError, EnvironmentProblem
from loradoc.model.profiles import manifests_dir
from loradoc.registry.model import AdapterManifest, BaseManifest, Manifest
from loradoc.registry.paths import ENV_MANIFESTS, ENV_REGISTRY, default_registry_path, default_user_dir
from loradoc.registry.reader import ManifestProblem
from loradoc.registry.rows import SyncReport

INDEX_FORMAT = 3
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


class Index:
    """The SQLite index of the manifest directories: connection, transactions, one manifest's rows."""

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
        if not any(same_file(d, self.user_dir) for d in dirs):
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _roots(self) -> list[tuple[int, Path]]:
        return [(i, d.resolve() if d.exists() else d.absolute()) for i, d in enumerate(self.manifest_dirs)]

    def _ensure_synced(self) -> None:
        if self.auto_sync and self.last_sync is None:
            self.sync()

    def sync(self) -> SyncReport:  # sync.py
        raise NotImplementedError

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


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover
        return False


def path_inside(f: Path, root: Path) -> bool:
    try:
        f.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _doc_json(m: Manifest) -> str:
    return json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _dup_message(winner: str) -> str:
    return f"duplicate id: {winner} defines it too (same directory); this file is ignored"


def stored_problems(path: str, problems: str | None, duplicate_of: str | None) -> list[ManifestProblem]:
    out = [ManifestProblem(p["path"], p["line"], p["message"], p.get("key")) for p in json.loads(problems or "[]")]
    if duplicate_of:
        out.append(ManifestProblem(path, 1, _dup_message(duplicate_of)))
    return out
