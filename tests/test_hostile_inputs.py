"""Hostile inputs (issue #14): every one ends quickly, in exit 2 with one line or in a not-healthy verdict.

Regexes with catastrophic backtracking, sizes no real model has, garbage scalings, peft_type spellings peft
refuses, base config fields of the wrong type, and safetensors layouts the safetensors library refuses. The runs
that could hang go through a subprocess with a timeout; the header parser is fuzzed against the real
safetensors library.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoc.cli import main
from loradoc.demo.builder import build_example
from loradoc.errors import LoradocError
from loradoc.io.regex_guard import RegexProblem, vet
from loradoc.io.safetensors import parse_header_bytes

ADAPTER = "healthy-gemma4-text"
BASE = "tiny-gemma4-text"
EVIL = "(.*.*)*x$"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory):
    built = build_example(tmp_path_factory.mktemp("hostile"), names=[ADAPTER])
    from loradoc.model.profiles import get_profile

    get_profile(str(built.bases[BASE]))  # cached, so --fast works (LORADOC_CACHE_DIR is the test cache)
    return built


def _adapter(ex, tmp: Path, *, update: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    dst = tmp / "adapter"
    shutil.copytree(ex.adapters[ADAPTER], dst)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in drop:
        cfg.pop(k, None)
    cfg.update(update or {})
    cfg_path.write_text(json.dumps(cfg))  # allow_nan: NaN / Infinity as Python's json (and peft's) read them
    return dst


def _base(ex, tmp: Path, edit) -> Path:
    dst = tmp / "base"
    shutil.copytree(ex.bases[BASE], dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def run_sub(args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process; a hang fails the test at ``timeout`` instead of hanging the suite."""
    e = {**os.environ, "PYTHONPATH": str(REPO), "LORADOC_REGEX_BUDGET_S": "2", **env}
    return subprocess.run(
        [sys.executable, "-c", "from loradoc.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        check=False,
    )


def _one_line_exit2(code: int, err: str) -> str:
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and "next:" in lines[0], err
    return lines[0]


def _codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] == "error"}


# -- 1. regexes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
@pytest.mark.parametrize("fast", [True, False])
def test_catastrophic_regex_is_reported_not_run(ex, tmp_path: Path, field: str, fast: bool) -> None:
    adapter = _adapter(ex, tmp_path, update={field: EVIL})
    t0 = time.monotonic()
    proc = run_sub(
        ["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", *(["--fast"] if fast else [])], 120
    )
    assert time.monotonic() - t0 < 120
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "broken"
    assert "regex-too-expensive" in _codes(report)
    (finding,) = [f for f in report["findings"] if f["code"] == "regex-too-expensive"]
    assert f"{field} regex" in finding["message"] and "too expensive to evaluate" in finding["message"]
    assert report["peft"]["error"].startswith("regex-too-expensive")  # peft's dry load never ran it


