"""Screens and dialogs of the loradoc TUI."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    OptionList,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
    Tree,
)
from textual.widgets.option_list import Option

_SEV = {"error": "bold red", "warning": "yellow", "info": "dim"}


class JobBar(Horizontal):
    """The running job's status line and progress bar (the app paints every screen's copy)."""

    def __init__(self) -> None:
        super().__init__(id="job")

    def compose(self) -> ComposeResult:
        yield Label("ready", id="job-label")
        yield ProgressBar(total=1, id="job-progress", show_eta=False)


class SearchInput(Input):
    """The search box: enter keeps the filter and escape clears it; both go back to the table (so that the
    one-key bindings work again)."""

    BINDINGS = [Binding("escape", "leave(True)", "Clear search", show=False)]

    class Leave(Message):
        def __init__(self, input: SearchInput, clear: bool) -> None:
            super().__init__()
            self.input, self.clear = input, clear

    def action_leave(self, clear: bool) -> None:
        self.post_message(self.Leave(self, clear))

    async def action_submit(self) -> None:
        await super().action_submit()
        self.post_message(self.Leave(self, False))


class ErrorDialog(ModalScreen[None]):
    """The one place a failed job ends up: a one-line message that names the next step."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close-error")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text, self.message = title, message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.message, id="error-message")
            yield Button("Close", variant="error", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="confirm-cancel")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(id="buttons"):
                yield Button(self.yes, variant="primary", id="yes")
                yield Button("Cancel", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)


