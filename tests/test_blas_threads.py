"""The merge's BLAS thread limit (loradoc.convert.checkpoint.single_threaded_blas), checked on numpy's real BLAS
through threadpoolctl's own view of the loaded libraries."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from loradoc.convert.checkpoint import single_threaded_blas


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
