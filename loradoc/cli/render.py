"""Human output for the CLI (rich). Presentation only."""

from __future__ import annotations

import shlex
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loradoc.diagnose.doctor import Diagnosis
    from loradoc.repair.passes import RepairPlan
    from loradoc.verify.checkload import Certificate

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
_VERDICT = {"healthy": "bold green", "repairable": "bold yellow", "broken": "bold red"}


def repair_command(d: Diagnosis, adapter: str, base: str) -> str | None:
    from pathlib import Path

    if d.verdict != "repairable":
        return None
    path = Path(adapter.rstrip("/"))
    parts = path.parts
    if "snapshots" in parts and any(x.startswith("models--") for x in parts):
        # an HF cache snapshot: never suggest writing into the cache; the repo's name, fixed, in the current folder
        repo = next(x for x in parts if x.startswith("models--")).split("--")[-1]
        out = f"./{repo}-fixed"
    elif not path.exists() and "/" in adapter and not adapter.startswith((".", "/", "~")):
        out = "./" + adapter.split("@")[0].rsplit("/", 1)[-1] + "-fixed"  # REPO@REV
    else:
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
    table.add_column("what", overflow="fold")  # key paths wrap, never cut
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
    if d.mode == "static":
        console.print(
            "note: --fast gives a prediction from the static analysis, not peft's answer; "
            "run doctor without --fast to have peft's own (dry) load decide",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    cmd = repair_command(d, adapter, base)
    if cmd:
        console.print(f"fix: {cmd}", soft_wrap=True, highlight=False, markup=False)
    elif d.verdict == "broken":
        console.print("fix: none automatic; the findings above say what cannot be repaired")
    elif d.verdict == "healthy":
        console.print(f"next: {next_after_doctor(adapter, base)}", soft_wrap=True, highlight=False, markup=False)


def _has_weights(base: str) -> bool:
    from pathlib import Path

    p = Path(base)
    return p.is_dir() and any(p.glob("*.safetensors"))


def next_after_doctor(adapter: str, base: str) -> str:
    """The next step after a healthy diagnosis: a real load on the base weights."""
    a, b = shlex.quote(adapter), shlex.quote(base)
    if _has_weights(base):
        return f"loradoc check-load {a} --base {b}"
    return f"loradoc pull {b} (the weights), then loradoc check-load {a} --base DIR"


def next_after_check(adapter: str, base: str, passed: bool) -> str:
    a, b = shlex.quote(adapter), shlex.quote(base)
    if not passed:
        return f"loradoc doctor {a} --base {b} (the failing checks above say what does not load as trained)"
    return f"loradoc convert merged {a} --base {b} --out DIR, or loradoc publish DIR --repo REPO"


def next_after_convert(kind: str, out: str) -> str:
    o = shlex.quote(out)
    if kind == "merged":
        return f"load {o} with transformers, or loradoc convert gguf ADAPTER --base BASE --out FILE.gguf"
    if kind == "gguf":
        return f"llama-cli -m {o} (llama.cpp), or quantize it with llama.cpp's llama-quantize"
    return f"llama-server -m BASE.gguf --lora {o} (llama.cpp)"


def render_plan(plan: RepairPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="repair plan", title_justify="left")
    for c in ("pass", "renamed", "dropped", "config"):
        t.add_column(c, justify="right" if c != "pass" else "left")
    for name in plan.passes:
        c = plan.counts.get(name, {})
        t.add_row(name, str(c.get("renamed", 0)), str(c.get("dropped", 0)), str(c.get("config", 0)))
    console.print(t)
    for ch in plan.changes:
        console.print(
            f"config {ch.field}: {ch.old!r} -> {ch.new!r}  ({ch.pass_name}: {ch.reason})",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    renamed = plan.renamed()
    for a in renamed[:5]:
        console.print(f"rename {a.source} -> {a.target}", soft_wrap=True, highlight=False, markup=False)
    if len(renamed) > 5:
        console.print(f"... and {len(renamed) - 5} more renames (--json lists all)")
    for a in plan.dropped():
        console.print(f"drop {a.source}  ({a.pass_name}: {a.reason})", soft_wrap=True, highlight=False, markup=False)
    left = [f for f in plan.after if f.severity == "error"]
    console.print(
        f"kept {len(plan.kept())} of {len(plan.actions)} tensors; "
        + ("no error finding left" if not left else "left: " + ", ".join(f.code for f in left))
    )


def render_certificate(cert: Certificate) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d = cert.data
    t = Table(title=f"check-load on {d['device']['type']} ({d['device']['dtype']})", title_justify="left")
    t.add_column("check")
    t.add_column("result")
    t.add_column("figures")
    for c in d["checks"]:
        figs = ", ".join(f"{k}={v}" for k, v in c["figures"].items() if k not in ("keys", "problems", "different"))
        t.add_row(c["name"], "[green]pass[/]" if c["passed"] else "[bold red]FAIL[/]", figs)
    console.print(t)
    v = d["versions"]
    console.print(f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}")
    console.print(
        f"certificate: {cert.path}" if cert.path else "certificate not written",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    console.print("[bold green]all checks passed[/]" if cert.passed else "[bold red]some checks failed[/]")
