"""Opening an input file for reading, with the one-line errors every reader gives (no such file, a directory, not
a regular file, no permission)."""

from __future__ import annotations

import stat
from pathlib import Path

from loradoc.errors import BadInputError, MissingFileError

TYPE_CHECKING = False  # not `from typing import ...`: typing is a measurable part of the import time
if TYPE_CHECKING:  # pragma: no cover
    from typing import BinaryIO


def open_regular(path: Path, *, what: str = "a file", dir_hint: str = "pass a file inside it") -> BinaryIO:
    """``path`` opened for binary reading (the caller closes it); ``what`` names the file expected (in the errors
    for a directory or a special file), ``dir_hint`` is the hint when ``path`` is a directory."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: no such file", hint="check the path (or download the adapter first)") from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot stat ({exc.strerror})", hint="check the path and permissions") from exc
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"{path}: is a directory, not {what}", hint=dir_hint)
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(f"{path}: is not a regular file", hint=f"pass {what} itself")
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: no such file", hint="check the path") from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot open ({exc.strerror})", hint="check the file's permissions") from exc
