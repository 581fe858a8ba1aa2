"""Where commands may write: the one check every writing command runs before any work.

- :func:`guard_outputs` refuses (BadInputError, exit 2) an output that is, contains or lies inside an input file or
  directory (the adapter, the base, their files, symlinks followed with ``os.path.realpath``, and the whole
  ``models--org--name`` folder of a Hugging Face cache snapshot), and an output that already exists unless
  ``overwrite`` (the writers then replace it atomically: temp beside it + ``os.replace``, never in place).
- The atomic writers name their temps ``.<name>.p<pid>.<random>.tmp`` (files), ``.<name>.tmp-p<pid>-<random>``
  (directories) and ``.<name>.old-p<pid>-<random>`` (an overwritten directory moved aside).
  :func:`remove_stale_temps` deletes those a killed run left beside the same target: only names of exactly these
  patterns, only when the writer's process is gone (or, for the pid-less names of older versions, after an hour)
  and nothing in them changed for a minute. A moved-aside old copy is kept while the target is missing (it is then
  the only complete copy).
- :func:`escapes` tells whether a symlink in an adapter points outside it (such files are not copied into outputs).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from loradoc.errors import BadInputError

#: seconds without any change before a dead writer's temp is removed
STALE_AFTER_S = 60.0
#: temps named by older loradoc versions carry no pid: removed only after this long without a change
LEGACY_STALE_AFTER_S = 3600.0

_RAND = r"[a-z0-9_]{8}"  # tempfile's names: 8 characters of this set
_HF_SNAPSHOT = re.compile(r"^(?P<repo>.*/(?:models|datasets|spaces)--[^/]+--[^/]+)/snapshots/[^/]+$")


# ---------------------------------------------------------------------------------------------------------------
# temp names


def file_temp_prefix(target: Path) -> str:
    return f".{Path(target).name}.p{os.getpid()}."


def dir_temp_prefix(target: Path) -> str:
    return f".{Path(target).name}.tmp-p{os.getpid()}-"


def dir_aside_prefix(target: Path) -> str:
    return f".{Path(target).name}.old-p{os.getpid()}-"


def _temp_patterns(name: str) -> list[tuple[re.Pattern[str], str]]:
    n = re.escape(name)
    return [
        (re.compile(rf"^\.{n}\.p(?P<pid>\d+)\.{_RAND}\.tmp\Z"), "temp"),
        (re.compile(rf"^\.{n}\.tmp-p(?P<pid>\d+)-{_RAND}\Z"), "temp"),
        (re.compile(rf"^\.{n}\.old-p(?P<pid>\d+)-{_RAND}\Z"), "aside"),
        (re.compile(rf"^\.{n}\.{_RAND}\.tmp\Z"), "temp"),  # pid-less names of older versions
        (re.compile(rf"^\.{n}\.tmp-{_RAND}\Z"), "temp"),
        (re.compile(rf"^\.{n}\.old-{_RAND}\Z"), "aside"),
    ]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's) or cannot tell: keep it
    return True


def _newest_mtime(path: Path, st: os.stat_result) -> float:
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    continue
    return newest


def remove_stale_temps(target: str | os.PathLike[str], *, now: float | None = None) -> list[Path]:
    """Delete the temps a killed run of a loradoc writer left beside ``target``; returns what was removed."""
    import shutil

    target = Path(target)
    parent = target.parent
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    patterns = _temp_patterns(target.name)
    removed: list[Path] = []
    for entry in entries:
        hit = next(((m, kind) for pat, kind in patterns if (m := pat.match(entry.name))), None)
        if hit is None:
            continue
        m, kind = hit
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            continue  # never ours
        if st.st_uid != os.getuid():
            continue
        pid = m.groupdict().get("pid")
        age = now - _newest_mtime(Path(entry.path), st)
        if pid is not None:
            if age < STALE_AFTER_S or _pid_alive(int(pid)):
                continue
        elif age < LEGACY_STALE_AFTER_S:
            continue
        if kind == "aside" and not os.path.lexists(target):
            continue  # the only complete copy of an interrupted overwrite
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs


def _abs(p: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(p)))


def _real(p: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(p)))


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def hf_cache_repo(directory: str | os.PathLike[str]) -> Path | None:
    """The ``models--org--name`` folder of a Hugging Face cache snapshot directory, else None."""
    m = _HF_SNAPSHOT.match(_real(directory))
    return Path(m.group("repo")) if m else None


def adapter_roots(directory: str | os.PathLike[str]) -> list[str]:
    """Real paths a file of this adapter may point into: the directory, and its cache repo for a cache snapshot."""
    roots = [_real(directory)]
    repo = hf_cache_repo(directory)
    if repo is not None:
        roots.append(os.fspath(repo))
    return roots


def escapes(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """True when ``path`` (an entry of ``directory``) is a symlink whose target lies outside the directory
    (a Hugging Face cache snapshot's links into its own ``blobs/`` do not count)."""
    if not os.path.islink(path):
        return False
    real = _real(path)
    return not any(real == r or _inside(real, r) for r in adapter_roots(directory))


def input_paths(
    directories: Iterable[tuple[str, str | os.PathLike[str] | None]], *, skip: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """(what, path) for each input directory, every entry in it and their real paths (symlinks followed), and the
    cache repo folder of a Hugging Face cache snapshot."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    skipped = set(skip)

    def add(what: str, p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append((what, p))

    for what, d in directories:
        if d is None:
            continue
        add(f"the {what} directory", _abs(d))
        add(f"the {what} directory", _real(d))
        repo = hf_cache_repo(d)
        if repo is not None:
            add(f"the {what}'s Hugging Face cache folder", os.fspath(repo))
        try:
            entries = list(os.scandir(_abs(d)))
        except OSError:
            continue
        for e in entries:
            if _abs(e.path) in skipped:
                continue
            add(f"the {what} file", _abs(e.path))
            add(f"the {what} file", _real(e.path))
    return out


def _overlap(candidates: set[str], inputs: list[tuple[str, str]], dirs_ok: set[str]) -> str | None:
    """The most precise way an output overlaps an input (is it > contains it > lies inside it), or None."""
    for o in candidates:
        for what, p in inputs:
            if o == p:
                return f"it is {what} {p}"
    for o in candidates:
        for what, p in inputs:
            if _inside(p, o):
                return f"it contains {what} {p}"
    for o in candidates:
        for what, p in inputs:
            if _inside(o, p) and not (o in dirs_ok and what.endswith("directory")):
                return f"it lies inside {what} {p}"
    return None


def _existing_ancestor(path: str) -> str:
    """The nearest ancestor of ``path`` that exists (what a mkdir -p would have to build on)."""
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return parent or "/"


def guard_outputs(
    outputs: Sequence[tuple[str, str | os.PathLike[str]]],
    *,
    adapter: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    may_exist: Iterable[str | os.PathLike[str]] = (),
    allow_inside: Iterable[str | os.PathLike[str]] = (),
    clean_temps: bool = True,
) -> None:
    """Refuse, before any work, outputs that would modify an input or replace an existing file unasked.

    ``outputs``: (option name, path), e.g. ("--out", out). ``adapter`` / ``base``: the input directories.
    ``may_exist``: outputs loradoc itself owns (replaced without ``overwrite``). ``allow_inside``: exact output
    paths allowed inside an input directory (never equal to an input file), e.g. ``ADAPTER/loradoc-certificate.json``
    given explicitly. Then removes the stale temps of killed runs beside each output (:func:`remove_stale_temps`).
    """
    allowed = [_abs(p) for p in allow_inside]
    # an allowed output that exists is the output itself, not an input (a symlink there is followed below)
    inputs = input_paths([("adapter", adapter), ("base", base)], skip=allowed)
    dirs_ok = set(allowed) | {_real(p) for p in allowed}
    owned = {_abs(p) for p in may_exist}
    for option, out in outputs:
        shown = os.fspath(out)
        candidates = {_abs(out), _real(out)}
        problem = _overlap(candidates, inputs, dirs_ok)
        if problem:
            raise BadInputError(
                f"refusing to write {option} {shown}: {problem}; inputs are never modified",
                hint=f"pass an {option} path outside the adapter and base directories",
            )
        parent = _existing_ancestor(_abs(out))
        if not os.path.isdir(parent):
            raise BadInputError(
                f"refusing to write {option} {shown}: {parent} is not a directory",
                hint=f"pass an {option} path whose parent is a directory (or does not exist yet)",
            )
        if os.path.lexists(_abs(out)) and not overwrite and _abs(out) not in owned:
            raise BadInputError(
                f"{option} {shown} already exists; refusing to replace it",
                hint=f"choose another {option} path, or pass --overwrite to replace it",
            )
    if clean_temps:
        for _option, out in outputs:
            remove_stale_temps(_abs(out))
