"""The Textual TUI, driven with Pilot against the real core (no mocks), plus screen snapshots."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loradoc.demo.builder import ExampleSet

pytest.importorskip("textual")

from textual.widgets import DataTable, Input  # noqa: E402

from loradoc.tui.app import LoradocApp  # noqa: E402
from loradoc.tui.screens import (  # noqa: E402
    ChoiceDialog,
    ConfirmDialog,
    ConvertDialog,
    DetailScreen,
    ErrorDialog,
    InputDialog,
    PlanScreen,
)

# A fixed place, so that paths (and the revision labels derived from them) are the same in every run: the
# screen snapshots depend on it.
WORK = Path(tempfile.gettempdir()) / "loradoc-tui-test"
CLINICAL = "seed-clinical-endpoint-extractor"
PRISTINE = WORK.with_name("loradoc-tui-test-pristine")
HUB_TOKEN = "hf_loradocTUItestTOKEN00001111222"


@pytest.fixture(scope="module")
def workspace(example_root: ExampleSet) -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "user").mkdir(parents=True)
    shutil.copytree(example_root.root, WORK / "example")
    # register the example the way the TUI's "build the bundled example" does (real doctor runs)
    app = make_app()

    async def build() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, type(app.screen))
            await pilot.click("#yes")  # the empty-registry offer
            await app.workers.wait_for_complete()
            await pilot.pause()

    asyncio.run(build())
    # a runtime check (`loradoc runtimes --record`) of every local adapter: the table's runtimes column shows it
    from loradoc import workflows

    for adapter, base in json.loads((WORK / "tui-workspace.json").read_text())["bases"].items():
        workflows.runtimes(adapter, base, record=True, registry=WORK / "registry.sqlite")
    # keep the freshly registered state: the snapshot tests start from it whatever ran before them
    shutil.rmtree(PRISTINE, ignore_errors=True)
    PRISTINE.mkdir()
    for item in ("user", "registry.sqlite", "tui-workspace.json"):
        src = WORK / item
        if src.is_dir():
            shutil.copytree(src, PRISTINE / item)
        elif src.exists():
            shutil.copy2(src, PRISTINE / item)
    return WORK


@pytest.fixture(scope="module", autouse=True)
def _manifests_env_is_restored() -> Iterator[None]:
    """make_app points LORADOC_MANIFESTS at the TUI workspace; later modules must not inherit it."""
    import os

    old = os.environ.get("LORADOC_MANIFESTS")
    yield
    if old is None:
        os.environ.pop("LORADOC_MANIFESTS", None)
    else:
        os.environ["LORADOC_MANIFESTS"] = old


def make_app(**kw: Any) -> LoradocApp:
    import os

    os.environ["LORADOC_MANIFESTS"] = str(WORK / "user")
    return LoradocApp(WORK / "registry.sqlite", example_dir=WORK / "example", **kw)


def select(app: LoradocApp, name: str) -> None:
    table = app.query_one("#adapters", DataTable)
    idx = next(i for i, r in enumerate(app.rows) if Path(r.id).name == name)
    table.move_cursor(row=idx)


async def settle(app: LoradocApp, pilot: Any) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def test_the_example_is_registered(workspace: Path) -> None:
    app = make_app()

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            names = {Path(r.id).name for r in app.rows}
            assert CLINICAL in names and "healthy-gemma3" in names
            assert "Shubh-0789/gemma4-clinical-endpoint-extractor" in {r.id for r in app.rows}
            row = next(r for r in app.rows if Path(r.id).name == CLINICAL)
            assert row.status == "repairable"

    asyncio.run(go())


def test_filters_and_search(workspace: Path) -> None:
    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            total = len(app.rows)
            await pilot.press("slash")
            await pilot.press(*"clinical")
            await pilot.pause()
            assert 0 < len(app.rows) < total
            assert all("clinical" in r.id.lower() for r in app.rows)

    asyncio.run(go())


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from hubserver import HubServer

    srv = HubServer(tmp_path_factory.mktemp("tui-hub") / "store")
    srv.add_token(HUB_TOKEN, "alice")
    with srv:
        yield srv


def test_doctor_repair_checkload_convert_publish_flow(
    workspace: Path, hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gguf")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    app = make_app(offer_example=False)
    fixed = WORK / "example" / "adapters" / f"{CLINICAL}-fixed"
    shutil.rmtree(fixed, ignore_errors=True)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, CLINICAL)
            await pilot.press("d")
            await settle(app, pilot)
            assert app.last_result.verdict == "repairable"
            await pilot.press("r")
            await settle(app, pilot)
            assert isinstance(app.screen, PlanScreen)
            text = str(app.screen.body)
            assert "drop-orphans" in text and "exclude_modules" in text
            assert not fixed.exists()  # nothing written before the plan is accepted
            await pilot.press("a")
            await settle(app, pilot)
            assert app.last_result.verdict == "healthy" and fixed.is_dir()
            select(app, CLINICAL)
            assert app.selected_path() == str(fixed)
            await pilot.press("l")
            await settle(app, pilot)
            assert isinstance(app.screen, ChoiceDialog)
            assert ("cpu", "CPU") in app.screen.options
            await pilot.press("end", "enter")
            await settle(app, pilot)
            cert = app.last_result
            assert cert.passed and cert.data["device"]["type"] == "cpu"
            assert isinstance(app.screen, PlanScreen) and "PASSED" in app.screen.title_text
            await pilot.press("escape")
            await pilot.pause()
            m = app.registry.show(str(WORK / "example" / "adapters" / CLINICAL))
            assert m.revision(None).certificates
            assert m.lineage and "drop-orphans" in m.lineage[-1].passes

            # convert to a GGUF LoRA (llama-server --lora)
            await pilot.press("c")
            await pilot.pause()
            assert isinstance(app.screen, ChoiceDialog)
            await pilot.press("end", "enter")  # the last option: gguf-lora
            await pilot.pause()
            assert isinstance(app.screen, ConvertDialog)  # output path and outtype, defaults kept
            await pilot.click("#ok")
            await settle(app, pilot)
            gguf = WORK / "converted" / (fixed.name + "-lora.gguf")
            assert gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
            m = app.registry.show(str(WORK / "example" / "adapters" / CLINICAL))
            assert any(a.kind == "gguf-lora" for a in m.revision(None).artifacts)

            # publish to the loopback Hub: plan (commit + card diff) first, then push
            await pilot.press("p")
            await pilot.pause()
            form = app.screen
            assert isinstance(form, InputDialog)
            form.query_one("#field-repo", Input).value = "alice/clinical-tui"
            form.query_one("#field-tag", Input).value = "loradoc-fix"
            form.query_one("#field-endpoint", Input).value = hub.url
            await pilot.click("#ok")
            await settle(app, pilot)
            assert isinstance(app.screen, PlanScreen) and "alice/clinical-tui" in app.screen.title_text
            assert "Loading fix" in app.screen.body
            await pilot.press("a")
            await settle(app, pilot)
            pushed = app.last_result
            assert pushed.tag == "loradoc-fix" and len(pushed.commit_sha) == 40
            m = app.registry.show(str(WORK / "example" / "adapters" / CLINICAL))
            assert any(h.commit == pushed.commit_sha for h in m.revision(None).hub)

    asyncio.run(go())


def test_detail_screen(workspace: Path) -> None:
    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, "textonly-on-wrapper")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, DetailScreen)
            assert len(app.screen.keys) == 76

    asyncio.run(go())


def test_the_runtimes_column_says_which_runtimes_load_each_adapter(workspace: Path) -> None:
    """Per row, the runtimes a recorded check says load the adapter (with flags or not); truth: a fresh check."""
    from loradoc.runtimes import FLAGS, LOADS, check_runtimes
    from loradoc.tui.table import COLUMNS

    letters = {"vllm": "v", "sglang": "s", "llama_cpp": "l", "mlx_lm": "m"}
    bases = json.loads((WORK / "tui-workspace.json").read_text())["bases"]
    app = _snap_app()  # the state right after the example was registered and its runtimes checked

    async def go() -> None:
        async with app.run_test(size=(200, 40)) as pilot:
            await pilot.pause()
            table = app.query_one("#adapters", DataTable)
            col = COLUMNS.index("loads")  # the runtimes column
            assert str(table.ordered_columns[col].label) == "loads"
            shown: dict[str, str] = {}
            for i, row in enumerate(app.rows):
                cell = str(table.get_cell_at((i, col)))
                path = app.registry.show(row.id).revision(None).path
                base = bases.get(str(Path(path).resolve())) if path else None
                if base is None:  # never checked here (a Hub id with no local copy)
                    assert cell == "-"
                    continue
                report = check_runtimes(path, base)
                verdicts = {r.runtime: r.verdict for r in report.results}
                want = "".join(c if verdicts[rt] in (LOADS, FLAGS) else "·" for rt, c in letters.items())
                assert cell == want, (row.id, cell, report.to_json())
                shown[Path(row.id).name] = cell
            assert len(shown) >= 5 and any(c != "····" for c in shown.values())

    asyncio.run(go())


def test_the_key_layout_uses_the_base_profiles_towers(workspace: Path) -> None:
    """The detail screen's key layout groups keys by the towers the base profile found in the model, not by
    names: the towers handed to the tree are the profile's, and each key lands under its profile tower."""
    from loradoc.model.layout import address_of, parse_key
    from loradoc.model.profiles import get_profile

    bases = json.loads((WORK / "tui-workspace.json").read_text())["bases"]
    app = _snap_app()

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, CLINICAL)
            await pilot.press("enter")
            await pilot.pause()
            detail = app.screen
            assert isinstance(detail, DetailScreen)
            path = app.registry.show(detail.manifest.id).revision(None).path
            towers = get_profile(bases[str(Path(path).resolve())], allow_build=False).towers
            assert towers and detail.towers == dict(towers)
            expected: dict[str, int] = {}
            for k in detail.keys:
                tower = address_of(parse_key(k).module, towers).tower
                expected[tower] = expected.get(tower, 0) + 1
            tree = detail.query_one("#layout")
            got = {
                str(n.label).rsplit(" (", 1)[0]: int(str(n.label).rsplit("(", 1)[1][:-1]) for n in tree.root.children
            }
            assert got == expected and len(expected) >= 2

    asyncio.run(go())


