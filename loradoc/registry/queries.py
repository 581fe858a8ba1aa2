"""Reading the registry: locate / show an adapter or base, list adapters (by base, status, runtime), list bases,
the relation of a base to its original, and the compat answer for a revision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError
from loradoc.model.profiles import installed_version
from loradoc.registry.compat import CompatAnswer, evaluate
from loradoc.registry.model import (
    RUNTIME_VERDICTS,
    RUNTIMES,
    STATUSES,
    AdapterManifest,
    BaseManifest,
    Manifest,
    Relation,
)
from loradoc.registry.rows import AdapterRow, BaseRow
from loradoc.registry.sync import Syncing
from loradoc.registry.validate import parse_manifest


def _runtime_codes(spec: str) -> list[str]:
    """``vllm`` -> the record codes of a loading verdict; ``vllm:refused`` -> that verdict's."""
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


class Queries(Syncing):
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

    def count_records(self, ref: str, kind: str) -> int:
        m, _, file = self.locate(ref)
        row = self.conn.execute("SELECT COUNT(*) FROM records WHERE file = ? AND kind = ?", (file, kind)).fetchone()
        return int(row[0])
