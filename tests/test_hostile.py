"""Hostile and malformed input, through every entry point, as a careless user or an attacker would give it.

Each case builds its inputs in a folder of its own and runs the real ``loradoc`` in a child process under a memory
limit and a time limit. Every case must: exit with the expected code; say exactly one line on stderr that starts
with ``error:`` and names a ``next:`` step (exit 2 / 3), or, for garbage that parses, report a verdict that is not
healthy (exit 1); print no traceback; leave every input byte-identical (symlinks still symlinks); and leave no
output behind. The figures (cases, one-line errors, worst peak memory and time) are printed at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loradoc.demo.builder import ExampleSet

pytestmark = pytest.mark.slow

MEMORY_LIMIT = 8 * 2**30  # address space of each child
TIME_LIMIT = 180.0  # seconds per case (the slowest legitimate case imports torch + transformers + peft)
PEAK_RSS_LIMIT_MB = 3000


@dataclass
class Case:
    name: str
    build: Callable[[Path, World], list[str]]  # makes the inputs under the folder, returns the argv
    code: int = 2
    contains: str = ""  # a word the error line must hold
    outputs: list[str] = field(default_factory=list)  # paths (relative to the case folder) that must not appear
    judge: Callable[[Path], int] | None = None  # the expected code, computed by the real library from the inputs


@dataclass
class World:
    adapter: Path  # a healthy text adapter
    base: Path  # its tiny base (weights + config + tokenizer)
    tmp: Path


# ---------------------------------------------------------------------------------------------------------
# building blocks


def _adapter(d: Path, w: World, name: str = "a") -> Path:
    dst = d / name
    shutil.copytree(w.adapter, dst)
    return dst


def _base(d: Path, w: World, name: str = "b") -> Path:
    dst = d / name
    shutil.copytree(w.base, dst)
    return dst


def _edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


_DROP = object()


def _config_case(**changes: object) -> Callable[[Path, World], list[str]]:
    def build(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        _edit_config(a / "adapter_config.json", **changes)
        return ["doctor", str(a), "--base", str(w.base), "--json"]

    return build


def _raw_config_case(text: bytes, fast: bool = False) -> Callable[[Path, World], list[str]]:
    def build(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_config.json").write_bytes(text)
        return ["doctor", str(a), "--base", str(w.base)] + (["--fast"] if fast else [])

    return build


def _weights_case(make: Callable[[bytes], bytes], command: str = "doctor") -> Callable[[Path, World], list[str]]:
    """Rewrite adapter_model.safetensors from its real bytes."""

    def build(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        f = a / "adapter_model.safetensors"
        f.write_bytes(make(f.read_bytes()))
        if command == "repair":
            return ["repair", str(a), "--base", str(w.base), "--out", str(d / "out")]
        if command == "gguf-lora":
            return ["convert", "gguf-lora", str(a), "--base", str(w.base), "--out", str(d / "out.gguf")]
        return ["doctor", str(a), "--base", str(w.base)]

    return build


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _shift_first(delta: int) -> Callable[[bytes], bytes]:
    """Move the first tensor's end (a gap when < 0 ... an overlap with the next one when > 0)."""

    def make(raw: bytes) -> bytes:
        header, data = _split(raw)
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        if delta < 0:  # a gap: every later tensor moves up by 16 bytes
            for k in names[1:]:
                s, e = header[k]["data_offsets"]
                header[k]["data_offsets"] = [s + 16, e + 16]
            s0, e0 = a["data_offsets"]
            data = data[:e0] + b"\0" * 16 + data[e0:]
        else:  # an overlap: the second tensor starts 4 bytes early
            s, e = b["data_offsets"]
            b["data_offsets"] = [s - 4, e - 4]
        return _join(header, data)

    return make