def test_worker_failure_ends_in_one_error_dialog(workspace: Path) -> None:
    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, "healthy-gemma3")
            path = app.selected_path()
            assert path
            app.workspace.remember(path, "/nonexistent/base")
            try:
                await pilot.press("d")
                await settle(app, pilot)
                assert isinstance(app.screen, ErrorDialog)
                assert "next:" in app.screen.message and "Traceback" not in app.screen.message
                assert "\n" not in app.screen.message
            finally:
                app.workspace.remember(path, str(WORK / "example" / "bases" / "tiny-gemma3"))

    asyncio.run(go())


def test_command_palette_offers_every_action(workspace: Path) -> None:
    from loradoc.tui.app import ACTIONS

    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"repair")
            await pilot.pause()
            palette = app.screen
            assert type(palette).__name__ == "CommandPalette"
            names = {action for action, _, _ in ACTIONS}
            assert {"doctor", "repair", "check_load", "convert", "publish"} <= names
            bindings = {b.id for b in app.BINDINGS if hasattr(b, "id")}
            assert {"doctor", "repair", "check-load", "convert", "publish", "help"} <= bindings

    asyncio.run(go())


def test_core_imports_without_textual() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'textual' or name.startswith('textual.'):\n"
        "            raise ImportError('textual blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import loradoc.diagnose.doctor, loradoc.repair.passes, loradoc.repair.apply, loradoc.verify.checkload\n"
        "import loradoc.registry, loradoc.io.snapshot, loradoc.model.profiles, loradoc.cli\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_tui_module_does_not_import_torch() -> None:
    code = "import sys; import loradoc.tui.app; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout) is False, out.stderr


