"""The adapter table: its columns, the cells of one registry row, ids clipped to the width they get."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import DataTable


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def clip_id(text: str, width: int) -> str:
    """An adapter id in ``width`` cells: whole when it fits; else an ``owner/name`` loses the start of the owner
    first (``…ner/name``), and only a name that alone does not fit is cut at its end."""
    if len(text) <= width:
        return text
    owner, sep, name = text.rpartition("/")
    if not sep:
        return clip(text, width)
    if len(name) + 2 <= width:
        return "…" + text[len(text) - (width - 1) :]
    return "…/" + clip(name, width - 2)


# the table's columns; adapter and base share what the others leave of the width
# "loads": the runtimes column, which serving runtimes a recorded `loradoc runtimes` check says load the adapter,
# one letter each: v(LLM) s(GLang) l(lama.cpp) m(lx-lm) (the detail screen's Compatibility tab names them in full)
COLUMNS = ("adapter", "base", "status", "findings", "verified", "compat", "loads")
RUNTIME_LETTERS = {"vllm": "v", "sglang": "s", "llama_cpp": "l", "mlx_lm": "m"}


def runtimes_cell(verdicts: dict[str, str]) -> str:
    """``vslm``: a letter for each runtime that loads the adapter (with flags or not), ``·`` for one that does not
    (refused or unknown); ``-`` when no check was recorded."""
    if not verdicts:
        return "-"
    from loradoc.runtimes import FLAGS, LOADS

    return "".join(c if verdicts.get(rt) in (LOADS, FLAGS) else "·" for rt, c in RUNTIME_LETTERS.items())


MIN_ID, MIN_BASE = 16, 13


class AdapterTable(DataTable[str]):
    """The adapters table; tells the app when its width changed (the id column takes what is left)."""

    class Resized(Message):
        pass

    _width = 0

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self._width = event.size.width
            self.post_message(self.Resized())