def test_catastrophic_regex_in_rank_pattern(ex, tmp_path: Path) -> None:
    adapter = _adapter(ex, tmp_path, update={"rank_pattern": {EVIL: 4}})
    proc = run_sub(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", "--fast"], 60)
    assert proc.returncode == 1, proc.stderr
    assert "regex-too-expensive" in _codes(json.loads(proc.stdout))


def test_rank_pattern_with_more_keys_than_re_caches(ex, tmp_path: Path) -> None:
    """5,000 keys: peft's get_pattern_key would recompile each one for each targeted module (minutes)."""
    keys = {f"model.layers.{i}.nothing_{i}": 4 for i in range(5000)}
    adapter = _adapter(ex, tmp_path, update={"rank_pattern": keys})
    proc = run_sub(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", "--fast"], 60)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert "regex-too-expensive" in _codes(report) and "rank_pattern" in json.dumps(report["findings"])


@pytest.mark.parametrize(("fast", "n"), [(True, 10_000), (False, 2_000)])
def test_large_target_list_under_the_cap_is_quick(ex, tmp_path: Path, fast: bool, n: int) -> None:
    """The static rules match a list by set lookups. (The full doctor runs peft's own injection, whose
    _find_minimal_target_modules is quadratic in the list: ~45 s for 10,000 entries, as in a real load.)"""
    targets = ["q_proj", "v_proj"] + [f"not_a_module_{i}" for i in range(n - 2)]
    adapter = _adapter(ex, tmp_path, update={"target_modules": targets})
    t0 = time.monotonic()
    proc = run_sub(
        ["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", *(["--fast"] if fast else [])], 120
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["verdict"] in ("healthy", "repairable", "broken")
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("fast", [True, False])
def test_invalid_regex_is_the_error_peft_raises(ex, tmp_path: Path, fast: bool, capsys) -> None:
    adapter = _adapter(ex, tmp_path, update={"target_modules": "(q_proj"})
    code, out, err = run_cli(
        ["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", *(["--fast"] if fast else [])], capsys
    )
    assert code == 1, err
    report = json.loads(out)
    assert report["verdict"] == "broken" and "peft-load-error" in _codes(report)
    assert "missing ), unterminated subpattern" in report["peft"]["error"]


def test_a_regex_that_is_fast_on_these_names_but_exponential_is_still_reported(ex, tmp_path: Path) -> None:
    """(a|aa)*c$ finishes on the tiny base's names, but not on a run of a's: another base could hang peft."""
    adapter = _adapter(ex, tmp_path, update={"exclude_modules": "(a|aa)*c$"})
    proc = run_sub(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", "--fast"], 60)
    assert proc.returncode == 1, proc.stderr
    assert "regex-too-expensive" in _codes(json.loads(proc.stdout))


def test_regex_guard_units() -> None:
    names = ["model.layers.0.self_attn.q_proj", "a" * 40]
    t0 = time.monotonic()
    with pytest.raises(RegexProblem) as ei:
        vet([(EVIL, "fullmatch", "target_modules")], names)
    assert ei.value.kind == "too-expensive" and time.monotonic() - t0 < 30
    with pytest.raises(RegexProblem) as ei:
        vet([("(", "fullmatch", "target_modules")], names)
    assert ei.value.kind == "invalid"
    vet([(r".*\.(q_proj|v_proj)", "fullmatch", "target_modules")], names)  # fine
    vet([(r"(?!.*vision).*q_proj", "fullmatch", "target_modules")], names)  # lookaround: fine too


def test_scan_hub_survives_a_catastrophic_regex(ex, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from hubserver import HubServer

    from loradoc.model.profiles import get_profile

    base_id = "google/gemma-4-E4B-it"
    get_profile(base_id)  # the shipped profile may be for another transformers: build it once (meta device)
    srv = HubServer(tmp_path / "store")
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": EVIL, "base_model_name_or_path": base_id}
    card = f"---\nbase_model: {base_id}\nbase_model_relation: adapter\nlibrary_name: peft\n---\n"
    srv.store.seed(
        "evil/regex",
        {
            "README.md": card,
            "adapter_config.json": json.dumps(cfg),
            "adapter_model.safetensors": (ex.adapters[ADAPTER] / "adapter_model.safetensors").read_bytes(),
        },
    )
    with srv:
        proc = run_sub(
            ["registry", "scan-hub", "--base", base_id, "--endpoint", srv.url, "--json", "--registry",
             str(tmp_path / "reg.sqlite")],
            120,
        )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    assert "regex-too-expensive" in proc.stdout


# -- 2. sizes and base config types ---------------------------------------------------------------------------


def test_huge_target_list_is_exit_2(ex, tmp_path: Path, capsys) -> None:
    adapter = _adapter(ex, tmp_path, update={"target_modules": [f"m{i}" for i in range(100_000)]})
    t0 = time.monotonic()
    code, _, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast"], capsys)
    line = _one_line_exit2(code, err)
    assert "'target_modules' has 100000 entries (limit 10000)" in line and time.monotonic() - t0 < 20


def test_huge_regex_string_is_exit_2(ex, tmp_path: Path, capsys) -> None:
    adapter = _adapter(ex, tmp_path, update={"target_modules": "q_proj|" * 20_000})
    code, _, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast"], capsys)
    assert "limit 65536" in _one_line_exit2(code, err)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(architectures=5), "'architectures'"),
        (lambda c: c.update(architectures=[5]), "'architectures'"),
        (lambda c: c.update(architectures=[]), "'architectures'"),
        (lambda c: c.update(hidden_size="64"), "'hidden_size' must be an integer"),
        (lambda c: c.update(num_hidden_layers=100_000), "'num_hidden_layers' must be an integer from 0 to 4096"),
        (
            lambda c: c.update(layer_types=c["layer_types"][:1]),
            "'layer_types' has 1 entries but num_hidden_layers is",
        ),
    ],
    ids=["arch-int", "arch-list-int", "arch-empty", "hidden-str", "layers-100k", "layer-types-short"],
)
def test_bad_base_config_fields_are_exit_2(ex, tmp_path: Path, capsys, edit, needle: str) -> None:
    base = _base(ex, tmp_path, edit)
    t0 = time.monotonic()
    code, _, err = run_cli(["doctor", str(ex.adapters[ADAPTER]), "--base", str(base)], capsys)
    assert needle in _one_line_exit2(code, err)
    assert time.monotonic() - t0 < 60


def test_data_check_reads_a_huge_tensor_in_bounded_chunks(ex, tmp_path: Path) -> None:
    """A header declaring a 2 GiB tensor (a sparse file): the untrained/NaN check must not read it whole."""
    adapter = _adapter(ex, tmp_path)
    w = adapter / "adapter_model.safetensors"
    blob = w.read_bytes()
    baseline_kib = _doctor_fast_maxrss(adapter, ex, expect=0)  # the same command on the adapter as it was
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    data_len = len(blob) - 8 - n
    big = 512 << 20  # F32 elements: 2 GiB
    header["base_model.model.extra.lora_B.weight"] = {
        "dtype": "F32",
        "shape": [big, 1],
        "data_offsets": [data_len, data_len + 4 * big],
    }
    raw = json.dumps(header).encode()
    with open(w, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
        fh.truncate(8 + len(raw) + data_len + 4 * big)
    maxrss_kib = _doctor_fast_maxrss(adapter, ex, expect=1)
    # whole: > 2 GiB more than the baseline; chunked: the same process plus a few 16 MiB chunks
    assert maxrss_kib < baseline_kib + 256 * 1024, (maxrss_kib, baseline_kib)


def _doctor_fast_maxrss(adapter: Path, ex, *, expect: int) -> int:
    """Peak RSS (KiB) of one `loradoc doctor --fast --json` process on ``adapter``."""
    probe = (
        "import resource, sys\nfrom loradoc.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    code = e.code\nsys.stderr.write(f'\\nMAXRSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == expect, proc.stderr
    assert json.loads(proc.stdout)["data_checked"] is True
    return int(proc.stderr.rsplit("MAXRSS ", 1)[1])
    assert json.loads(proc.stdout)["data_checked"] is True


def test_declared_size_past_the_file_is_exit_2(ex, tmp_path: Path, capsys) -> None:
    """A header declaring a 24 GiB tensor that the file does not hold: the header parser says so, nothing is read."""
    adapter = _adapter(ex, tmp_path)
    w = adapter / "adapter_model.safetensors"
    blob = w.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    data_len = len(blob) - 8 - n
    big = 6 << 30  # F32 elements: 24 GiB
    header["base_model.model.extra.lora_B.weight"] = {
        "dtype": "F32",
        "shape": [big],
        "data_offsets": [data_len, data_len + 4 * big],
    }
    raw = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
    code, _, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast"], capsys)
    assert "truncated" in _one_line_exit2(code, err)


# -- 3. healthy means it works --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        {"lora_alpha": 0},
        {"lora_alpha": math.nan},
        {"lora_alpha": math.inf},
        {"lora_alpha": -16},
        {"alpha_pattern": {"q_proj": 0}},
        {"rank_pattern": {"q_proj": 0}},
        {"alpha_pattern": {"q_proj": math.nan}},
        {"r": 0},
        {"r": -4},
    ],
    ids=[
        "alpha-0",
        "alpha-nan",
        "alpha-inf",
        "alpha-neg",
        "alpha-pattern-0",
        "rank-pattern-0",
        "alpha-pattern-nan",
        "r-0",
        "r-neg",
    ],
)
def test_bad_scaling_is_an_error(ex, tmp_path: Path, capsys, update: dict) -> None:
    adapter = _adapter(ex, tmp_path, update=update)
    code, out, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast", "--json"], capsys)
    assert code == 1, err
    report = json.loads(out)
    assert report["verdict"] != "healthy" and "bad-scaling" in _codes(report)


def test_peft_type_is_checked_like_peft_in_fast_mode(ex, tmp_path: Path, capsys) -> None:
    """A known type misspelt ("lora"): peft's exact lookup raises KeyError, in --fast too (it used to be healthy)."""
    adapter = _adapter(ex, tmp_path, update={"peft_type": "lora"})
    for fast in (["--fast"], []):
        code, out, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--json", *fast], capsys)
        assert code == 1, err
        report = json.loads(out)
        assert report["verdict"] == "broken" and "peft-load-error" in _codes(report)
        assert "KeyError" in report["peft"]["error"]


@pytest.mark.parametrize(
    ("update", "drop", "needle"), [({}, ("peft_type",), "no peft_type"), ({"peft_type": "NOPE"}, (), "unknown to peft")]
)
def test_missing_or_unknown_peft_type_is_exit_2(ex, tmp_path: Path, capsys, update, drop, needle: str) -> None:
    adapter = _adapter(ex, tmp_path, update=update, drop=drop)
    for fast in (["--fast"], []):
        code, _, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), *fast], capsys)
        assert needle in _one_line_exit2(code, err)