# ------------------------------------------------------------------------------------------- snapshots
def _snap_app() -> LoradocApp:
    """An app on the state right after the example was registered (other tests change the registry)."""
    for item in ("user", "registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm", "tui-workspace.json"):
        p = WORK / item
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for item in PRISTINE.iterdir():
        if item.is_dir():
            shutil.copytree(item, WORK / item.name)
        else:
            shutil.copy2(item, WORK / item.name)
    return make_app(offer_example=False)


def test_snapshot_main_screen(workspace: Path, snap_compare: Any) -> None:
    assert snap_compare(_snap_app(), terminal_size=(80, 24))


def test_snapshot_detail_screen(workspace: Path, snap_compare: Any) -> None:
    async def before(pilot: Any) -> None:
        await pilot.pause()
        select(pilot.app, "textonly-on-wrapper")
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(_snap_app(), terminal_size=(80, 24), run_before=before)


def test_snapshot_repair_plan(workspace: Path, snap_compare: Any) -> None:
    async def before(pilot: Any) -> None:
        await pilot.pause()
        select(pilot.app, "textonly-on-wrapper")
        await pilot.press("r")
        await settle(pilot.app, pilot)

    assert snap_compare(_snap_app(), terminal_size=(80, 24), run_before=before)


def test_snapshot_error_dialog(workspace: Path, snap_compare: Any) -> None:
    async def before(pilot: Any) -> None:
        await pilot.pause()
        pilot.app.push_screen(
            ErrorDialog(
                "doctor failed",
                "base '/nonexistent/base' is neither a local directory "
                "nor a shipped base id; next: pass a local snapshot directory",
            )
        )
        await pilot.pause()

    assert snap_compare(_snap_app(), terminal_size=(80, 24), run_before=before)


