"""Writing the registry: every ``record_*`` (and ``update`` / ``put``) takes an exclusive lock file in the user
directory (``filelock``: POSIX and Windows), then ``BEGIN IMMEDIATE`` on the index (WAL, busy_timeout), re-reads the
manifest from disk, applies the change, writes the TOML atomically (temp file + fsync + rename) and updates the index
in the same transaction. Two processes recording at once serialise on those locks: nothing is lost."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, EnvironmentProblem, LoradocError
from loradoc.io.atomic import write_file_atomic
from loradoc.registry import record as R
from loradoc.registry.index import path_inside, same_file
from loradoc.registry.issues import SchemaError
from loradoc.registry.model import UNKNOWN, AdapterManifest, Artifact, BaseRef, HubPush, Manifest, now_iso
from loradoc.registry.paths import ENV_MANIFESTS, manifest_filename
from loradoc.registry.queries import Queries
from loradoc.registry.reader import check_manifest, raise_problems
from loradoc.registry.sync import RACY_NS
from loradoc.registry.toml_io import rewrite_manifest
from loradoc.registry.validate import parse_manifest

LOCK_NAME = ".loradoc-registry.lock"


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """An inter-process lock file (``filelock``: flock on POSIX, msvcrt on Windows)."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=timeout)
        lock.acquire(poll_interval=0.005)
    except Timeout:
        raise EnvironmentProblem(
            f"{path} stayed locked for {timeout:.0f} s",
            hint="another loradoc process is recording; retry when it has finished (`loradoc registry sync` reads)",
        ) from None
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot create the lock file {path}: {e.strerror or e}",
            hint=f"make {path.parent} writable, or set {ENV_MANIFESTS} to a writable directory",
        ) from None
    try:
        yield
    finally:
        lock.release()


def _text_of(f: Path | None) -> str | None:
    if f is None:
        return None
    try:
        return f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class Writes(Queries):
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
        with exclusive_lock(self.user_dir / LOCK_NAME, self.busy_timeout), self._tx() as c:
            key = ref.lower()
            row = c.execute("SELECT file FROM adapters WHERE key = ? AND shadowed = 0", (key,)).fetchone()
            current: AdapterManifest | None = None
            src_file: Path | None = Path(row[0]) if row else None
            if src_file is not None and path_inside(src_file, user_root):
                target = src_file
            else:
                target = user_root / "adapters" / f"{manifest_filename(ref)}.toml"
                if target.exists():  # a user file the index has not seen yet wins over a shipped one
                    src_file = target
            if src_file is not None and src_file.exists():
                m = self._read_for_update(c, src_file)
                if not isinstance(m, AdapterManifest):
                    raise BadInputError(
                        f"{ref} is a base, not an adapter",
                        hint="record results on an adapter id (`loradoc registry list` names them)",
                    )
                current = m
            if current is None:
                if create is None:
                    raise BadInputError(
                        f"{ref!r} is not in the registry",
                        hint="record it first (`loradoc registry add ADAPTER`) "
                        "or check the id (`loradoc registry list`)",
                    )
                current = self._made(target, create)
            self._made(target, lambda: change(current))
            text = rewrite_manifest(_text_of(src_file), current)  # keeps the comments of the file it replaces
            again, problems = check_manifest(target, text.encode())
            if again is None or again.to_dict() != current.to_dict():
                detail = str(problems[0]) if problems else "the TOML round trip changed the data"
                raise LoradocError(
                    f"refusing to write {target}: {detail}",
                    hint="a loradoc bug: please report it with the manifest (`loradoc registry show ID --json`)",
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
            raise_problems(problems)
        assert m is not None
        return m

    @staticmethod
    def _made(target: Path, make: Callable[[], Any]) -> Any:
        """``make()``, with a value the schema refuses (a record built from bad data) reported as loradoc's error."""
        try:
            return make()
        except SchemaError as e:
            raise LoradocError(
                f"refusing to write {target}: {e.issues[0] if e.issues else e}",
                hint="check the values recorded; `loradoc registry show ID` shows the manifest as it is",
            ) from None

    def _user_root(self) -> tuple[int, Path]:
        for prec, root in self._roots():
            if same_file(root, self.user_dir):
                return prec, root
        raise AssertionError("the user directory is always a manifest directory")  # pragma: no cover

    def put(self, manifest: AdapterManifest) -> Path:
        """Write a whole adapter manifest (new, or replacing the current one of that id) to the user directory."""

        def change(m: AdapterManifest) -> None:
            fresh = copy.deepcopy(manifest)
            for name in type(fresh).model_fields:
                setattr(m, name, getattr(fresh, name))

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
        from loradoc.registry.model import ARTIFACT_KINDS

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
