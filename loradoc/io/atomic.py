"""Filesystem atomics: the one module every loradoc writer goes through.

- :func:`write_file_atomic`: bytes to a temp file beside the target, fsync, rename into place.
- :func:`atomic_file`: a temp path beside the target for a writer that wants a path (a converter, a C library);
  on success fsync + rename into place, on failure delete it.
- :func:`atomic_directory`: a temp directory beside the target to fill; on success fsync the tree and rename it
  into place (an overwrite moves the old one aside first).
- :func:`new_temp_file` / :func:`commit_file`: the two halves, for streaming writers
  (:class:`loradoc.io.safetensors_writer.SafetensorsWriter`).

Readers see the old file or the new one, never a partial one. Temps are named by :mod:`loradoc.io.outputs`
(``.<name>.p<pid>.<random>.tmp`` files, ``.<name>.tmp-p<pid>-<random>`` directories), so that
:func:`loradoc.io.outputs.remove_stale_temps` can clean up after a killed run. New files get the mode a plain
``open()`` would give (0666 less the umask). Every OSError becomes :class:`loradoc.errors.EnvironmentProblem`
(one line, with a hint), an unasked overwrite :class:`loradoc.errors.BadInputError`.

Only the standard library is imported at import time.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loradoc.errors import BadInputError, EnvironmentProblem
from loradoc.io.outputs import dir_aside_prefix, dir_temp_prefix, file_temp_prefix

__all__ = [
    "atomic_directory",
    "atomic_file",
    "commit_file",
    "current_umask",
    "env_error",
    "fault_write_delay",
    "fsync_dir",
    "new_temp_file",
    "refuse_existing",
    "unlink_quietly",
    "write_file_atomic",
]


def current_umask() -> int:
    """The process umask, read without changing it where possible (``os.umask`` is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def env_error(action: str, path: Path, exc: OSError) -> EnvironmentProblem:
    """The one-line error for an OSError met while ``action`` on ``path``."""
    hint = "free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check disk space and permissions"
    return EnvironmentProblem(f"{path}: {action} failed ({exc.strerror or exc})", hint=f"{hint} in {path.parent}")


def refuse_existing(target: Path) -> BadInputError:
    return BadInputError(
        f"{target}: already exists; refusing to overwrite it",
        hint="choose another output path or pass overwrite",
    )


def unlink_quietly(path: Path) -> None:
    """Remove a file if it is there (best effort: cleanup never raises)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames/creations inside it survive a crash (no-op where unsupported)."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open directories
        return
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise env_error("opening the directory for fsync", p, exc) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise env_error("fsync of the directory", p, exc) from exc
    finally:
        os.close(fd)


def fault_write_delay() -> float:
    """Seconds to sleep after each tensor written (``LORADOC_FAULT_SLOW_WRITE``): the crash tests' hook for
    killing a writer mid-way. 0 unless set."""
    try:
        return float(os.environ.get("LORADOC_FAULT_SLOW_WRITE", "0"))
    except ValueError:
        return 0.0


# ----------------------------------------------------------------------------------------------------
# Files


def new_temp_file(target: Path, *, mode: int | None = None) -> tuple[int, Path]:
    """Create a temp file beside ``target`` (its parent directories too); return (open descriptor, path).
    ``mode``: its permission bits (default: 0666 less the umask, as a plain ``open()`` would give)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # imported here: keeps `import loradoc.io.atomic` light

        fd, name = tempfile.mkstemp(prefix=file_temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise env_error("creating a temporary file", target, exc) from exc
    with contextlib.suppress(OSError, AttributeError):  # no fchmod on Windows
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)
    return fd, Path(name)


def commit_file(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a complete (already fsync'd) temp file onto ``target`` and fsync the directory."""
    if not overwrite and os.path.lexists(target):
        raise refuse_existing(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_file_atomic(target: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to a temp file beside ``target``, fsync it, then rename it into place.
    Readers see the old file or the new one, never a partial one."""
    target = Path(target)
    if not overwrite and os.path.lexists(target):
        raise refuse_existing(target)
    fd, tmp = new_temp_file(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        commit_file(tmp, target, overwrite)
    except OSError as exc:
        unlink_quietly(tmp)
        raise env_error("atomic write", target, exc) from exc
    except BaseException:
        unlink_quietly(tmp)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike[str], *, overwrite: bool = True, mode: int | None = None) -> Iterator[Path]:
    """Yield the path of an empty temp file beside ``target`` for the caller (or a library) to write; on normal
    exit fsync it, set its ``mode`` (default 0666 less the umask) and rename it onto ``target`` (an existing one
    only with ``overwrite``: replaced, never written in place); on an exception delete it."""
    target = Path(target)
    fd, tmp = new_temp_file(target, mode=mode)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # the writer may have replaced the file: set the mode again
            os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        commit_file(tmp, target, overwrite)
    except OSError as exc:
        unlink_quietly(tmp)
        raise env_error("writing", target, exc) from exc
    except BaseException:
        unlink_quietly(tmp)
        raise


# ----------------------------------------------------------------------------------------------------
# Directories


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for fname in filenames:
            fpath = os.path.join(dirpath, fname)
            if os.path.islink(fpath):
                continue
            fd = os.open(fpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        unlink_quietly(path)


@contextmanager
def atomic_directory(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target`` (``.<name>.tmp-p<pid>-XXXX``) to fill; on normal exit fsync every
    file and directory in it and rename it to ``target``; on an exception delete it.

    An existing ``target`` is refused (BadInputError) unless ``overwrite``: then the old one is renamed aside
    (``.<name>.old-p<pid>-XXXX``), the new one renamed in, and the old one deleted. A crash leaves only dot-prefixed
    temp dirs, never a half-written ``target`` (a crash between the two renames of an overwrite leaves the
    complete old copy under ``.<name>.old-p<pid>-XXXX``)."""
    import shutil
    import tempfile

    target = Path(target)
    if not overwrite and os.path.lexists(target):
        raise refuse_existing(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=dir_temp_prefix(target), dir=target.parent))
    except OSError as exc:
        raise env_error("creating a temporary directory", target, exc) from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        _fsync_tree(tmp)
        if os.path.lexists(target):
            if not overwrite:
                raise refuse_existing(target)
            aside = Path(tempfile.mkdtemp(prefix=dir_aside_prefix(target), dir=target.parent))
            os.rmdir(aside)  # reserve a unique name, then move the old target there
            os.rename(target, aside)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(aside, target)
                raise
            fsync_dir(target.parent)
            _remove(aside)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise env_error("publishing the directory", target, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