# ------------------------------------------------------------------------------------------- issue #13 item 7
def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (but the sqlite index, which a read may touch) with its size and mtime."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("registry.sqlite")
    }


def _label(screen: Any) -> str:
    from textual.widgets import Label

    return str(screen.query_one("#job-label", Label).content)


def test_cancel_stops_the_job_before_it_writes_or_records(workspace: Path) -> None:
    from loradoc.registry import Registry

    app = make_app(offer_example=False)
    adapter = str(WORK / "example" / "adapters" / "healthy-gemma3")
    before = _files(WORK)
    certs_before = len(Registry(WORK / "registry.sqlite").show(adapter).revision(None).certificates)
    # on a tiny base a check-load can finish before the key press lands: hold the job at its first progress
    # point until the user's cancel arrives (at most 30 s), so the test exercises the cancel, not a race
    real_reporter = app.reporter

    def held_reporter(job: str) -> Any:
        report, running = real_reporter(job), app.job

        def held(done: int, total: int, what: str = "") -> None:
            import time

            deadline = time.monotonic() + 30
            while running is not None and not running.cancel.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            report(done, total, what)

        return held

    app.reporter = held_reporter  # type: ignore[method-assign]

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, "healthy-gemma3")
            await pilot.press("l")
            await settle(app, pilot)
            assert isinstance(app.screen, ChoiceDialog)
            await pilot.press("end", "enter")  # the CPU: check-load starts (once the dialog is gone)
            for _ in range(100):
                if _label(app.screen_stack[0]).startswith("check-load"):
                    break
                await pilot.pause(0.02)
            await pilot.press("x")
            await settle(app, pilot)  # the worker ends when its thread has really stopped
            assert "check-load cancelled" in _label(app.screen_stack[0])
            assert not isinstance(app.screen, (PlanScreen, ErrorDialog))

    asyncio.run(go())  # returns once every worker thread has returned
    assert _files(WORK) == before  # no certificate, no manifest change, anywhere under the registry's dir
    after = Registry(WORK / "registry.sqlite").show(adapter).revision(None)
    assert len(after.certificates) == certs_before


