"""One progress protocol for every long job (repair, merge, GGUF, GGUF-LoRA, check-load, scan-hub).

A job takes ``progress(done, total, what)`` and calls it after each unit of work (a tensor, a repository, a stage).
The callback may raise :class:`Cancelled` (or any exception) to stop the job: every job writes into a temporary
path and renames it into place only at the end, so a stopped job leaves nothing behind and records nothing.
The CLI shows it as a rich progress bar on a terminal; the TUI turns it into progress messages.
"""

from __future__ import annotations

from collections.abc import Callable

from loradoc.errors import Cancelled

__all__ = ["Cancelled", "Progress", "report"]

Progress = Callable[[int, int, str], None]


def report(progress: Progress | None, done: int, total: int, what: str) -> None:
    """Call ``progress`` when there is one."""
    if progress is not None:
        progress(done, total, what)
