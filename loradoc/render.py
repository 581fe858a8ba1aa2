"""Human output for the CLI (rich). Presentation only."""

from __future__ import annotations

import shlex
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .repair.doctor import Diagnosis

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
_VERDICT = {"healthy": "bold green", "repairable": "bold yellow", "broken": "bold red"}


def repair_command(d: Diagnosis, adapter: str, base: str) -> str | None:
    if d.verdict != "repairable":
        return None
    out = adapter.rstrip("/") + "-fixed"
    return f"loradoc repair {shlex.quote(adapter)} --base {shlex.quote(base)} --out {shlex.quote(out)}"


def render_diagnosis(d: Diagnosis, *, adapter: str, base: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    p = d.peft
    table = Table(title=f"{d.adapter} on {d.base}", title_justify="left", show_lines=False)
    table.add_column("part")
    table.add_column("finding")
    table.add_column("sev")
    table.add_column("n", justify="right")
    table.add_column("what")
    groups: dict[str, list] = defaultdict(list)
    for f in d.findings:
        groups[f.tower or "adapter"].append(f)
    for part in sorted(groups, key=lambda g: (g != "adapter", g)):
        for f in groups[part]:
            table.add_row(part, f.code, f"[{_STYLE[f.severity]}]{f.severity}[/]", str(f.count), f.message)
    if d.findings:
        console.print(table)
    if p.error:
        load = f"peft raises: {p.error}"
    else:
        load = f"loaded {p.loaded}, missing {p.missing}, unexpected {p.unexpected}, effective {p.effective}"
    console.print(f"peft ({'dry load on meta' if d.mode == 'full' else 'static prediction'}): {load}")
    console.print(f"verdict: [{_VERDICT[d.verdict]}]{d.verdict}[/]")
    cmd = repair_command(d, adapter, base)
    if cmd:
        console.print(f"fix: {cmd}", soft_wrap=True, highlight=False, markup=False)
    elif d.verdict == "broken":
        console.print("fix: none automatic; the findings above say what cannot be repaired")
