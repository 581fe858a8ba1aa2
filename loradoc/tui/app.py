"""``loradoc tui``: browse the registry, diagnose, repair, check loads, convert and publish from one screen.

A thin shell: every action runs the same workflow as the CLI (:mod:`loradoc.workflows`, through
:mod:`loradoc.tui.jobs`), recording the same registry rows, in a thread worker that posts typed progress messages;
every worker failure ends in one error dialog
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
from textual.worker import Worker, WorkerState

from loradoc.errors import Cancelled, LoradocError
from loradoc.tui import jobs
from loradoc.tui.actions import AdapterActions
from loradoc.tui.jobs import JobDone, JobProgress, RunningJob, Workspace
from loradoc.tui.screens import (
    ConfirmDialog,
    DetailScreen,
    ErrorDialog,
    InputDialog,
    JobBar,
    SearchInput,
)
from loradoc.tui.table import COLUMNS, MIN_BASE, MIN_ID, AdapterTable, clip, clip_id, runtimes_cell

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


class LoradocApp(AdapterActions, App[None]):
    CSS_PATH = "loradoc.tcss"
    TITLE = "loradoc"
    COMMANDS = App.COMMANDS | {LoradocCommands}
    # The footer fits 80 columns with help and quit in it, on the detail screen too (search's key is named in the
    # search box; publish, the rarest action, is in the help panel and the command palette like every action).
    BINDINGS = [
        Binding("d", "doctor", "Doctor", id="doctor"),
        Binding("r", "repair", "Repair", id="repair"),
        Binding("l", "check_load", "Load", id="check-load", tooltip="Check load"),
        Binding("c", "convert", "Convert", id="convert"),
        Binding("p", "publish", "Publish", id="publish", show=False),
        Binding("enter", "open_detail", "Details", id="details", show=False),
        Binding("slash", "focus_search", "Search", id="search", show=False),
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
        from loradoc.registry import Registry

        self.registry = Registry(registry_path)
        self.workspace = Workspace.load(self.registry.path.with_name("tui-workspace.json"))
        self.example_dir = example_dir or self.registry.path.parent / "example"
        self.endpoint = endpoint
        self.offer_example = offer_example
        self.rows: list[Any] = []
        self.rows_before: list[Any] = []
        self.cells: list[tuple[str, str, tuple[str, ...]]] = []  # (full id, full base, the other cells) per row
        self.last_result: Any = None
        self.startup_error: LoradocError | None = None
        self.job: RunningJob | None = None
        self.job_view: tuple[str, dict[str, Any]] = ("ready", {"total": 1, "progress": 0})
        self._job_of: dict[Worker[Any], RunningJob] = {}

    # ------------------------------------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filters"):
            yield SearchInput(placeholder="search adapters (/)", id="search")
            yield Select([], prompt="any base", id="base-filter", allow_blank=True)
            yield Select([(s, s) for s in STATUSES], prompt="any status", id="status-filter", allow_blank=True)
        yield AdapterTable(id="adapters", cursor_type="row", zebra_stripes=True)
        yield JobBar()
        yield Footer()

    def on_mount(self) -> None:
        table = self.main.query_one("#adapters", DataTable)
        table.add_columns(*COLUMNS)
        try:
            self.refresh_table()
        except LoradocError as err:  # a corrupt or unreadable registry: one error screen, then leave (exit 2)
            self.startup_error = err
            self.push_screen(
                ErrorDialog("cannot open the registry", err.one_line()), lambda _: self.exit(return_code=2)
            )
            return
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
        search = self.main.query_one("#search", Input).value.strip().lower()
        base = self.main.query_one("#base-filter", Select).value
        status = self.main.query_one("#status-filter", Select).value
        base_v = base if isinstance(base, str) else None
        status_v = status if isinstance(status, str) else None
        all_rows = self.registry.list()
        bases = sorted({r.base for r in all_rows})
        sel = self.main.query_one("#base-filter", Select)
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
        self.cells = [self._cells(r) for r in self.rows]
        self.fill_table()

    def fill_table(self) -> None:
        """(Re)draw the rows at the current width (a resize redraws without reading the registry again)."""
        table = self.main.query_one("#adapters", DataTable)
        current = self.rows_before[table.cursor_row].id if 0 <= table.cursor_row < len(self.rows_before) else None
        id_w, base_w = self._name_widths()
        table.clear()
        for r, (name, base, rest) in zip(self.rows, self.cells, strict=True):
            table.add_row(clip_id(name, id_w), clip(base, base_w), *rest, key=r.id)
        ids = [r.id for r in self.rows]
        if current in ids:
            table.move_cursor(row=ids.index(current))
        self.rows_before = list(self.rows)

    def _name_widths(self) -> tuple[int, int]:
        """Cells for the adapter and base columns: what the other columns (and a scrollbar, when the rows do not
        fit) leave of the width; the id gets what it needs first, the base the rest (at least MIN_BASE)."""
        table = self.main.query_one("#adapters", DataTable)
        width = table.size.width or self.size.width
        pad = 2 * table.cell_padding
        others = [max([len(label)] + [len(c[2][i]) for c in self.cells]) for i, label in enumerate(COLUMNS[2:])]
        left = width - sum(w + pad for w in others) - 2 * pad
        if len(self.rows) + 1 > (table.size.height or self.size.height):
            left -= table.scrollbar_size_vertical
        need_id = max((len(c[0]) for c in self.cells), default=0)
        need_base = max((len(c[1]) for c in self.cells), default=0)
        base_w = max(MIN_BASE, min(need_base, left - need_id))
        return max(MIN_ID, left - base_w), base_w

    @on(AdapterTable.Resized)
    def _table_resized(self) -> None:
        self.fill_table()

    def _cells(self, r: Any) -> tuple[str, str, tuple[str, ...]]:
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
            name,
            r.base.split("/")[-1],
            (
                r.status,
                f"{errors}E {warnings}W" if rev.findings else "-",
                clip(ver, 8),
                compat,
                runtimes_cell(r.runtimes),
            ),
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
    @property
    def main(self) -> Any:
        """The main screen (the table and filters), whichever screen is on top."""
        return self.screen_stack[0]

    def selected(self) -> Any | None:
        table = self.main.query_one("#adapters", DataTable)
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
        from loradoc.registry import Registry

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

    def busy(self) -> bool:
        return self.job is not None and not self.job.finished.is_set()

    def start(self, name: str, fn: Any, *, total: int | None = None, status: str | None = None) -> Worker[Any] | None:
        """Run ``fn`` in a thread worker as the one current job (a second is refused while one runs: a worker
        thread cannot be stopped from outside, only asked to stop at its next progress call)."""
        if self.busy():
            assert self.job is not None
            self.notify(f"{self.job.name} is still running: wait for it, or cancel it (x)", severity="warning")
            return None
        job = self.job = RunningJob(name)

        def work() -> Any:
            try:
                return fn()
            finally:
                job.finished.set()

        self.show_job(status or f"{name}...", total=total, progress=0)
        worker = self.run_worker(work, name=name, group="job", thread=True, exit_on_error=False)
        self._job_of[worker] = job
        return worker

    def show_job(self, text: str | None = None, **bar: Any) -> None:
        """The job line (label + progress bar) of every screen that has one (main and detail screens)."""
        old_text, old_bar = self.job_view
        self.job_view = (old_text if text is None else text[:70], {**old_bar, **bar})
        for screen in self.screen_stack:
            self.paint_job(screen)

    def paint_job(self, screen: Any) -> None:
        text, bar = self.job_view
        for label in screen.query("#job-label").results(Label):
            label.update(text)
        for progress in screen.query("#job-progress").results(ProgressBar):
            progress.update(**bar)

    def reporter(self, job: str) -> Any:
        """A progress callback for core functions (call it in the worker): posts JobProgress, and raises
        JobCancelled once the user cancelled - the core functions write nothing when their callback raises."""
        running = self.job

        def report(done: int, total: int, what: str = "") -> None:
            if running is not None:
                running.check()
            self.post_message(JobProgress(job, done, total, what))

        return report

    def checkpoint(self) -> None:
        """In a worker, before a follow-up (a plan dialog): stop here if the user cancelled."""
        if self.job is not None:
            self.job.check()

    def on_job_progress(self, msg: JobProgress) -> None:
        if self.job is not None and self.job.cancel.is_set():
            return  # keep saying "cancelling"
        self.show_job(f"{msg.job}: {msg.what}", total=msg.total, progress=msg.done)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one handler that turns worker failures into an error dialog."""
        name = event.worker.name
        job = self._job_of.get(event.worker)
        if event.state == WorkerState.ERROR:
            err = event.worker.error
            if isinstance(err, Cancelled):
                self.show_job(f"{name} cancelled: nothing written")
            else:
                self.show_job(f"{name} failed")
                if isinstance(err, LoradocError):
                    message = err.one_line()
                else:
                    first = " ".join(str(err).split())[:300]
                    message = (
                        f"internal error: {type(err).__name__}: {first}; next: report it with `loradoc` CLI output"
                    )
                self.push_screen(ErrorDialog(f"{name} failed", message))
        elif event.state == WorkerState.CANCELLED:
            self.show_job(f"{name} cancelled")
        elif event.state == WorkerState.SUCCESS:
            late = job is not None and job.cancel.is_set()
            self.show_job(f"{name} done" + (" (it had finished before the cancel)" if late else ""))
        if event.state in (WorkerState.ERROR, WorkerState.CANCELLED, WorkerState.SUCCESS):
            self._job_of.pop(event.worker, None)
            if self.job_view[1].get("total") is None:  # an indeterminate bar keeps animating: settle it
                self.show_job(total=1, progress=1)

    async def on_job_done(self, msg: JobDone) -> None:
        self.last_result = msg.result
        self.refresh_table()
        for screen in self.screen_stack:  # a detail screen shows what the job changed
            if isinstance(screen, DetailScreen):
                await screen.reload(*self.detail_data(screen.manifest.id))

    def on_unmount(self) -> None:
        if self.job is not None:  # a worker thread still running stops at its next progress call
            self.job.cancel.set()

    # ------------------------------------------------------------------------------------------- actions
    def action_focus_search(self) -> None:
        self.main.query_one("#search", Input).focus()

    @on(SearchInput.Leave)
    def _search_left(self, event: SearchInput.Leave) -> None:
        if event.clear:
            event.input.value = ""
        self.main.query_one("#adapters", DataTable).focus()

    def action_refresh(self) -> None:
        self.refresh_table()

    def action_cancel_job(self) -> None:
        job = self.job
        if job is None or job.finished.is_set():
            self.notify("no job is running")
            return
        job.cancel.set()
        self.show_job(f"{job.name}: cancelling (it stops before writing anything)...")
        self.notify(f"cancelling {job.name}...")

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

    def detail_data(self, adapter_id: str) -> tuple[Any, Any, list[str], dict[str, str] | None]:
        """(manifest, installed-compat, tensor keys of the current revision, the base profile's towers) for the
        detail screen."""
        m = self.registry.show(adapter_id)
        keys: list[str] = []
        path = m.revision(None).path
        if path and Path(path).is_dir():
            from loradoc.io.snapshot import open_snapshot

            try:
                keys = sorted(open_snapshot(path).tensors)
            except LoradocError:
                keys = []
        try:
            compat = self.registry.compat(adapter_id)
        except LoradocError:
            compat = None
        return m, compat, keys, self.towers_of(m, path)

    def towers_of(self, manifest: Any, path: str | None) -> dict[str, str] | None:
        """The towers of the adapter's base, from its profile when one is at hand (shipped, or cached by an earlier
        doctor: nothing is built here); None otherwise."""
        from loradoc.model.profiles import get_profile

        rev = manifest.revision(None)
        candidates = [self.base_for(path) if path else None]
        candidates += [rev.diagnosis.base if rev.diagnosis is not None else None, manifest.base.id]
        for base in dict.fromkeys(c for c in candidates if c):
            try:
                return dict(get_profile(base, allow_build=False).towers)
            except LoradocError:
                continue
        return None


def run(registry_path: Path | None = None, endpoint: str | None = None) -> None:
    """Open the registry first (a corrupt or unreadable one is a one-line error before any screen is drawn), then
    run the app; an error that stops it at startup is raised again once the terminal is restored."""
    from loradoc.registry import Registry

    probe = Registry(registry_path)
    try:
        probe.sync()
    finally:
        probe.close()
    app = LoradocApp(registry_path, endpoint=endpoint)
    app.run()
    if app.startup_error is not None:
        raise app.startup_error