def test_doctor_on_the_detail_screen_shows_progress_at_once(workspace: Path) -> None:
    from textual.widgets import ProgressBar

    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, "healthy-gemma3")
            await pilot.press("enter")
            await pilot.pause()
            detail = app.screen
            assert isinstance(detail, DetailScreen)
            # the key's action, called directly so that nothing else runs before the check: a word and an
            # indeterminate bar on the detail screen itself, before the worker has even started
            app.action_doctor()
            text = _label(detail)
            assert text in ("doctor: loading torch + transformers + peft…", "doctor: diagnosing...")
            assert detail.query_one("#job-progress", ProgressBar).total is None
            await settle(app, pilot)
            assert app.screen is detail and _label(detail) == "doctor done"
            assert app.last_result.verdict == "healthy"

    asyncio.run(go())


def _safetensors_dtypes(path: Path) -> set[str]:
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_convert_asks_for_output_and_dtype_and_confirms_an_overwrite(workspace: Path) -> None:
    from textual.widgets import Select

    app = make_app(offer_example=False)
    adapter = WORK / "example" / "adapters" / "healthy-gemma3"
    converted = WORK / "converted"
    shutil.rmtree(converted, ignore_errors=True)

    async def convert(pilot: Any, option: str, dtype: str | None = None) -> tuple[ConvertDialog, dict[str, str]]:
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        await pilot.press(option, "enter")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ConvertDialog)
        if dtype:
            dialog.query_one("#field-dtype", Select).value = dtype
        values = dialog.values()
        await pilot.click("#ok")
        await pilot.pause()
        return dialog, values

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, "healthy-gemma3")

            # a GGUF LoRA: the default output is in the registry's data dir, not in or beside the adapter
            dialog, values = await convert(pilot, "end")
            out = Path(values["out"])
            assert out == converted / "healthy-gemma3-lora.gguf"
            assert adapter not in out.parents and out.parent != adapter.parent
            assert dialog.dtypes == ("f32",)
            await settle(app, pilot)
            assert out.read_bytes()[:4] == b"GGUF"
            first = out.stat().st_ino
            m = app.registry.show(str(adapter))
            assert any(a.kind == "gguf-lora" and a.path == str(out) for a in m.revision(None).artifacts)

            # again: the output exists, so the user is asked; the new file replaces the old one whole
            await convert(pilot, "end")
            assert isinstance(app.screen, ConfirmDialog) and str(out) in app.screen.question
            await pilot.click("#yes")
            await settle(app, pilot)
            assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_ino != first
            assert [p.name for p in converted.iterdir()] == [out.name]  # no temporary left behind

            # a merged checkpoint in the dtype asked for
            dialog, values = await convert(pilot, "home", dtype="f32")
            assert values["dtype"] == "f32" and dialog.dtypes == ("bf16", "f16", "f32")
            await settle(app, pilot)
            merged = converted / "healthy-gemma3-merged"
            shards = list(merged.glob("*.safetensors"))
            assert shards and set().union(*map(_safetensors_dtypes, shards)) <= {"F32", "I64", "I32"}

    asyncio.run(go())


def test_the_detail_screen_refreshes_after_a_repair(workspace: Path) -> None:
    name = "seed-medical-qlora-e2b"
    shutil.rmtree(WORK / "example" / "adapters" / f"{name}-fixed", ignore_errors=True)
    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            select(app, name)
            await pilot.press("enter")
            await pilot.pause()
            detail = app.screen
            assert isinstance(detail, DetailScreen) and detail.manifest.revision(None).status == "repairable"
            await pilot.press("r")
            await settle(app, pilot)
            assert isinstance(app.screen, PlanScreen)
            await pilot.press("a")
            await settle(app, pilot)
            assert app.screen is detail
            rev = detail.manifest.revision(None)
            assert rev.status != "repairable" and rev.path == str(WORK / "example" / "adapters" / f"{name}-fixed")
            head = str(detail.query_one("#detail-head").content)
            assert f"status [b]{rev.status}[/b]" in head
            assert "error" not in str(detail.query_one("#findings").root.children)

    asyncio.run(go())


