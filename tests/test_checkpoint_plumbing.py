"""Plumbing of loradoc.convert.checkpoint: the merge's BLAS thread limit (checked on numpy's real BLAS through
threadpoolctl's own view of the loaded libraries) and the whole-file sha256 a SourceFile computes while it reads
(checked against hashlib over the file written by the real safetensors library)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp
from threadpoolctl import threadpool_info

from loradoc.convert.checkpoint import SourceFile, single_threaded_blas
from loradoc.errors import BadInputError
from loradoc.io.safetensors import read_header


def _blas_threads() -> list[tuple[str, int]]:
    return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]


def test_single_threaded_blas_limits_numpy_blas_and_restores_it() -> None:
    a = np.ones((64, 64))
    want = a @ a  # loads numpy's BLAS
    before = _blas_threads()
    assert before, "numpy's wheel ships OpenBLAS: threadpoolctl must see it"
    with single_threaded_blas():
        assert [n for _, n in _blas_threads()] == [1] * len(before)
        assert np.array_equal(a @ a, want)
    assert _blas_threads() == before


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "model.safetensors"
    stnp.save_file(
        {
            "a.weight": rng.standard_normal((64, 33)).astype(np.float32),
            "b.weight": rng.standard_normal((7, 5)).astype(np.float16),
            "c.bias": rng.integers(0, 9, (11,), dtype=np.int64),
        },
        path,
    )
    return path


@pytest.mark.parametrize("order", ["file", "reversed"])
def test_source_file_hashes_the_whole_file(checkpoint_file: Path, order: str) -> None:
    header = read_header(checkpoint_file)
    infos = header.ordered_by_offset()
    if order == "reversed":  # the side thread gives up; the file is hashed again at the end
        infos = infos[::-1]
    src = SourceFile(header, hash_file=True)
    try:
        for info in infos:
            data = b"".join(src.chunks(info, 100, primary=True))
            assert len(data) == info.nbytes
        assert src.hashing is (order == "file")
        assert src.sha256() == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()
    finally:
        src.close()
    plain = SourceFile(header, hash_file=False)
    try:
        assert plain.sha256() is None
    finally:
        plain.close()


def test_source_file_refuses_a_file_that_grew_while_read(checkpoint_file: Path) -> None:
    header = read_header(checkpoint_file)
    src = SourceFile(header, hash_file=True)
    try:
        for info in header.ordered_by_offset()[::-1]:
            src.read(header.data_start + info.begin, info.nbytes, primary=True)
        with checkpoint_file.open("ab") as fh:
            fh.write(b"more")
        with pytest.raises(BadInputError, match="size changed"):
            src.sha256()
    finally:
        src.close()