class InputDialog(ModalScreen[dict[str, str] | None]):
    """A small form: one Input per field."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="form-cancel")]

    def __init__(self, title: str, fields: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.title_text, self.fields = title, fields  # (name, label, default)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            for name, label, default in self.fields:
                yield Label(label)
                yield Input(value=default, id=f"field-{name}")
            with Horizontal(id="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.dismiss({n: self.query_one(f"#field-{n}", Input).value.strip() for n, _, _ in self.fields})
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss({n: self.query_one(f"#field-{n}", Input).value.strip() for n, _, _ in self.fields})

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConvertDialog(ModalScreen[dict[str, str] | None]):
    """Where a conversion goes and in which dtype. Dismisses {"out", "dtype"} or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="convert-cancel")]

    def __init__(self, kind: str, out: str, dtypes: tuple[str, ...]) -> None:
        super().__init__()
        self.kind, self.out, self.dtypes = kind, out, dtypes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Convert: {self.kind}", id="dialog-title")
            yield Label("output path")
            yield Input(value=self.out, id="field-out")
            yield Label("dtype" if self.kind == "merged" else "outtype")
            yield Select([(d, d) for d in self.dtypes], value=self.dtypes[0], allow_blank=False, id="field-dtype")
            with Horizontal(id="buttons"):
                yield Button("Convert", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def values(self) -> dict[str, str]:
        return {
            "out": self.query_one("#field-out", Input).value.strip(),
            "dtype": str(self.query_one("#field-dtype", Select).value),
        }

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.values() if event.button.id == "ok" else None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(self.values())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceDialog(ModalScreen[str | None]):
    """Pick one option (device picker, conversion kind)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice-cancel")]

    def __init__(self, title: str, options: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text, self.options = title, options

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield OptionList(*[Option(label, id=key) for key, label in self.options], id="choices")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


def findings_tree(findings: list[dict[str, Any]], label: str = "findings") -> Tree[str]:
    tree: Tree[str] = Tree(label, id="findings")
    tree.root.expand()
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for f in findings:
        groups[f.get("tower") or "adapter"][f["severity"]].append(f)
    for part in sorted(groups, key=lambda g: (g != "adapter", g)):
        node = tree.root.add(part, expand=True)
        for sev in ("error", "warning", "info"):
            for f in groups[part].get(sev, []):
                node.add_leaf(Text.assemble((f"{sev:<7} ", _SEV[sev]), f"{f['code']} ({f['count']}): ", f["message"]))
    if not findings:
        tree.root.add_leaf("no findings")
    return tree


def layout_tree(keys: list[str], towers: Mapping[str, str] | None = None) -> Tree[str]:
    """Towers -> layers -> modules, with tensor counts. ``towers``: the base profile's (module prefix -> kind, found
    from the model's structure); without one, a key's tower is only guessed from the usual tower names."""
    from loradoc.model.layout import address_of, parse_key

    counts: dict[str, dict[Any, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for k in keys:
        a = address_of(parse_key(k).module, towers)
        counts[a.tower][a.layer][a.local] += 1
    tree: Tree[str] = Tree(f"{len(keys)} tensors", id="layout")
    tree.root.expand()
    for tower in sorted(counts, key=lambda t: (t != "language", t)):
        layers = counts[tower]
        total = sum(sum(m.values()) for m in layers.values())
        tnode = tree.root.add(f"{tower} ({total})", expand=tower == "language")
        for layer in sorted(layers, key=lambda x: (x is None, x if x is not None else 0)):
            mods = layers[layer]
            lnode = tnode.add(f"layer {layer} ({sum(mods.values())})" if layer is not None else "other")
            for local, n in sorted(mods.items()):
                lnode.add_leaf(f"{local} ({n})")
    return tree


class DetailScreen(Screen[None]):
    """One adapter: findings by tower and severity, key layout, compatibility and lineage."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="back")]

    def __init__(
        self, manifest: Any, compat: Any | None, keys: list[str], towers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self.manifest, self.compat, self.keys, self.towers = manifest, compat, keys, towers
        self.tab = ""

    def compose(self) -> ComposeResult:
        m = self.manifest
        rev = m.revision(None)
        yield Header()
        from pathlib import Path

        name = Path(m.id).name if Path(m.id).is_absolute() else m.id
        yield Static(
            f"[b]{name}[/b]  base {m.base.id}  status [b]{rev.status}[/b]  revision {rev.label} ({rev.revision})",
            id="detail-head",
        )
        with TabbedContent(id="detail-tabs", initial=self.tab):
            with TabPane("Findings", id="tab-findings"):
                yield findings_tree(
                    [f.to_dict() for f in rev.findings], label=f"{name}: {rev.status}, base {m.base.id}"
                )
            with TabPane("Key layout", id="tab-layout"):
                yield layout_tree(self.keys, self.towers)
            with TabPane("Compatibility", id="tab-compat"), VerticalScroll():
                yield Static(self._compat_text(rev), id="compat")
            with TabPane("Lineage", id="tab-lineage"), VerticalScroll():
                yield Static(self._lineage_text(), id="lineage")
        yield JobBar()
        yield Footer()

    def on_mount(self) -> None:
        paint = getattr(self.app, "paint_job", None)
        if paint is not None:
            paint(self)

    async def reload(
        self, manifest: Any, compat: Any | None, keys: list[str], towers: Mapping[str, str] | None = None
    ) -> None:
        """Show the adapter as it is now (after a doctor or a repair), on the same tab."""
        self.tab = self.query_one("#detail-tabs", TabbedContent).active
        self.manifest, self.compat, self.keys, self.towers = manifest, compat, keys, towers
        await self.recompose()
        self.on_mount()

    def _compat_text(self, rev: Any) -> str:
        lines = []
        for c in rev.compat:
            lines.append(f"{c.verdict}: peft {c.peft or '*'}, transformers {c.transformers or '*'}  {c.evidence}")
        names = {"vllm": "vLLM", "sglang": "SGLang", "llama_cpp": "llama.cpp", "mlx_lm": "mlx-lm"}
        for x in getattr(rev, "runtimes", []):
            flags = f" ({' '.join(x.flags)})" if x.flags else ""
            lines.append(f"{names.get(x.runtime, x.runtime)} {x.version}: {x.verdict}{flags}")
        if self.compat is not None:
            a = self.compat
            lines.append(f"installed peft {a.peft}, transformers {a.transformers}: {a.verdict}")
            lines += [f"  - {r}" for r in a.reasons]
        return "\n".join(lines) or "no compatibility records yet"

    def _lineage_text(self) -> str:
        out = []
        for r in self.manifest.revisions:
            out.append(f"{r.label}: {r.status} ({r.revision})" + (f" at {r.path}" if r.path else ""))
        for step in self.manifest.lineage:
            out.append(
                f"{step.source} -> [{', '.join(step.passes)}] -> {step.output}  "
                f"(dropped {step.dropped}, renamed {step.renamed})"
            )
        return "\n".join(out) or "no revisions"


class PlanScreen(ModalScreen[bool]):
    """A repair plan (key diff + config diff) or a publish plan (operations + card diff), before anything is
    written. Dismisses True to apply."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="plan-cancel"), Binding("a", "apply", "Apply", id="apply")]

    def __init__(self, title: str, body: str, apply_label: str = "Apply") -> None:
        super().__init__()
        self.title_text, self.body, self.apply_label = title, body, apply_label

    def compose(self) -> ComposeResult:
        with Vertical(id="plan-dialog"):
            yield Label(self.title_text, id="dialog-title")
            with VerticalScroll(id="plan-body"):
                yield Static(self.body, id="plan-text", markup=False)
            with Horizontal(id="buttons"):
                yield Button(self.apply_label, variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "apply")

    def action_apply(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


def repair_plan_text(plan: Any) -> str:
    lines = [f"passes: {', '.join(plan.passes) or '(none)'}", ""]
    for c in plan.changes:
        lines.append(f"~ config {c.field}: {c.old!r}")
        lines.append(f"             -> {c.new!r}   ({c.pass_name})")
    if plan.changes:
        lines.append("")
    for a in plan.renamed():
        lines.append(f"~ {a.source}")
        lines.append(f"  -> {a.target}")
    for a in plan.dropped():
        lines.append(f"- {a.source}   ({a.pass_name}: {a.reason})")
    lines.append("")
    lines.append(f"kept {len(plan.kept())} of {len(plan.actions)} tensors")
    return "\n".join(lines)


def certificate_text(cert: Any) -> str:
    d = cert.data
    lines = [
        f"device {d['device']['type']} ({d['device']['dtype']}), torch {d['versions']['torch']}, "
        f"transformers {d['versions']['transformers']}, peft {d['versions']['peft']}",
        "",
    ]
    for c in d["checks"]:
        figs = ", ".join(f"{k}={v}" for k, v in c["figures"].items() if k not in ("keys", "problems", "different"))
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']:<15} {figs}")
    lines.append("")
    lines.append(f"certificate: {cert.path}")
    return "\n".join(lines)


def publish_plan_text(plan: Any) -> str:
    lines = []
    if plan.warning:
        lines += [plan.warning, ""]
    lines.append(
        f"one commit to {plan.repo_id} ({plan.endpoint}), parent {plan.parent_commit or '(new repo)'}"
        f" [{plan.parent_source}]" + (f", tag {plan.tag}" if plan.tag else "")
    )
    lines.append("")
    for op in plan.operations:
        size = f"{op.size} B" if op.size is not None else ""
        lines.append(f"{'+' if op.op == 'add' else '-'} {op.path}  {size}  ({op.origin})")
    lines += ["", "model card diff:", plan.card_diff or "(unchanged)"]
    return "\n".join(lines)