def _header_edit(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def make(raw: bytes) -> bytes:
        header, data = _split(raw)
        edit(header)
        return _join(header, data)

    return make


def _base_config_case(command: str = "doctor", **changes: object) -> Callable[[Path, World], list[str]]:
    def build(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        _edit_config(b / "config.json", **changes)
        if command == "check-load":
            return ["check-load", str(w.adapter), "--base", str(b), "--certificate", str(d / "cert.json")]
        return ["doctor", str(w.adapter), "--base", str(b)]

    return build


def _out_case(kind: str, where: Callable[[Path, Path, Path], Path], extra: list[str] | None = None):
    """An output path that is (or lies in) an input; ``where(case_dir, adapter, base)``."""

    def build(d: Path, w: World) -> list[str]:
        a, b = _adapter(d, w), _base(d, w)
        out = where(d, a, b)
        if kind == "repair":
            return ["repair", str(a), "--base", str(b), "--out", str(out), *(extra or [])]
        if kind == "check-load":
            return ["check-load", str(a), "--base", str(b), "--certificate", str(out), *(extra or [])]
        if kind == "merged":
            return ["convert", "merged", str(a), "--base", str(b), "--out", str(out), *(extra or [])]
        return ["convert", kind, str(a), "--base", str(b), "--out", str(out), *(extra or [])]

    return build


def _safetensors_judge(d: Path) -> int:
    """What the safetensors library itself says of the adapter file: it refuses it (2), or reads every tensor (0:
    the adapter is then as healthy as the original)."""
    from safetensors import safe_open

    try:
        with safe_open(str(d / "a" / "adapter_model.safetensors"), "np") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is no dict
                f.get_tensor(k)
    except Exception:  # noqa: BLE001 - any refusal
        return 2
    return 0


def _pickle_payload(d: Path) -> bytes:
    """A pickle that would create a file if it were ever unpickled."""
    import pickle

    marker = d / "PWNED"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (open, (str(marker), "w"))

    return pickle.dumps({"x": Evil()})


def _argv(*args: str) -> Callable[[Path, World], list[str]]:
    """argv with {A} the adapter, {B} the base, {D} the case folder, {R} a registry index outside it (an output)."""

    def build(d: Path, w: World) -> list[str]:
        reg = w.tmp / "registries" / d.name / "registry.sqlite"
        subs = {"{A}": str(w.adapter), "{B}": str(w.base), "{D}": str(d), "{R}": str(reg)}
        out = []
        for a in args:
            for k, v in subs.items():
                a = a.replace(k, v)
            out.append(a)
        return out

    return build


# ---------------------------------------------------------------------------------------------------------
# the corpus


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # -- the adapter directory
    add(Case("adapter-missing", _argv("doctor", "{D}/nope", "--base", "{B}"), contains="not found"))
    add(
        Case(
            "adapter-is-a-file",
            lambda d, w: (d / "f").write_text("x") and ["doctor", str(d / "f"), "--base", str(w.base)],
        )
    )

    def no_config(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_config.json").unlink()
        return ["doctor", str(a), "--base", str(w.base)]

    add(Case("no-adapter-config", no_config, contains="adapter_config.json"))

    def no_weights(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_model.safetensors").unlink()
        return ["doctor", str(a), "--base", str(w.base)]

    add(Case("no-weights", no_weights))

    def weights_dir(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_model.safetensors").unlink()
        (a / "adapter_model.safetensors").mkdir()
        return ["doctor", str(a), "--base", str(w.base)]

    add(Case("weights-are-a-directory", weights_dir))

    def dangling(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_model.safetensors").unlink()
        (a / "adapter_model.safetensors").symlink_to(d / "gone.safetensors")
        return ["doctor", str(a), "--base", str(w.base)]

    add(Case("weights-dangling-symlink", dangling))
    # -- adapter_config.json
    add(Case("config-not-json", _raw_config_case(b"{peft_type: LORA")))
    add(Case("config-empty", _raw_config_case(b"")))
    add(Case("config-array", _raw_config_case(b"[1, 2]")))
    add(Case("config-not-utf8", _raw_config_case(b'{"peft_type": "LORA\xff\xfe"}')))
    add(Case("config-not-json-fast", _raw_config_case(b"nope", fast=True)))
    add(Case("config-huge-number", _raw_config_case(b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}")))
    add(
        Case(
            "config-deep-nesting",
            _raw_config_case(b'{"peft_type": "LORA", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
        )
    )
    add(Case("peft-type-missing", _config_case(peft_type=_DROP)))
    add(Case("peft-type-lowercase", _config_case(peft_type="lora"), code=1))
    add(Case("peft-type-unknown", _config_case(peft_type="NOT_A_METHOD")))
    add(Case("peft-type-number", _config_case(peft_type=7)))
    add(Case("r-zero", _config_case(r=0), code=1))
    add(Case("r-negative", _config_case(r=-4), code=1))
    add(Case("r-string", _config_case(r="8")))
    add(Case("r-float", _config_case(r=8.5)))
    add(Case("alpha-zero", _config_case(lora_alpha=0), code=1))
    add(Case("alpha-negative", _config_case(lora_alpha=-16), code=1))
    add(Case("alpha-nan", _raw_config_case_json("lora_alpha", "NaN"), code=1))
    add(Case("alpha-inf", _raw_config_case_json("lora_alpha", "Infinity"), code=1))
    add(Case("alpha-string", _config_case(lora_alpha="sixteen")))
    add(Case("targets-number", _config_case(target_modules=5)))
    add(Case("targets-catastrophic-regex", _config_case(target_modules="(.*.*)*x$"), code=1))
    add(Case("targets-catastrophic-regex-fast", _fast(_config_case(target_modules="(.*.*)*x$")), code=1))
    add(Case("targets-invalid-regex", _config_case(target_modules="(["), code=1))
    add(Case("exclude-catastrophic-regex", _config_case(exclude_modules="(a|aa)*c$"), code=1))
    add(Case("targets-100k-list", _config_case(target_modules=[f"m{i}" for i in range(100_000)])))
    add(Case("targets-1mb-string", _config_case(target_modules="q" * 2**20)))
    add(Case("rank-pattern-zero", _config_case(rank_pattern={"q_proj": 0}), code=1))
    add(Case("alpha-pattern-nan", _raw_config_case_json("alpha_pattern", '{"q_proj": NaN}'), code=1))
    add(Case("modules-to-save-number", _config_case(modules_to_save=3)))
    # -- adapter_model.safetensors
    add(Case("weights-empty", _weights_case(lambda raw: b"")))
    add(Case("weights-7-bytes", _weights_case(lambda raw: raw[:7])))
    add(Case("weights-header-length-huge", _weights_case(lambda raw: struct.pack("<Q", 2**63) + raw[8:])))
    add(Case("weights-header-length-past-end", _weights_case(lambda raw: struct.pack("<Q", len(raw)) + raw[8:])))
    add(Case("weights-header-not-json", _weights_case(lambda raw: struct.pack("<Q", 8) + b"not json" + raw[8:])))
    add(Case("weights-header-array", _weights_case(lambda raw: _join_raw(b"[1,2,3]"))))
    add(Case("weights-truncated", _weights_case(lambda raw: raw[: len(raw) - 100])))
    add(Case("weights-truncated-repair", _weights_case(lambda raw: raw[: len(raw) - 100], "repair"), outputs=["out"]))
    add(Case("weights-trailing-bytes", _weights_case(lambda raw: raw + b"\0" * 64), judge=_safetensors_judge))
    add(Case("weights-gap", _weights_case(_shift_first(-16)), judge=_safetensors_judge))
    add(Case("weights-overlap", _weights_case(_shift_first(+4)), judge=_safetensors_judge))
    add(Case("weights-unknown-dtype", _weights_case(_header_edit(lambda h: h[_first(h)].update(dtype="Q9")))))
    add(Case("weights-negative-shape", _weights_case(_header_edit(lambda h: h[_first(h)].update(shape=[-1, 4])))))
    add(Case("weights-shape-mismatch", _weights_case(_header_edit(lambda h: h[_first(h)].update(shape=[3, 3])))))
    add(
        Case(
            "weights-24gib-tensor",
            _weights_case(_header_edit(lambda h: h[_first(h)].update(shape=[3 * 2**30, 2], dtype="F32"))),
        )
    )
    add(Case("weights-metadata-not-strings", _weights_case(_header_edit(lambda h: h.update(__metadata__={"a": 1})))))
    add(Case("weights-gguf-lora-truncated", _weights_case(lambda raw: raw[:-50], "gguf-lora"), outputs=["out.gguf"]))

    def pickle_only(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        (a / "adapter_model.safetensors").unlink()
        (a / "adapter_model.bin").write_bytes(_pickle_payload(d))
        return ["doctor", str(a), "--base", str(w.base)]

    add(Case("pickle-without-consent", pickle_only, contains="pickle"))

    def pickle_evil(d: Path, w: World) -> list[str]:
        return [*pickle_only(d, w), "--allow-pickle"]

    add(Case("pickle-malicious-with-consent", pickle_evil, outputs=["PWNED"]))
    # -- the base
    add(Case("base-missing", _argv("doctor", "{A}", "--base", "{D}/nobase"), contains="base"))
    add(Case("base-unknown-id", _argv("doctor", "{A}", "--base", "nobody/nothing", "--fast")))

    def base_no_config(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        (b / "config.json").unlink()
        return ["doctor", str(w.adapter), "--base", str(b)]

    add(Case("base-no-config", base_no_config, contains="config.json"))

    def base_config_garbage(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        (b / "config.json").write_text("{nope")
        return ["doctor", str(w.adapter), "--base", str(b)]

    add(Case("base-config-not-json", base_config_garbage))

    def base_config_huge_int(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        text = (b / "config.json").read_text()
        (b / "config.json").write_text(text.replace('"vocab_size":', '"vocab_size": 1' + "0" * 5000 + ', "x":', 1))
        return ["doctor", str(w.adapter), "--base", str(b)]

    add(Case("base-config-huge-int", base_config_huge_int))
    add(Case("base-architectures-number", _base_config_case(architectures=5), contains="architectures"))
    add(Case("base-architectures-list-of-number", _base_config_case(architectures=[5]), contains="architectures"))
    add(Case("base-architectures-empty", _base_config_case(architectures=[]), contains="architectures"))
    add(Case("base-architectures-unknown", _base_config_case(architectures=["NoSuchModelForCausalLM"])))
    add(Case("base-hidden-size-string", _base_config_case(hidden_size="64"), contains="hidden_size"))
    add(Case("base-100k-layers", _base_config_case(num_hidden_layers=100_000), contains="num_hidden_layers"))
    add(Case("base-negative-layers", _base_config_case(num_hidden_layers=-1), contains="num_hidden_layers"))
    add(Case("base-layer-types-short", _base_config_case(layer_types=["full_attention"]), contains="layer_types"))
    add(Case("base-model-type-unknown", _base_config_case(model_type="no_such_type")))

    def base_truncated(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        f = b / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-1000])
        return ["check-load", str(w.adapter), "--base", str(b), "--certificate", str(d / "cert.json")]

    add(Case("check-load-truncated-base", base_truncated, outputs=["cert.json"]))
    add(Case("check-load-shipped-id", _argv("check-load", "{A}", "--base", "google/gemma-4-E2B-it")))

    def base_nan(d: Path, w: World) -> list[str]:
        b = _base(d, w)
        f = b / "model.safetensors"
        header, data = _split(f.read_bytes())
        name = "model.norm.weight"
        s, e = header[name]["data_offsets"]
        nan = struct.pack("<f", math.nan) if header[name]["dtype"] == "F32" else b"\xc0\x7f"
        data = data[:s] + nan + data[s + len(nan) :]
        f.write_bytes(_join(header, data))
        return ["convert", "merged", str(w.adapter), "--base", str(b), "--out", str(d / "merged")]

    add(Case("merge-base-with-nan", base_nan, contains="NaN", outputs=["merged"]))
    # -- outputs that are inputs, or exist
    add(Case("gguf-lora-over-base-weights", _out_case("gguf-lora", lambda d, a, b: b / "model.safetensors")))
    add(Case("gguf-lora-over-adapter-config", _out_case("gguf-lora", lambda d, a, b: a / "adapter_config.json")))
    add(Case("gguf-over-base-config", _out_case("gguf", lambda d, a, b: b / "config.json")))
    add(Case("gguf-into-base-dir", _out_case("gguf", lambda d, a, b: b / "new.gguf")))
    add(
        Case(
            "certificate-over-adapter-weights", _out_case("check-load", lambda d, a, b: a / "adapter_model.safetensors")
        )
    )
    add(Case("merged-into-adapter", _out_case("merged", lambda d, a, b: a / "merged")))
    add(Case("merged-over-base", _out_case("merged", lambda d, a, b: b)))
    add(Case("repair-over-adapter", _out_case("repair", lambda d, a, b: a)))
    add(Case("repair-around-adapter", _out_case("repair", lambda d, a, b: d)))

    def existing(d: Path, a: Path, b: Path) -> Path:
        (d / "existing.gguf").write_text("someone else's file")
        return d / "existing.gguf"

    add(Case("gguf-lora-over-existing-file", _out_case("gguf-lora", existing), contains="--overwrite"))

    def out_parent_file(d: Path, a: Path, b: Path) -> Path:
        (d / "plainfile").write_text("x")
        return d / "plainfile" / "out"

    add(Case("out-parent-is-a-file", _out_case("repair", out_parent_file)))
    # -- the registry
    add(Case("registry-show-unknown", _argv("registry", "show", "nobody/nothing", "--registry", "{R}")))
    add(
        Case(
            "registry-is-a-directory",
            lambda d, w: (d / "rdir").mkdir() or ["registry", "list", "--registry", str(d / "rdir")],
        )
    )
    add(
        Case(
            "registry-not-sqlite",
            lambda d, w: (
                (d / "r.sqlite").write_text("text " * 100) and ["registry", "list", "--registry", str(d / "r.sqlite")]
            ),
        )
    )
    add(Case("registry-list-bad-status", _argv("registry", "list", "--status", "bogus", "--registry", "{R}")))
    add(Case("registry-add-missing", _argv("registry", "add", "{D}/nope", "--base", "{B}", "--registry", "{R}")))
    add(Case("registry-compat-unknown", _argv("registry", "compat", "nobody/x", "--registry", "{R}")))
    add(
        Case(
            "tui-registry-not-sqlite",
            lambda d, w: (d / "t.sqlite").write_text("text " * 100) and ["tui", "--registry", str(d / "t.sqlite")],
        )
    )
    add(Case("tui-registry-directory", lambda d, w: (d / "tdir").mkdir() or ["tui", "--registry", str(d / "tdir")]))
    # -- the Hub (port 9: nothing listens there)
    add(Case("pull-unreachable", _argv("pull", "org/name", "--endpoint", "http://127.0.0.1:9", "--no-record"), code=3))
    add(Case("pull-bad-repo-id", _argv("pull", "../../etc", "--endpoint", "http://127.0.0.1:9", "--no-record")))
    add(
        Case(
            "doctor-repo-unreachable",
            _argv("doctor", "org/name@main", "--base", "{B}", "--endpoint", "http://127.0.0.1:9"),
            code=3,
        )
    )
    add(
        Case(
            "pull-offline-not-cached",
            _argv("pull", "org/name", "--endpoint", "http://127.0.0.1:9", "--offline", "--no-record"),
        )
    )

    def publish_uncertified(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        return ["publish", str(a), "--repo", "org/name", "--endpoint", "http://127.0.0.1:9", "--plan"]

    add(Case("publish-without-certificate", publish_uncertified))
    # -- usage
    add(Case("usage-missing-adapter", _argv("doctor")))
    add(Case("usage-unknown-option", _argv("doctor", "{A}", "--bogus")))
    add(Case("usage-unknown-command", _argv("frobnicate")))
    add(
        Case(
            "usage-bad-choice",
            _argv("convert", "gguf", "{A}", "--base", "{B}", "--out", "{D}/x.gguf", "--outtype", "q1"),
        )
    )
    add(Case("usage-unknown-pass", _argv("repair", "{A}", "--base", "{B}", "--only", "no-such-pass", "--plan")))
    add(
        Case(
            "usage-bad-shard-size",
            _argv("convert", "merged", "{A}", "--base", "{B}", "--out", "{D}/m", "--shard-size", "lots"),
        )
    )
    add(Case("usage-repair-without-out", _argv("repair", "{A}", "--base", "{B}")))
    return c


def _raw_config_case_json(key: str, literal: str) -> Callable[[Path, World], list[str]]:
    """Set ``key`` to a raw JSON literal Python's json would write (NaN, Infinity) or any snippet."""

    def build(d: Path, w: World) -> list[str]:
        a = _adapter(d, w)
        cfg = json.loads((a / "adapter_config.json").read_text())
        cfg[key] = "__RAW__"
        (a / "adapter_config.json").write_text(json.dumps(cfg).replace('"__RAW__"', literal))
        return ["doctor", str(a), "--base", str(w.base), "--json"]

    return build


def _fast(build: Callable[[Path, World], list[str]]) -> Callable[[Path, World], list[str]]:
    def wrapped(d: Path, w: World) -> list[str]:
        argv = build(d, w)
        i = argv.index("--base")
        return [*argv[: i + 1], "google/gemma-4-E2B-it", *argv[i + 2 :], "--fast"]

    return wrapped


def _join_raw(header: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


CASES = _cases()


# ---------------------------------------------------------------------------------------------------------
# the runner


def _snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under ``root``: (kind, content hash or link target)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", hashlib.file_digest(fh, "sha256").hexdigest())
    return out


_CHILD = (
    "import resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
    "from loradoc.cli import main\n"
    "main(sys.argv[1:])\n"
)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float


def run_child(argv: list[str], env: dict[str, str], cwd: Path) -> Outcome:
    """Run one case; its own peak RSS comes from wait4 (the kernel's accounting of that child alone)."""
    import threading

    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        text=True,
    )
    streams: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda k=k, f=f: streams.__setitem__(k, f.read()), daemon=True)
        for k, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for t in readers:
        t.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > TIME_LIMIT:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            for t in readers:
                t.join(5)
            pytest.fail(f"hang: killed after {TIME_LIMIT:.0f} s: loradoc {' '.join(argv)}\n{streams.get('err', '')}")
        time.sleep(0.05)
    for t in readers:
        t.join(30)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(
        proc.returncode, streams.get("out", ""), streams.get("err", ""), time.monotonic() - t0, usage.ru_maxrss / 1024
    )


@pytest.fixture(scope="module")
def world(example_root: ExampleSet, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(
        adapter=example_root.adapters["healthy-gemma4-text"],
        base=example_root.bases["tiny-gemma4-text"],
        tmp=tmp_path_factory.mktemp("hostile"),
    )


@pytest.fixture(scope="module")
def env(world: World) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "LORADOC_"))}
    e.update(
        LORADOC_CACHE_DIR=str(world.tmp / "cache"),  # shared: profiles are built once, not per case
        LORADOC_REGISTRY=str(world.tmp / "registry" / "registry.sqlite"),
        HF_HOME=str(world.tmp / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return e


FIGURES: dict[str, Outcome] = {}


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, world: World, env: dict[str, str]) -> None:
    d = world.tmp / "cases" / case.name
    d.mkdir(parents=True)
    argv = case.build(d, world)
    expected = case.judge(d) if case.judge is not None else case.code
    before = _snapshot(d)
    shared_before = {str(p): _snapshot(p) for p in (world.adapter, world.base)}
    got = run_child(argv, env, d)
    FIGURES[case.name] = got
    where = f"loradoc {' '.join(argv)}"
    assert "Traceback" not in got.stderr and "Traceback" not in got.stdout, f"{where}\n{got.stderr}"
    assert got.code == expected, f"{where}: exit {got.code}, expected {expected}\n{got.stderr}\n{got.stdout[-800:]}"
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    if expected == 1:  # garbage that parses: a verdict, never "healthy"
        assert "healthy" not in _verdict(got.stdout), f"{where}: called healthy\n{got.stdout[-800:]}"
    elif expected == 0:  # the library reads it as it is: so does loradoc, and nothing is wrong with it
        assert "healthy" in _verdict(got.stdout) and not lines, f"{where}: {got.stderr}"
    else:
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and "next:" in errors[0], f"{where}: {got.stderr}"
        assert len(lines) == 1 or case.name.startswith("tui-"), f"{where}: more than one line\n{got.stderr}"
        if case.contains:
            assert case.contains.lower() in errors[0].lower(), f"{where}: {errors[0]}"
    assert _snapshot(d) == before, f"{where}: the case folder changed (an input modified or an output left)"
    assert {str(p): _snapshot(p) for p in (world.adapter, world.base)} == shared_before
    for rel in case.outputs:
        assert not (d / rel).exists(), f"{where}: {rel} exists"
    assert got.peak_mb < PEAK_RSS_LIMIT_MB, f"{where}: peak {got.peak_mb:.0f} MB"


def _verdict(stdout: str) -> str:
    try:
        return str(json.loads(stdout).get("verdict"))
    except (ValueError, AttributeError):
        hit = [ln for ln in stdout.splitlines() if ln.startswith("verdict:")]
        return hit[-1] if hit else ""


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request: pytest.FixtureRequest):  # noqa: ANN202
    """The corpus figures for the closing note, printed once the module's cases have run."""
    yield
    if not FIGURES:
        return
    worst_t = max(FIGURES.items(), key=lambda kv: kv[1].seconds)
    worst_m = max(FIGURES.items(), key=lambda kv: kv[1].peak_mb)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (
        f"hostile corpus: {len(FIGURES)} cases run, "
        f"{sum(1 for o in FIGURES.values() if o.code == 2)} one-line bad-input errors, "
        f"{sum(1 for o in FIGURES.values() if o.code == 1)} not-healthy verdicts, "
        f"{sum(1 for o in FIGURES.values() if o.code == 3)} environment errors; "
        f"slowest {worst_t[0]} {worst_t[1].seconds:.1f} s; worst peak RSS {worst_m[0]} {worst_m[1].peak_mb:.0f} MB "
        f"(smallest {min(o.peak_mb for o in FIGURES.values()):.0f} MB: a child's peak includes the test process it "
        "was forked from)"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
