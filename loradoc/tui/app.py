"""``loradoc tui``: browse the registry, diagnose, repair, check loads, convert and publish from one screen.

A thin shell: every action calls the same core functions as the CLI (through :mod:`loradoc.tui.jobs`) in a thread
worker that posts typed progress messages; every worker failure ends in one error dialog
(:meth:`LoradocApp.on_worker_state_changed`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Input, Label, ProgressBar, Select
from textual.worker import Worker, WorkerState, get_current_worker

from ..errors import LoradocError
from . import jobs
from .jobs import JobCancelled, JobDone, JobProgress, Workspace
from .screens import (
    ChoiceDialog,
    ConfirmDialog,
    DetailScreen,
    ErrorDialog,
    InputDialog,
    PlanScreen,
    certificate_text,
    publish_plan_text,
    repair_plan_text,
)

STATUSES = ("healthy", "repairable", "broken", "repaired", "verified", "unknown")
ACTIONS: list[tuple[str, str, str]] = [
    # (action, title, help) - the command palette offers each
    ("doctor", "Doctor", "Diagnose the selected adapter (real peft dry load)"),
    ("repair", "Repair", "Plan a repair, show the key and config diff, then apply it"),
    ("check_load", "Check load", "Really load base + adapter on a device and certify it"),
    ("convert", "Convert", "Merged checkpoint, GGUF or GGUF-LoRA"),
    ("publish", "Publish", "Push a verified revision to the Hub as one commit"),
    ("open_detail", "Details", "Findings, key layout, compatibility and lineage"),
    ("build_example", "Build the bundled example", "Tiny bases + seed replicas, diagnosed and registered"),
    ("refresh", "Refresh", "Re-sync the registry"),
    ("cancel_job", "Cancel job", "Cancel the running job"),
]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class LoradocCommands(Provider):
    """Every action in the command palette."""

    async def discover(self) -> Hits:
        app = self.app
        assert isinstance(app, LoradocApp)
        for action, title, help_text in ACTIONS:
            yield DiscoveryHit(title, partial(app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, LoradocApp)
        matcher = self.matcher(query)
        for action, title, help_text in ACTIONS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(app.run_action, action), help=help_text)


class LoradocApp(App[None]):
    CSS_PATH = "loradoc.tcss"
    TITLE = "loradoc"
    COMMANDS = App.COMMANDS | {LoradocCommands}
    BINDINGS = [
        Binding("d", "doctor", "Doctor", id="doctor"),
        Binding("r", "repair", "Repair", id="repair"),
        Binding("l", "check_load", "Check load", id="check-load"),
        Binding("c", "convert", "Convert", id="convert"),
        Binding("p", "publish", "Publish", id="publish"),
        Binding("enter", "open_detail", "Details", id="details", show=False),
        Binding("slash", "focus_search", "Search", id="search"),
        Binding("e", "build_example", "Example", id="example", show=False),
        Binding("x", "cancel_job", "Cancel", id="cancel-job", show=False),
        Binding("f1", "show_help_panel", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        registry_path: Path | None = None,
        *,
        example_dir: Path | None = None,
        endpoint: str | None = None,
        offer_example: bool = True,
    ) -> None:
        super().__init__()
        from ..registry import Registry

        self.registry = Registry(registry_path)
        self.workspace = Workspace.load(self.registry.path.with_name("tui-workspace.json"))
        self.example_dir = example_dir or self.registry.path.parent / "example"
        self.endpoint = endpoint
        self.offer_example = offer_example
        self.rows: list[Any] = []
        self.rows_before: list[Any] = []
        self.last_result: Any = None

    # ------------------------------------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filters"):
            yield Input(placeholder="search adapters (/)", id="search")
            yield Select([], prompt="any base", id="base-filter", allow_blank=True)
            yield Select([(s, s) for s in STATUSES], prompt="any status", id="status-filter", allow_blank=True)
        yield DataTable(id="adapters", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="job"):
            yield Label("ready", id="job-label")
            yield ProgressBar(total=1, id="job-progress", show_eta=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#adapters", DataTable)
        table.add_columns("adapter", "base", "status", "findings", "verified", "compat")
        self.refresh_table()
        if self.offer_example and not self._local_rows():
            self.push_screen(
                ConfirmDialog(
                    "No local adapters yet. Build the bundled example (tiny bases + seed replicas)?", yes="Build"
                ),
                self._maybe_build_example,
            )
        table.focus()

    def _local_rows(self) -> list[Any]:
        return [r for r in self.rows if Path(r.id).is_absolute()]

    def refresh_table(self) -> None:
        self.registry.sync()
        search = self.query_one("#search", Input).value.strip().lower()
        base = self.query_one("#base-filter", Select).value
        status = self.query_one("#status-filter", Select).value
        base_v = base if isinstance(base, str) else None
        status_v = status if isinstance(status, str) else None
        all_rows = self.registry.list()
        bases = sorted({r.base for r in all_rows})
        sel = self.query_one("#base-filter", Select)
        sel.set_options([(b, b) for b in bases])
        if base_v in bases:
            sel.value = base_v
        self.rows = [
            r
            for r in all_rows
            if (base_v is None or r.base == base_v)
            and (status_v is None or r.status == status_v)
            and (not search or search in r.id.lower() or search in r.base.lower())
        ]
        table = self.query_one("#adapters", DataTable)
        current = self.rows_before[table.cursor_row].id if 0 <= table.cursor_row < len(self.rows_before) else None
        table.clear()
        for r in self.rows:
            table.add_row(*self._cells(r), key=r.id)
        ids = [r.id for r in self.rows]
        if current in ids:
            table.move_cursor(row=ids.index(current))
        self.rows_before = list(self.rows)

    def _cells(self, r: Any) -> tuple[str, ...]:
        m = self.registry.show(r.id)
        rev = m.revision(None)
        errors = sum(1 for f in rev.findings if f.severity == "error")
        warnings = sum(1 for f in rev.findings if f.severity == "warning")
        verified = next((x for x in reversed(m.revisions) if x.status == "verified"), None)
        try:
            compat = self.registry.compat(r.id).verdict
        except LoradocError:
            compat = "unknown"
        name = Path(r.id).name if Path(r.id).is_absolute() else r.id
        if verified is None:
            ver = "-"
        elif verified.revision != "unknown":
            ver = verified.revision[:10]
        else:
            ver = verified.label
        return (
            _clip(name, 22),
            _clip(r.base.split("/")[-1], 13),
            r.status,
            f"{errors}E {warnings}W" if rev.findings else "-",
            _clip(ver, 8),
            compat,
        )

    @on(Input.Changed, "#search")
    @on(Select.Changed, "#status-filter")
    @on(Select.Changed, "#base-filter")
    def _filters_changed(self) -> None:
        self.refresh_table()

    @on(DataTable.RowSelected, "#adapters")
    def _row_selected(self) -> None:
        self.action_open_detail()

    # ------------------------------------------------------------------------------------------- helpers
    def selected(self) -> Any | None:
        table = self.query_one("#adapters", DataTable)
        if not self.rows or table.cursor_row is None or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def selected_path(self) -> str | None:
        """The local directory of the selected adapter's current revision."""
        r = self.selected()
        if r is None:
            self.notify("select an adapter first", severity="warning")
            return None
        rev = self.registry.show(r.id).revision(None)
        path = rev.path or (r.id if Path(r.id).is_dir() else None)
        if not path or not Path(path).is_dir():
            self.notify(f"{r.id} has no local copy; pull it first (loradoc pull {r.id})", severity="warning")
            return None
        return str(path)

    def worker_registry(self) -> Any:
        """A Registry for the calling worker thread (sqlite connections stay in their thread)."""
        from ..registry import Registry

        r = self.registry
        return Registry(r.path, r.manifest_dirs, user_dir=r.user_dir)

    def base_for(self, adapter_path: str) -> str | None:
        return self.workspace.base_for(adapter_path)

    def with_base(self, adapter_path: str, then: Any) -> None:
        base = self.base_for(adapter_path)
        if base:
            then(base)
            return

        def chosen(values: dict[str, str] | None) -> None:
            if values and values.get("base"):
                self.workspace.remember(adapter_path, values["base"])
                then(values["base"])

        self.push_screen(InputDialog("Which base? (local directory or shipped id)", [("base", "base", "")]), chosen)

    def start(self, name: str, fn: Any, *, total: int | None = None) -> Worker[Any]:
        self.query_one("#job-label", Label).update(f"{name}...")
        bar = self.query_one("#job-progress", ProgressBar)
        bar.update(total=total, progress=0)
        return self.run_worker(fn, name=name, group="job", thread=True, exclusive=True, exit_on_error=False)

    def reporter(self, job: str) -> Any:
        """A progress callback for core functions: posts JobProgress and turns a cancel into JobCancelled."""
        worker = get_current_worker()

        def report(done: int, total: int, what: str = "") -> None:
            if worker.is_cancelled:
                raise JobCancelled(f"{job} cancelled", hint="nothing was written; run it again when ready")
            self.post_message(JobProgress(job, done, total, what))

        return report

    def on_job_progress(self, msg: JobProgress) -> None:
        self.query_one("#job-progress", ProgressBar).update(total=msg.total, progress=msg.done)
        self.query_one("#job-label", Label).update(f"{msg.job}: {msg.what}"[:70])

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one handler that turns worker failures into an error dialog."""
        if event.state == WorkerState.ERROR:
            err = event.worker.error
            self.query_one("#job-label", Label).update(f"{event.worker.name} failed")
            if isinstance(err, LoradocError):
                message = err.one_line()
            else:
                first = " ".join(str(err).split())[:300]
                message = f"internal error: {type(err).__name__}: {first}; next: report it with `loradoc` CLI output"
            self.push_screen(ErrorDialog(f"{event.worker.name} failed", message))
        elif event.state == WorkerState.CANCELLED:
            self.query_one("#job-label", Label).update(f"{event.worker.name} cancelled")
        elif event.state == WorkerState.SUCCESS:
            self.query_one("#job-label", Label).update(f"{event.worker.name} done")
        if event.state in (WorkerState.ERROR, WorkerState.CANCELLED, WorkerState.SUCCESS):
            bar = self.query_one("#job-progress", ProgressBar)
            if bar.total is None:  # an indeterminate bar keeps animating: settle it
                bar.update(total=1, progress=1)

    def on_job_done(self, msg: JobDone) -> None:
        self.last_result = msg.result
        self.refresh_table()

    # ------------------------------------------------------------------------------------------- actions
    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_refresh(self) -> None:
        self.refresh_table()

    def action_cancel_job(self) -> None:
        cancelled = self.workers.cancel_group(self, "job")
        if cancelled:
            self.notify("cancelling...")

    def _maybe_build_example(self, yes: bool | None) -> None:
        if yes:
            self.action_build_example()

    def action_build_example(self) -> None:
        def job() -> None:
            paths = jobs.build_example(
                self.example_dir, self.worker_registry(), self.workspace, self.reporter("example")
            )
            self.post_message(JobDone("example", paths))

        self.start("example", job)

    def action_open_detail(self) -> None:
        r = self.selected()
        if r is None:
            return
        m = self.registry.show(r.id)
        keys: list[str] = []
        path = m.revision(None).path
        if path and Path(path).is_dir():
            from ..snapshot import open_snapshot

            try:
                keys = sorted(open_snapshot(path).tensors)
            except LoradocError:
                keys = []
        try:
            compat = self.registry.compat(r.id)
        except LoradocError:
            compat = None
        self.push_screen(DetailScreen(m, compat, keys))

    def action_doctor(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def job() -> None:
                d = jobs.run_doctor(path, base, self.worker_registry())
                self.post_message(JobDone("doctor", d))
                self.notify(f"doctor: {d.verdict}")

            self.start("doctor", job)

        self.with_base(path, go)

    def action_repair(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def job() -> None:
                plan = jobs.plan_repair(path, base)
                self.call_from_thread(self._show_repair_plan, plan, path, base)

            self.start("repair plan", job)

        self.with_base(path, go)

    def _show_repair_plan(self, plan: Any, path: str, base: str) -> None:
        out = Path(path).with_name(Path(path).name + "-fixed")

        def decided(apply: bool | None) -> None:
            if not apply:
                self.notify("repair not applied")
                return

            def job() -> None:
                result = jobs.apply_repair(plan, base, out, self.worker_registry(), self.reporter("repair"))
                self.workspace.remember(str(out), base)
                self.post_message(JobDone("repair", result))
                self.notify(f"repair written to {out}: {result.verdict}")

            self.start("repair", job, total=len(plan.kept()))

        self.push_screen(PlanScreen(f"Repair plan -> {out.name}", repair_plan_text(plan)), decided)

    def action_check_load(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def devices() -> None:
                options = jobs.list_devices()
                self.call_from_thread(self._pick_device, options, path, base)

            self.start("devices", devices)

        self.with_base(path, go)

    def _pick_device(self, options: list[tuple[str, str]], path: str, base: str) -> None:
        def picked(device: str | None) -> None:
            if not device:
                return

            def job() -> None:
                cert = jobs.run_check_load(path, base, device, self.worker_registry())
                self.post_message(JobDone("check-load", cert))
                self.call_from_thread(
                    self.push_screen,
                    PlanScreen(
                        "Load certificate: " + ("PASSED" if cert.passed else "FAILED"),
                        certificate_text(cert),
                        apply_label="OK",
                    ),
                )

            self.start("check-load", job)

        self.push_screen(ChoiceDialog("Device", options), picked)

    def action_convert(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def kind_picked(kind: str | None) -> None:
                if not kind:
                    return
                suffix = {"merged": "-merged", "gguf": ".gguf", "gguf-lora": "-lora.gguf"}[kind]
                out = Path(path).with_name(Path(path).name + suffix)

                def job() -> None:
                    result = jobs.run_convert(
                        kind, path, base, out, self.worker_registry(), self.reporter(f"convert {kind}")
                    )
                    self.post_message(JobDone("convert", result))
                    self.notify(f"wrote {out}")

                self.start(f"convert {kind}", job)

            self.push_screen(
                ChoiceDialog(
                    "Convert to",
                    [
                        ("merged", "merged checkpoint (safetensors)"),
                        ("gguf", "GGUF (merged)"),
                        ("gguf-lora", "GGUF LoRA adapter (llama-server --lora)"),
                    ],
                ),
                kind_picked,
            )

        self.with_base(path, go)

    def action_publish(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def asked(values: dict[str, str] | None) -> None:
            if not values or not values.get("repo"):
                return
            endpoint = values.get("endpoint") or self.endpoint

            def job() -> None:
                plan = jobs.plan_publish(
                    path, values["repo"], values.get("tag") or None, endpoint, self.worker_registry()
                )
                self.call_from_thread(self._show_publish_plan, plan, endpoint)

            self.start("publish plan", job)

        self.push_screen(
            InputDialog(
                "Publish",
                [
                    ("repo", "Hub repo id", ""),
                    ("tag", "tag (optional)", ""),
                    ("endpoint", "endpoint", self.endpoint or ""),
                ],
            ),
            asked,
        )

    def _show_publish_plan(self, plan: Any, endpoint: str | None) -> None:
        body = publish_plan_text(plan)

        def decided(apply: bool | None) -> None:
            if not apply:
                return

            def job() -> None:
                result = jobs.run_publish(plan, endpoint, self.worker_registry())
                self.post_message(JobDone("publish", result))
                self.notify(f"pushed {result.commit_sha[:12]}")

            self.start("publish", job)

        self.push_screen(PlanScreen(f"Publish to {plan.repo_id}", body, apply_label="Push"), decided)


def run(registry_path: Path | None = None, endpoint: str | None = None) -> None:
    LoradocApp(registry_path, endpoint=endpoint).run()
