"""Tests for loradoc.io.safetensors, checked against the real safetensors library (never mocked)."""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy as stnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoc.errors import (
    BadInputError,
    EnvironmentProblem,
    LoradocError,
    MalformedSafetensorsError,
    MissingFileError,
)
from loradoc.io.atomic import atomic_directory, atomic_file, current_umask, fsync_dir, write_file_atomic
from loradoc.io.hashing import HashThread, sha256_fd, sha256_file
from loradoc.io.safetensors import (
    DTYPE_BITS,
    MAX_HEADER_SIZE,
    TensorInfo,
    header_bytes_needed,
    iter_tensor_bytes,
    parse_header_bytes,
    read_header,
    read_tensor_bytes,
    tensor_to_numpy,
)
from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec, canonical_order

# safetensors' Python-side dtype names (what safetensors.TensorSpec accepts) for each header dtype.
# F6_E2M3 / F6_E3M2 exist in the format but no Python framework name maps to them.
ST_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
    "C64": "complex64",
}


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * DTYPE_BITS[dtype] // 8


def st_serialize(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata=None) -> bytes:
    """Serialize raw little-endian bytes with the real safetensors library (any dtype, no torch needed)."""
    keep = []
    specs = {}
    for name, (dtype, shape, data) in tensors.items():
        buf = ctypes.create_string_buffer(data, max(1, len(data)))
        keep.append(buf)
        storage_shape = list(shape)
        if dtype == "F4":  # safetensors.TensorSpec takes the packed (x2) storage shape and doubles the last dim
            storage_shape[-1] //= 2
        specs[name] = safetensors.TensorSpec(
            dtype=ST_NAMES[dtype], shape=storage_shape, data_ptr=ctypes.addressof(buf), data_len=len(data)
        )
    return bytes(safetensors.serialize(specs, metadata=metadata))


def st_tensors(blob: bytes) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """What the real safetensors library reads back: name -> (dtype, shape, raw bytes)."""
    return {n: (d["dtype"], tuple(d["shape"]), bytes(d["data"])) for n, d in safetensors.deserialize(blob)}


def craft(path: Path, header: object | bytes, data: bytes = b"", pad: bool = True) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def one_line(exc: LoradocError, path: Path | None = None) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text
    assert exc.hint, "every error needs a next step"
    if path is not None:
        assert str(path) in text
    return text


RNG = np.random.default_rng(0)
MIXED = {
    "base.lora_A.weight": ("F32", (4, 16), RNG.standard_normal((4, 16)).astype("<f4").tobytes()),
    "base.lora_B.weight": ("BF16", (16, 4), RNG.integers(0, 2**16, 64, dtype="<u2").tobytes()),
    "half": ("F16", (3, 5), RNG.standard_normal(15).astype("<f2").tobytes()),
    "double": ("F64", (2,), np.array([1.5, -2.25], "<f8").tobytes()),
    "ids": ("I64", (3,), np.array([1, -2, 3], "<i8").tobytes()),
    "i32": ("I32", (2, 2), np.arange(4, dtype="<i4").tobytes()),
    "u32": ("U32", (1,), np.array([7], "<u4").tobytes()),
    "u64": ("U64", (1,), np.array([2**63], "<u8").tobytes()),
    "i16": ("I16", (3,), np.array([-1, 0, 1], "<i2").tobytes()),
    "u16": ("U16", (3,), np.array([1, 2, 65535], "<u2").tobytes()),
    "i8": ("I8", (2,), np.array([-128, 127], "i1").tobytes()),
    "u8": ("U8", (5,), bytes(range(5))),
    "mask": ("BOOL", (4,), bytes([1, 0, 1, 1])),
    "f8a": ("F8_E4M3", (2, 3), bytes(range(6))),
    "f8b": ("F8_E5M2", (4,), bytes(range(10, 14))),
    "f8c": ("F8_E8M0", (2,), bytes([127, 128])),
    "f8d": ("F8_E4M3FNUZ", (2,), bytes([1, 2])),
    "f8e": ("F8_E5M2FNUZ", (2,), bytes([3, 4])),
    "fp4": ("F4", (2, 4), bytes([0x12, 0x34, 0x56, 0x78])),
    "cplx": ("C64", (2,), np.array([1 + 2j, -3j], "<c8").tobytes()),
    "empty": ("F32", (0, 7), b""),
    "scalar": ("F32", (), np.array(3.5, "<f4").tobytes()),
}


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(st_serialize(MIXED, metadata={"format": "pt", "note": "é ünïcode"}))
    return path


