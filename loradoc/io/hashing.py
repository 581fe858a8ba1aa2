"""SHA-256 of files and streams: whole files through :func:`hashlib.file_digest`, streams on a side thread.

Only the standard library is imported at import time (``threading``/``queue`` when a :class:`HashThread` starts).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from loradoc.errors import BadInputError
from loradoc.io.files import open_regular

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["HashThread", "sha256_fd", "sha256_file"]


def _read_failed(path: Path, exc: OSError) -> BadInputError:
    return BadInputError(f"{path}: read failed ({exc.strerror})", hint="check the file and the disk")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a whole file (:func:`hashlib.file_digest`: read in chunks, the GIL released)."""
    p = Path(path)
    fh = open_regular(p)
    with fh:
        try:
            return hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as exc:
            raise _read_failed(p, exc) from exc


def sha256_fd(fd: int, path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the whole file open as ``fd`` (from its start, whatever the descriptor's offset; the
    descriptor stays open). ``path`` names the file in errors."""
    try:
        with open(os.dup(fd), "rb") as fh:
            fh.seek(0)
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise _read_failed(Path(path), exc) from exc


class HashThread:
    """sha256 of a byte stream on a worker thread (hashlib releases the GIL), fed through a bounded queue."""

    def __init__(self) -> None:
        import queue
        import threading

        self._q: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=3)
        self._h = hashlib.sha256()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: Any) -> None:
        self._q.put(chunk)

    def hexdigest(self) -> str:
        if self._digest is None:
            self._q.put(None)
            self._t.join()
            self._digest = self._h.hexdigest()
        return self._digest

    def close(self) -> None:
        if self._digest is None and self._t.is_alive():
            self._q.put(None)
            self._t.join()
            self._digest = self._h.hexdigest()