def _relayout(path: Path, how: str) -> None:
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    last = header[names[-1]]
    if how == "gap":  # 4 unused bytes before the last tensor
        b, e = last["data_offsets"]
        last["data_offsets"] = [b + 4, e + 4]
        data = data[:b] + b"\0" * 4 + data[b:]
    elif how == "overlap":  # the last tensor starts 4 bytes early (and the file is 4 bytes shorter)
        b, e = last["data_offsets"]
        last["data_offsets"] = [b - 4, e - 4]
        data = data[:-4]
    elif how == "trailing":
        data = data + b"\0" * 8
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("how", ["gap", "overlap", "trailing"])
def test_layouts_the_library_refuses_are_exit_2(ex, tmp_path: Path, capsys, how: str) -> None:
    adapter = _adapter(ex, tmp_path)
    w = adapter / "adapter_model.safetensors"
    _relayout(w, how)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(str(w), framework="numpy")
    code, _, err = run_cli(["doctor", str(adapter), "--base", str(ex.bases[BASE]), "--fast"], capsys)
    _one_line_exit2(code, err)


# -- 4. the header parser agrees with the safetensors library -------------------------------------------------

_DTYPES = ["F32", "F16", "BF16", "U8", "I64", "BOOL", "F4", "F8_E4M3"]
_BITS = {"F32": 32, "F16": 16, "BF16": 16, "U8": 8, "I64": 64, "BOOL": 8, "F4": 4, "F8_E4M3": 8}