# ----------------------------------------------------------------------------------------------------
# Header parsing against the real library


def test_header_inventory_matches_safe_open(mixed_file: Path) -> None:
    header = read_header(mixed_file)
    with safetensors.safe_open(mixed_file, framework="numpy") as f:
        assert set(header.tensors) == set(f.keys())
        assert header.metadata == f.metadata()
        for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
            sl = f.get_slice(name)
            info = header.tensors[name]
            assert info.dtype == sl.get_dtype()
            assert list(info.shape) == sl.get_shape()
        # safetensors' own offset order is our ordered_by_offset order
        assert [t.name for t in header.ordered_by_offset()] == f.offset_keys()
    assert header.file_size == mixed_file.stat().st_size
    assert header.data_start == 8 + header.header_size
    assert header.header_size % 8 == 0
    assert header.gaps == () and header.loadable_by_safetensors and header.notes() == []
    for name, (dtype, shape, data) in MIXED.items():
        info = header.tensors[name]
        assert (info.dtype, info.shape, info.nbytes, info.numel) == (
            dtype,
            shape,
            len(data),
            int(np.prod(shape)),
        )
        assert read_tensor_bytes(header, name) == data
        start, end = header.file_range(name)
        assert mixed_file.read_bytes()[start:end] == data


def test_header_order_is_json_order(tmp_path: Path) -> None:
    path = craft(
        tmp_path / "o.safetensors",
        b'{"z":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        b"xy",
    )
    header = read_header(path)
    assert list(header.tensors) == ["z", "a"]
    assert [t.name for t in header.ordered_by_offset()] == ["a", "z"]


@pytest.mark.slow  # importing torch alone takes ~3 s on a small CI box
def test_torch_saved_file_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    tensors = {
        "a.bf16": torch.randn(3, 4).to(torch.bfloat16),
        "b.f8": torch.randn(5).to(torch.float8_e4m3fn),
        "c.f8": torch.randn(2, 2).to(torch.float8_e5m2),
        "d.f32": torch.randn(2, 3),
        "e.i64": torch.arange(4),
    }
    path = tmp_path / "t.safetensors"
    stt.save_file(tensors, path, metadata={"format": "pt"})
    header = read_header(path)
    with safetensors.safe_open(path, framework="pt") as f:
        assert header.metadata == f.metadata() == {"format": "pt"}
        for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
            assert header.tensors[name].dtype == f.get_slice(name).get_dtype()
            assert list(header.tensors[name].shape) == f.get_slice(name).get_shape()
    for name, t in tensors.items():
        raw = read_tensor_bytes(header, name)
        assert raw == t.contiguous().view(torch.uint8).numpy().tobytes()
    bf = tensor_to_numpy(header.tensors["a.bf16"], read_tensor_bytes(header, "a.bf16"))
    assert np.array_equal(bf, tensors["a.bf16"].float().numpy())


def test_parse_header_bytes_from_a_prefix_like_an_http_range_read(mixed_file: Path) -> None:
    blob = mixed_file.read_bytes()
    need = header_bytes_needed(blob[:8], len(blob), mixed_file)
    header = parse_header_bytes(blob[:need], len(blob), mixed_file)
    assert header == read_header(mixed_file)
    # extra bytes after the header are ignored
    assert parse_header_bytes(blob[: need + 100], len(blob), mixed_file) == header
    with pytest.raises(BadInputError) as ei:
        parse_header_bytes(blob[: need - 1], len(blob), mixed_file)
    assert not isinstance(ei.value, MalformedSafetensorsError)
    one_line(ei.value, mixed_file)


def test_zero_size_tensors_may_share_offsets(tmp_path: Path) -> None:
    hdr = {
        "a": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "c": {"dtype": "F32", "shape": [0], "data_offsets": [1, 1]},
    }
    header = read_header(craft(tmp_path / "z.safetensors", hdr, b"\x07"))
    assert header.gaps == ()
    assert read_tensor_bytes(header, "a") == b"" and read_tensor_bytes(header, "b") == b"\x07"


