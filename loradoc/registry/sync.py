"""``sync``: bring the index up to date with the manifest directories, incrementally.

A file whose mtime and size are unchanged is not opened; one whose bytes hash to the indexed sha256 is not parsed
again; only a new or changed file is parsed (``tomli``, compiled) and validated (pydantic), once. A file modified
within :data:`RACY_NS` of its indexing is re-hashed at the next sync (coarse file-system timestamps cannot hide an
edit). A bad manifest never aborts a sync: its problems
(file, line, message) are in the report.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from loradoc.registry.index import Index, stored_problems
from loradoc.registry.model import now_iso
from loradoc.registry.reader import (
    ManifestProblem,
    manifest_files,
    parse_all,
    too_large,
    validate_document,
)
from loradoc.registry.rows import SyncReport

RACY_NS = 2_000_000_000


class Syncing(Index):
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
            pending: list[tuple[Any, ...]] = []
            for prec, root in self._roots():
                root_s = str(root)
                for f, st in manifest_files(root):
                    key = str(f)
                    if key in seen:
                        continue
                    seen.add(key)
                    row = known.get(key)
                    same_place = row is not None and row[1] == root_s and row[2] == prec
                    if same_place and row[3] == st.st_mtime_ns and row[4] == st.st_size:
                        rep.unchanged.append(key)
                        continue
                    big = too_large(f, st.st_size)
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
                    pending.append((key, f, root_s, prec, mtime, st.st_size, sha, row, data))
            # parse + validate every new or changed file, then index
            parsed = parse_all([(p[1], p[8]) for p in pending])
            for (key, f, root_s, prec, mtime, size, sha, row, data), (doc, problems) in zip(
                pending, parsed, strict=True
            ):
                manifest = None
                if doc is not None:
                    manifest, problems = validate_document(f, data, doc)
                    doc = doc if manifest is not None else None
                if row is not None and row[8]:
                    affected.add(row[8])
                new_key = self._index_file(
                    c, key, root_s, prec, mtime, size, sha, manifest, problems, fresh=row is None, doc=doc
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
                rep.problems += stored_problems(path, probs, dup)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('synced', ?)", (now_iso(),))
        rep.seconds = time.perf_counter() - t0
        self.last_sync = rep
        return rep