@st.composite
def _headers(draw) -> tuple[bytes, int]:
    """A header close to valid (so both sides get past JSON), then perturbed: offsets shifted, sizes off by a
    few, duplicate names, zero-size tensors, extra fields, metadata, trailing bytes, odd JSON."""
    n = draw(st.integers(0, 4))
    entries: list[tuple[str, dict]] = []
    pos = 0
    for i in range(n):
        dt = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        bits = math.prod(shape) * _BITS[dt]
        size = -(-bits // 8)
        begin = pos + draw(st.sampled_from([0] * 12 + [1, -1, 4]))
        end = begin + size + draw(st.sampled_from([0] * 12 + [1, -1]))
        entry: dict = {"dtype": dt, "shape": shape, "data_offsets": [begin, end]}
        if draw(st.integers(0, 9)) == 0:
            entry["extra"] = draw(st.sampled_from([1, "x", None, [1, 2], {"a": 1}, 10**30]))
        name = draw(st.sampled_from([f"t{i}"] * 4 + ["t0", "__metadata__", "", "a.b"]))
        entries.append((name, entry))
        pos = max(pos, end)
    meta = draw(st.sampled_from([None, "absent", "absent", {}, {"format": "pt"}, {"k": 1}, []]))
    items = [json.dumps(k) + ":" + json.dumps(v) for k, v in entries]
    if meta != "absent":
        items.insert(draw(st.integers(0, len(items))), '"__metadata__":' + json.dumps(meta))
    text = "{" + ",".join(items) + "}"
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from([""] * 6 + ["  ", "\x00", "x"]))
    if draw(st.integers(0, 9)) == 0:
        text = text.replace('"t0"', '"\\ud800"')
    if draw(st.integers(0, 9)) == 0:
        text = text.replace("[0,", "[-0,").replace("[0, ", "[-0, ")
    data_len = max(pos, 0) + draw(st.sampled_from([0] * 8 + [1, -1, 3]))
    return text.encode(), max(data_len, 0)


def _library_accepts(path: Path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="numpy"):
            return True
    except Exception:  # noqa: BLE001 - any refusal counts
        return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_headers())
def test_header_parser_agrees_with_the_safetensors_library(tmp_path: Path, case: tuple[bytes, int]) -> None:
    raw, data_len = case
    path = tmp_path / "f.safetensors"
    blob = struct.pack("<Q", len(raw)) + raw + b"\0" * data_len
    path.write_bytes(blob)
    lib_ok = _library_accepts(path)
    try:
        parse_header_bytes(blob, len(blob), path)
        ours = True
    except LoradocError:
        ours = False
    assert ours == lib_ok, (raw, data_len)
