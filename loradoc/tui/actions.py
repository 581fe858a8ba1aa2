"""The app's actions on the selected adapter (doctor, repair, check-load, convert, publish): each asks what it needs,
then starts a worker that runs the same workflow as the CLI (:mod:`loradoc.tui.jobs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradoc.tui import jobs
from loradoc.tui.jobs import JobDone
from loradoc.tui.screens import (
    ChoiceDialog,
    ConfirmDialog,
    ConvertDialog,
    DetailScreen,
    InputDialog,
    PlanScreen,
    certificate_text,
    publish_plan_text,
    repair_plan_text,
)


class AdapterActions:
    """Mixed into :class:`loradoc.tui.app.LoradocApp`: ``start``, ``selected_path``, ``with_base`` ... are the app's."""

    def action_open_detail(self) -> None:
        r = self.selected()
        if r is None:
            return
        self.push_screen(DetailScreen(*self.detail_data(r.id)))

    def action_doctor(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def job() -> None:
                d = jobs.run_doctor(path, base, self.worker_registry(), self.reporter("doctor"))
                self.post_message(JobDone("doctor", d))
                self.notify(f"doctor: {d.verdict}")

            # importing torch + transformers + peft takes seconds: an indeterminate bar and a word, at once
            self.start("doctor", job, status=jobs.status_text("doctor", "diagnosing..."))

        self.with_base(path, go)

    def action_repair(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def job() -> None:
                planned = jobs.plan_repair(path, base)
                self.checkpoint()
                self.call_from_thread(self._show_repair_plan, planned, path, base)

            self.start("repair plan", job)

        self.with_base(path, go)

    def _show_repair_plan(self, planned: Any, path: str, base: str) -> None:
        out = Path(path).with_name(Path(path).name + "-fixed")
        plan = planned.plan

        def decided(apply: bool | None) -> None:
            if not apply:
                self.notify("repair not applied")
                return

            def job() -> None:
                result = jobs.apply_repair(planned, out, self.worker_registry(), self.reporter("repair"))
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
                self.checkpoint()
                self.call_from_thread(self._pick_device, options, path, base)

            self.start("devices", devices, status=jobs.status_text("devices", "listing..."))

        self.with_base(path, go)

    def _pick_device(self, options: list[tuple[str, str]], path: str, base: str) -> None:
        def picked(device: str | None) -> None:
            if not device:
                return

            def job() -> None:
                cert = jobs.run_check_load(path, base, device, self.worker_registry(), self.reporter("check-load"))
                self.post_message(JobDone("check-load", cert))
                self.call_from_thread(
                    self.push_screen,
                    PlanScreen(
                        "Load certificate: " + ("PASSED" if cert.passed else "FAILED"),
                        certificate_text(cert),
                        apply_label="OK",
                    ),
                )

            self.start("check-load", job, status=jobs.status_text("check-load", "starting..."))

        self.push_screen(ChoiceDialog("Device", options), picked)

    def action_convert(self) -> None:
        path = self.selected_path()
        if path is None:
            return

        def go(base: str) -> None:
            def kind_picked(kind: str | None) -> None:
                if not kind:
                    return
                default = jobs.default_convert_out(kind, path, self.registry.path.parent)
                self.push_screen(
                    ConvertDialog(kind, str(default), jobs.CONVERSIONS[kind][1]),
                    lambda values: self._convert_asked(kind, path, base, values),
                )

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

    def _convert_asked(self, kind: str, path: str, base: str, values: dict[str, str] | None) -> None:
        if not values or not values.get("out"):
            return
        out = Path(values["out"]).expanduser()
        dtype = values.get("dtype") or jobs.CONVERSIONS[kind][1][0]
        adapter_dir = Path(path).resolve()
        if out.resolve() == adapter_dir or adapter_dir in out.resolve().parents:
            self.notify(f"{out} is inside the adapter; choose another output path", severity="error")
            return

        def run(overwrite: bool) -> None:
            def job() -> None:
                result = jobs.run_convert(
                    kind,
                    path,
                    base,
                    out,
                    self.worker_registry(),
                    self.reporter(f"convert {kind}"),
                    dtype=dtype,
                    overwrite=overwrite,
                )
                self.post_message(JobDone("convert", result))
                self.notify(f"wrote {out}")

            self.start(f"convert {kind}", job, status=jobs.status_text(f"convert {kind}", "starting..."))

        if out.exists():

            def confirmed(yes: bool | None) -> None:
                if yes:
                    run(True)

            kind_of = "directory" if out.is_dir() else "file"
            self.push_screen(
                ConfirmDialog(
                    f"{out} exists. Replace it? (the new {kind_of} is written first, then swapped in)",
                    yes="Replace",
                ),
                confirmed,
            )
        else:
            run(False)

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
                self.checkpoint()
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
                result = jobs.run_publish(plan, endpoint, self.worker_registry(), self.reporter("publish"))
                self.post_message(JobDone("publish", result))
                self.notify(f"pushed {result.commit_sha[:12]}")

            self.start("publish", job)

        self.push_screen(PlanScreen(f"Publish to {plan.repo_id}", body, apply_label="Push"), decided)