def test_gaps_are_refused_like_the_safetensors_library(tmp_path: Path) -> None:
    hdr = {
        "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [4, 5]},
    }
    path = craft(tmp_path / "gap.safetensors", hdr, b"AA..B")
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_header(path)
    assert "2 unused bytes at data offsets [2, 4) before tensor 'b'" in str(ei.value)
    one_line(ei.value, path)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(path, framework="numpy")


def test_repeated_names_keep_the_last_entry_like_the_safetensors_library(tmp_path: Path) -> None:
    raw = (
        b'{"t": {"dtype":"U8","shape":[9],"data_offsets":[0,9]}, "t": {"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    )
    path = craft(tmp_path / "dup.safetensors", raw, b"x")
    assert read_header(path).tensors["t"].shape == (1,)
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.get_tensor("t").shape == (1,)


def test_metadata_null_is_accepted_like_safetensors(tmp_path: Path) -> None:
    header = read_header(craft(tmp_path / "m.safetensors", {"__metadata__": None}))
    assert header.metadata == {} and header.tensors == {}


# ----------------------------------------------------------------------------------------------------
# Malformed files: one MalformedSafetensorsError each, one line, naming the file, with a hint

T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED_HEADERS: list[tuple[str, object, bytes, str]] = [
    ("not-json", b"{this is not json", b"", "not valid JSON"),
    ("json-array", b"[1, 2, 3]", b"", "not an object"),
    ("json-string", b'"hello"', b"", "not an object"),
    ("not-utf8", b'{"\xff\xfe": 1}', b"", "not valid UTF-8"),
    ("nan", b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}', b"", "JSON"),
    ("duplicate", b'{"t": {"dtype":"U8","shape":[1],"data_offsets":[0,1]}, "t": 1}', b"x", "not an object"),
    ("duplicate-metadata", b'{"__metadata__": {}, "__metadata__": {}}', b"", "'__metadata__' twice"),
    ("metadata-list", {"__metadata__": ["a"]}, b"", "__metadata__"),
    ("metadata-int-value", {"__metadata__": {"k": 1}}, b"", "must be strings"),
    ("entry-not-object", {"t": [1, 2]}, b"", "not an object"),
    ("no-dtype", {"t": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "no 'dtype'"),
    ("no-shape", {"t": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8, "no 'shape'"),
    ("no-offsets", {"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "no 'data_offsets'"),
    ("dtype-int", {"t": {**T, "dtype": 3}}, b"\0" * 8, "dtype"),
    ("unknown-dtype", {"t": {**T, "dtype": "F128"}}, b"\0" * 8, "unknown dtype 'F128'"),
    ("lowercase-dtype", {"t": {**T, "dtype": "float32"}}, b"\0" * 8, "unknown dtype"),
    ("shape-not-list", {"t": {**T, "shape": 2}}, b"\0" * 8, "shape"),
    ("shape-float", {"t": {**T, "shape": [2.0]}}, b"\0" * 8, "shape"),
    ("shape-bool", {"t": {**T, "shape": [True, 2]}}, b"\0" * 8, "shape"),
    ("negative-dim", {"t": {**T, "shape": [-2]}}, b"\0" * 8, "negative"),
    ("offsets-three", {"t": {**T, "data_offsets": [0, 4, 8]}}, b"\0" * 8, "[begin, end]"),
    ("offsets-strings", {"t": {**T, "data_offsets": ["0", "8"]}}, b"\0" * 8, "[begin, end]"),
    ("begin-after-end", {"t": {**T, "data_offsets": [8, 0]}}, b"\0" * 8, "begin <= end"),
    ("negative-begin", {"t": {**T, "data_offsets": [-8, 0]}}, b"\0" * 8, "begin <= end"),
    ("size-mismatch", {"t": {**T, "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
    (
        "f4-odd",
        {"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}},
        b"\0\0",
        "whole number of bytes",
    ),
    ("offset-past-end", {"t": T}, b"\0" * 5, "truncated"),
    (
        "overlap",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
        "overlap",
    ),
]


@pytest.mark.parametrize(
    ("header", "data", "needle"), [c[1:] for c in MALFORMED_HEADERS], ids=[c[0] for c in MALFORMED_HEADERS]
)
def test_malformed_header(tmp_path: Path, header: object, data: bytes, needle: str) -> None:
    path = craft(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_header(path)
    assert needle in one_line(ei.value, path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"abc", "shorter than the 8-byte header length"),
        (struct.pack("<Q", 0) + b"{}", "header length is 0"),
        (struct.pack("<Q", 500) + b"{}", "header length 500 past the end of the file (size 10)"),
        (struct.pack("<Q", 2**63) + b"{}", "past the end of the file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "HTML"),
        (b'{"error": "Repository not found"}', "JSON text file"),
        (b"PK\x03\x04" + b"\0" * 40, "zip archive"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01", "pickle"),
        (b"GGUF\x03\x00\x00\x00" + b"\0" * 24, "GGUF"),
    ],
    ids=[
        "empty",
        "short",
        "zero-len",
        "len-past-eof",
        "len-huge",
        "lfs",
        "html",
        "json",
        "zip",
        "pickle",
        "gguf",
    ],
)
def test_malformed_prefix(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_header(path)
    assert needle in one_line(ei.value, path)


def test_absurd_header_length() -> None:
    n = MAX_HEADER_SIZE + 1
    with pytest.raises(MalformedSafetensorsError) as ei:
        parse_header_bytes(struct.pack("<Q", n) + b"{}", 2 * n, Path("big.safetensors"))
    assert "absurd" in one_line(ei.value, Path("big.safetensors"))


@pytest.mark.parametrize("cut", [1, 7, 100])
def test_truncated_real_file(mixed_file: Path, cut: int) -> None:
    blob = mixed_file.read_bytes()
    mixed_file.write_bytes(blob[:-cut])
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_header(mixed_file)
    text = one_line(ei.value, mixed_file)
    assert "truncated" in text and f"{cut} bytes missing" in text
    assert "fetch it again" in (ei.value.hint or "")


def test_truncated_inside_header(mixed_file: Path) -> None:
    blob = mixed_file.read_bytes()
    mixed_file.write_bytes(blob[:40])
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_header(mixed_file)
    assert "past the end of the file (size 40)" in one_line(ei.value, mixed_file)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError) as ei:
        read_header(tmp_path / "nope.safetensors")
    one_line(ei.value, tmp_path / "nope.safetensors")
    (tmp_path / "adapter_model.safetensors").write_bytes(st_serialize({}))
    with pytest.raises(BadInputError) as ei2:
        read_header(tmp_path)
    text = one_line(ei2.value, tmp_path)
    assert "is a directory" in text and "adapter_model.safetensors" in (ei2.value.hint or "")
    with pytest.raises(MissingFileError):
        sha256_file(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------------
# Reading data


def test_read_with_open_handle_and_streaming(mixed_file: Path) -> None:
    header = read_header(mixed_file)
    with open(mixed_file, "rb") as fh:
        assert read_tensor_bytes(header, "half", fh) == MIXED["half"][2]
    bio = io.BytesIO(mixed_file.read_bytes())  # no fileno: seek + read path
    assert read_tensor_bytes(header, "base.lora_A.weight", bio) == MIXED["base.lora_A.weight"][2]

    seen = []
    for info, chunks in iter_tensor_bytes(header, chunk_size=5):
        parts = list(chunks)
        assert all(0 < len(p) <= 5 for p in parts)
        assert b"".join(parts) == MIXED[info.name][2]
        seen.append(info.name)
    assert seen == [t.name for t in header.ordered_by_offset()]
    assert [i.name for i, _ in iter_tensor_bytes(header, ["ids", "half"])] == ["ids", "half"]

    with pytest.raises(BadInputError) as ei:
        read_tensor_bytes(header, "missing")
    one_line(ei.value, mixed_file)
    with pytest.raises(BadInputError):
        list(iter_tensor_bytes(header, ["half", "missing"]))


def test_read_after_file_was_cut(mixed_file: Path) -> None:
    header = read_header(mixed_file)
    blob = mixed_file.read_bytes()
    mixed_file.write_bytes(blob[:-3])
    last = header.ordered_by_offset()[-1].name
    with pytest.raises(MalformedSafetensorsError) as ei:
        read_tensor_bytes(header, last)
    assert "truncated" in one_line(ei.value, mixed_file)
    with pytest.raises(BadInputError):
        list(iter_tensor_bytes(header))


def test_tensor_to_numpy(mixed_file: Path) -> None:
    header = read_header(mixed_file)
    for name, (dtype, _shape, data) in MIXED.items():
        info = header.tensors[name]
        if dtype.startswith(("F8", "F4")):
            with pytest.raises(BadInputError) as ei:
                tensor_to_numpy(info, data)
            one_line(ei.value)
            continue
        arr = tensor_to_numpy(info, data)
        assert arr.shape == info.shape
        if dtype == "BF16":
            expect = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
            assert arr.dtype == np.float32
            assert np.array_equal(arr.ravel(), expect, equal_nan=True)
        else:
            assert arr.tobytes() == data
    # numpy-only file: identical to safetensors.numpy.load_file
    arrays = {
        "w": RNG.standard_normal((3, 4)).astype(np.float16),
        "b": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    path = mixed_file.with_name("np.safetensors")
    stnp.save_file(arrays, path)
    h = read_header(path)
    ref = stnp.load_file(path)
    for name in arrays:
        got = tensor_to_numpy(h.tensors[name], read_tensor_bytes(h, name))
        assert got.dtype == ref[name].dtype and np.array_equal(got, ref[name])
    with pytest.raises(BadInputError):
        tensor_to_numpy(h.tensors["w"], b"\0")


def test_bf16_exact() -> None:
    f32 = np.array([1.0, -2.5, 3.140625, np.inf, -0.0, 1e-40], dtype="<f4")
    bf16 = (f32.view("<u4") >> 16).astype("<u2").tobytes()  # these values are exact in bf16
    arr = tensor_to_numpy(TensorInfo("x", "BF16", (6,), 0, 12), bf16)
    assert arr.view("<u4").tolist() == (f32.view("<u4") & 0xFFFF0000).tolist()


def test_sha256_file(mixed_file: Path, tmp_path: Path) -> None:
    assert sha256_file(mixed_file) == hashlib.sha256(mixed_file.read_bytes()).hexdigest()
    big = tmp_path / "big.bin"  # several of file_digest's reads, and a partial last one
    big.write_bytes(np.random.default_rng(0).integers(0, 256, (3 << 20) + 12345, dtype=np.uint8).tobytes())
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(BadInputError) as ei:
        sha256_file(tmp_path)
    assert "is a directory" in one_line(ei.value, tmp_path)


def test_sha256_fd_hashes_the_whole_file_whatever_the_offset(mixed_file: Path) -> None:
    fd = os.open(mixed_file, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert sha256_fd(fd, mixed_file) == hashlib.sha256(mixed_file.read_bytes()).hexdigest()
        os.fstat(fd)  # still open: the caller's descriptor is not closed
    finally:
        os.close(fd)


def test_hash_thread_matches_hashlib() -> None:
    parts = [bytes(range(256)) * 1000, b"", memoryview(b"tail"), b"x" * 12345]
    h = HashThread()
    for part in parts:
        h.update(part)
    want = hashlib.sha256(b"".join(bytes(p) for p in parts)).hexdigest()
    assert h.hexdigest() == want
    h.close()
    assert h.hexdigest() == want


# ----------------------------------------------------------------------------------------------------
# Writing


def write_all(path: Path, tensors, metadata=None, chunk: int = 3, order=None, **kw) -> SafetensorsWriter:
    plan = [TensorSpec(n, d, s) for n, (d, s, _b) in tensors.items()]
    if order is not None:
        plan = order(plan)
    with SafetensorsWriter(path, plan, metadata=metadata, **kw) as w:
        for spec in plan:
            data = tensors[spec.name][2]
            for i in range(0, len(data), chunk):
                w.write(spec.name, data[i : i + chunk])
    return w


def test_writer_output_reads_back_bit_exact(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    meta = {"format": "pt", "loradoc": "repaired ✓"}
    w = write_all(path, MIXED, metadata=meta)
    assert w.committed and path.stat().st_size == w.total_size
    blob = path.read_bytes()
    assert st_tensors(blob) == MIXED
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.metadata() == meta
    for name, (_d, _s, data) in MIXED.items():
        assert w.sha256[name] == hashlib.sha256(data).hexdigest()
    header = read_header(path)
    assert list(header.tensors) == list(MIXED)  # plan order, contiguous
    assert header.loadable_by_safetensors and header.header_size % 8 == 0
    assert blob[8 : 8 + 15] == b'{"__metadata__"'  # metadata first


def test_writer_numpy_file_equals_safetensors_numpy(tmp_path: Path) -> None:
    arrays = {
        "x": RNG.standard_normal((5, 3)).astype(np.float32),
        "y": RNG.integers(-9, 9, (4,), dtype=np.int64),
        "z": RNG.standard_normal(7).astype(np.float16),
    }
    ref_path = tmp_path / "ref.safetensors"
    stnp.save_file(arrays, ref_path)
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    tensors = {k: (codes[v.dtype], v.shape, v.tobytes()) for k, v in arrays.items()}
    out = tmp_path / "out.safetensors"
    plan = canonical_order([TensorSpec(k, d, s) for k, (d, s, _b) in tensors.items()])
    with SafetensorsWriter(out, plan) as w:
        for spec in plan:
            w.write(spec.name, arrays[spec.name])  # numpy arrays are accepted directly
    assert out.read_bytes() == ref_path.read_bytes()  # byte-identical file
    loaded = stnp.load_file(out)
    for k, v in arrays.items():
        assert loaded[k].tobytes() == v.tobytes() and loaded[k].dtype == v.dtype


def test_writer_canonical_order_matches_safetensors_layout(tmp_path: Path) -> None:
    tensors = {k: v for k, v in MIXED.items()}
    path = tmp_path / "c.safetensors"
    write_all(path, tensors, order=canonical_order)
    assert path.read_bytes() == st_serialize(tensors)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writer_exception_midway_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "adapter_model.safetensors"
    plan = [TensorSpec("a", "F32", (1024,)), TensorSpec("b", "F32", (2,))]
    with pytest.raises(RuntimeError, match="boom"), SafetensorsWriter(target, plan) as w:
        w.write("a", b"\0" * 1000)
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []

    target.write_bytes(b"original")
    with pytest.raises(KeyboardInterrupt), SafetensorsWriter(target, plan) as w:
        w.write("a", b"\0" * 4096)
        raise KeyboardInterrupt
    assert target.read_bytes() == b"original"
    assert _leftovers(tmp_path) == ["adapter_model.safetensors"]


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        ([("b", 8)], "before 'a' was complete"),
        ([("a", 3), ("b", 8)], "before 'a' was complete"),
        ([("a", 5)], "more than the 4 planned"),
        ([("a", 4), ("b", 8), ("a", 1)], "out of plan order"),
        ([("nope", 1)], "not in the plan"),
        ([("a", 4)], "incomplete"),
        ([("a", 4), ("b", 7)], "incomplete"),
    ],
)
def test_writer_refuses_bad_sequences(tmp_path: Path, steps, needle: str) -> None:
    target = tmp_path / "t.safetensors"
    plan = [TensorSpec("a", "U8", (4,)), TensorSpec("empty", "F32", (0,)), TensorSpec("b", "U8", (8,))]
    with pytest.raises(BadInputError) as ei, SafetensorsWriter(target, plan) as w:
        for name, n in steps:
            w.write(name, b"\1" * n)
    assert needle in one_line(ei.value, target)
    assert _leftovers(tmp_path) == []


def test_writer_zero_size_and_empty_plan(tmp_path: Path) -> None:
    plan = [TensorSpec("e1", "F32", (0,)), TensorSpec("x", "U8", (2,)), TensorSpec("e2", "BF16", (3, 0))]
    with SafetensorsWriter(tmp_path / "z.safetensors", plan) as w:
        w.write("x", b"hi")
    empty = hashlib.sha256(b"").hexdigest()
    assert w.sha256 == {"e1": empty, "x": hashlib.sha256(b"hi").hexdigest(), "e2": empty}
    assert st_tensors((tmp_path / "z.safetensors").read_bytes())["x"] == ("U8", (2,), b"hi")

    with SafetensorsWriter(tmp_path / "none.safetensors", []):
        pass
    assert read_header(tmp_path / "none.safetensors").tensors == {}
    assert safetensors.deserialize((tmp_path / "none.safetensors").read_bytes()) == []


def test_writer_validates_plan_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "t.safetensors"
    for bad in (
        lambda: TensorSpec("a", "F128", (1,)),
        lambda: TensorSpec("a", "F32", (-1,)),
        lambda: TensorSpec("a", "F4", (3,)),
        lambda: SafetensorsWriter(target, [TensorSpec("a", "U8", (1,))] * 2),
        lambda: SafetensorsWriter(target, [TensorSpec("__metadata__", "U8", (1,))]),
        lambda: SafetensorsWriter(target, [], metadata={"k": 1}),  # type: ignore[dict-item]
    ):
        with pytest.raises(BadInputError) as ei:
            bad()
        one_line(ei.value)
    target.write_bytes(b"keep")
    with pytest.raises(BadInputError) as ei, SafetensorsWriter(target, [], overwrite=False):
        pass
    assert "already exists" in one_line(ei.value, target)
    assert target.read_bytes() == b"keep" and _leftovers(tmp_path) == ["t.safetensors"]


def test_writer_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    size = 24 << 20
    chunk = bytes(range(256)) * 4096  # 1 MiB
    plan = [TensorSpec("big", "U8", (size,))]
    tracemalloc.start()
    try:
        with SafetensorsWriter(tmp_path / "big.safetensors", plan) as w:
            for _ in range(size // len(chunk)):
                w.write("big", chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert (tmp_path / "big.safetensors").stat().st_size == w.total_size
    header = read_header(tmp_path / "big.safetensors")
    tracemalloc.start()
    try:
        digest = hashlib.sha256()
        for _info, chunks in iter_tensor_bytes(header, chunk_size=1 << 20):
            for part in chunks:
                digest.update(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert digest.hexdigest() == w.sha256["big"]


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "adapter_config.json"
    write_file_atomic(target, b"{}")
    write_file_atomic(target, b'{"r": 8}')
    assert target.read_bytes() == b'{"r": 8}'
    with pytest.raises(BadInputError):
        write_file_atomic(target, b"x", overwrite=False)
    assert _leftovers(tmp_path) == ["adapter_config.json"]
    fsync_dir(tmp_path)


def test_atomic_directory_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "repaired"
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".repaired.tmp-")
        assert not target.exists()
        write_all(tmp / "adapter_model.safetensors", {"a": MIXED["u8"]})
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", "sub"]
    assert _leftovers(tmp_path) == ["repaired"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700
    assert (target / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    with pytest.raises(BadInputError) as ei, atomic_directory(target):
        pass
    assert "already exists" in one_line(ei.value, target)

    failed = tmp_path / "failed"
    with pytest.raises(ValueError, match="nope"), atomic_directory(failed) as tmp:
        (tmp / "half.bin").write_bytes(b"partial")
        raise ValueError("nope")
    assert not failed.exists()
    assert _leftovers(tmp_path) == ["repaired"]

    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == ["repaired"]

    with pytest.raises(OSError), atomic_directory(target, overwrite=True) as tmp:
        raise OSError("user code failing with an OSError is re-raised as is")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and _leftovers(tmp_path) == ["repaired"]


# ----------------------------------------------------------------------------------------------------
# Property: anything our writer writes, the real safetensors library reads back identically

ROUND_TRIP_DTYPES = sorted(ST_NAMES)


@st.composite
def tensor_sets(draw):
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=n, max_size=n, unique=True))
    names = [nm for nm in names if nm != "__metadata__"]
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(ROUND_TRIP_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        if dtype == "F4":  # packed: last dim must be even (and there must be one)
            shape = (*shape, 2 * draw(st.integers(0, 3)))
        data = draw(st.binary(min_size=nbytes_of(dtype, shape), max_size=nbytes_of(dtype, shape)))
        out[name] = (dtype, shape, data)
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
    return out, metadata


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor_sets(), st.integers(1, 9), st.booleans())
def test_property_writer_round_trips_through_safetensors(case, chunk, canonical) -> None:
    tensors, metadata = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.safetensors"
        w = write_all(path, tensors, metadata=metadata, chunk=chunk, order=canonical_order if canonical else None)
        blob = path.read_bytes()
        assert st_tensors(blob) == tensors
        with safetensors.safe_open(path, framework="numpy") as f:
            assert (f.metadata() or {}) == (metadata or {})
        header = read_header(path)
        assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {
            n: (d_, s) for n, (d_, s, _b) in tensors.items()
        }
        assert header.metadata == (metadata or {})
        for name, (_d, _s, data) in tensors.items():
            assert read_tensor_bytes(header, name) == data
            assert w.sha256[name] == hashlib.sha256(data).hexdigest()
        if canonical and metadata is None:
            assert blob == st_serialize(tensors)
        assert sorted(os.listdir(d)) == ["p.safetensors"]


def test_f6_dtypes_round_trip(tmp_path: Path) -> None:
    """F6 has no Python framework name in safetensors, but its Rust core reads it."""
    tensors = {"a": ("F6_E2M3", (4,), b"\x01\x02\x03"), "b": ("F6_E3M2", (2, 4), bytes(6))}
    path = tmp_path / "f6.safetensors"
    write_all(path, tensors)
    assert st_tensors(path.read_bytes()) == tensors
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.get_slice("a").get_dtype() == "F6_E2M3"


# ----------------------------------------------------------------------------------------------------
# Import cost


def test_import_is_light() -> None:
    code = (
        "import sys, loradoc.io.safetensors, loradoc.io.safetensors_writer, loradoc.io.atomic, loradoc.io.hashing; "
        "mods = ('torch', 'numpy', 'safetensors', 'transformers', 'typing'); "
        "print(','.join(m for m in mods if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_environment_errors_are_loradoc_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    for attempt in (
        lambda: write_file_atomic(blocker / "x.json", b"1"),
        lambda: SafetensorsWriter(blocker / "x.safetensors", []).open(),
        lambda: atomic_directory(blocker / "out").__enter__(),
    ):
        with pytest.raises(EnvironmentProblem) as ei:
            attempt()
        one_line(ei.value)
    assert _leftovers(tmp_path) == ["not-a-dir"]


def test_sigkill_leaves_only_dot_prefixed_temps(tmp_path: Path) -> None:
    code = f"""
import os, signal
from pathlib import Path
from loradoc.io.atomic import atomic_directory
from loradoc.io.safetensors_writer import SafetensorsWriter, TensorSpec
root = Path({str(tmp_path)!r})
with atomic_directory(root / "out") as tmp:
    (tmp / "adapter_config.json").write_text("{{}}")
    w = SafetensorsWriter(root / "model.safetensors", [TensorSpec("a", "U8", (100,))]).__enter__()
    w.write("a", b"x" * 50)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    left = _leftovers(tmp_path)
    assert left and all(name.startswith((".out.tmp-", ".model.safetensors.")) for name in left), left


def test_writer_without_tensor_hashes_writes_the_same_bytes(tmp_path: Path) -> None:
    import numpy as np

    specs = [TensorSpec("a", "F32", (3, 4)), TensorSpec("b", "U8", (5,))]
    data = {"a": np.arange(12, dtype=np.float32).tobytes(), "b": bytes(range(5))}
    out = {}
    for flag in (True, False):
        target = tmp_path / f"{flag}.safetensors"
        with SafetensorsWriter(target, specs, hash_tensors=flag) as w:
            for s in specs:
                w.write(s.name, data[s.name])
        out[flag] = (target.read_bytes(), dict(w.sha256))
    assert out[True][0] == out[False][0]
    assert out[False][1] == {} and set(out[True][1]) == {"a", "b"}


def test_atomic_file_publishes_on_success_only(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.gguf"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".model.gguf.") and not target.exists()
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    assert stat_mode(target) == 0o666 & ~current_umask()
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"first"
    with pytest.raises(BadInputError), atomic_file(target, overwrite=False) as tmp:
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"first"
    # a writer that replaces the temp (a library writing its own file) still gets the requested mode
    with atomic_file(target, mode=0o640) as tmp:
        other = tmp.with_name("elsewhere")
        other.write_bytes(b"third")
        os.chmod(other, 0o600)
        os.replace(other, tmp)
    assert target.read_bytes() == b"third" and stat_mode(target) == 0o640
    assert _leftovers(target.parent) == ["model.gguf"]


def test_atomic_file_environment_error_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(EnvironmentProblem) as ei, atomic_file(blocker / "x.gguf"):
        pass
    one_line(ei.value)
    assert _leftovers(tmp_path) == ["not-a-dir"]


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