def test_escape_leaves_the_search_box(workspace: Path) -> None:
    app = make_app(offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            total = len(app.rows)
            table = app.query_one("#adapters", DataTable)
            await pilot.press("slash", *"clinical")
            assert app.focused is app.query_one("#search", Input)
            await pilot.press("enter")  # keeps the filter, back to the table
            assert app.focused is table and 0 < len(app.rows) < total
            await pilot.press("slash", "escape")  # clears it, back to the table
            await pilot.pause()
            assert app.focused is table and app.query_one("#search", Input).value == "" and len(app.rows) == total
            await pilot.press("q")  # a binding again, not a letter in the search box
            await pilot.pause()
            assert app.query_one("#search", Input).value == ""
        assert app.return_code == 0

    asyncio.run(go())


def test_help_and_quit_are_in_the_footer_at_80_columns(workspace: Path) -> None:
    from textual.widgets._footer import FooterKey

    app = make_app(offer_example=False)

    def visible_keys() -> set[str]:
        return {k.key for k in app.screen.query(FooterKey) if k.region.width and k.region.right <= 80}

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert {"f1", "q", "d"} <= visible_keys()
            select(app, "healthy-gemma3")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, DetailScreen)
            assert {"f1", "q", "escape"} <= visible_keys()

    asyncio.run(go())


def test_adapter_ids_are_whole_when_they_fit(workspace: Path) -> None:
    hub_id = "Shubh-0789/gemma4-clinical-endpoint-extractor"

    async def go() -> tuple[str, str]:
        app = make_app(offer_example=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            narrow = str(app.query_one("#adapters", DataTable).get_row(hub_id)[0])
            await pilot.resize_terminal(120, 24)
            await pilot.pause()
            await pilot.pause()
            return narrow, str(app.query_one("#adapters", DataTable).get_row(hub_id)[0])

    narrow, wide = asyncio.run(go())
    assert wide == hub_id
    # the owner goes first (at 80 columns, beside the runtimes column, the name alone does not fit either)
    assert narrow.startswith("…/gemma4-clinic") and len(narrow) < len(hub_id)

    from loradoc.tui.table import clip_id

    assert clip_id(hub_id, 60) == hub_id
    assert clip_id(hub_id, 40) == "…" + hub_id[-39:] == "…0789/gemma4-clinical-endpoint-extractor"
    assert clip_id(hub_id, 20) == "…/gemma4-clinical-e…"
    assert clip_id("seed-clinical-endpoint-extractor", 20) == "seed-clinical-endpo…"


@pytest.mark.parametrize("kind", ["not-sqlite", "directory"])
def test_a_corrupt_registry_is_one_error_screen_then_exit_2(kind: str, tmp_path: Path) -> None:
    """In the app: an error screen naming the next step, then exit code 2. From the CLI (`loradoc tui`): one line
    on stderr, exit 2, before any screen is drawn."""
    bad = tmp_path / "registry.sqlite"
    if kind == "directory":
        bad.mkdir()
    else:
        bad.write_text("not a database " * 200)
    app = LoradocApp(bad, example_dir=tmp_path / "example", offer_example=False)

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, ErrorDialog)
            assert "next:" in app.screen.message and "\n" not in app.screen.message
            await pilot.press("escape")
            await pilot.pause()

    asyncio.run(go())
    assert app.return_code == 2 and app.startup_error is not None
    proc = subprocess.run(
        [sys.executable, "-c", "from loradoc.cli import main; main()", "tui", "--registry", str(bad)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "next:" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
