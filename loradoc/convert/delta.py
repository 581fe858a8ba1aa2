"""A LoRA delta ``left @ right`` whose float32 value does not depend on the machine.

A float32 matmul is not a well-defined function: BLAS libraries (numpy's OpenBLAS, torch's MKL / oneDNN) and
their CPU-specific kernels accumulate the ``r`` products of each element in different orders, with or without
FMA, so the same ``B @ A`` differs in the last bits from one library, kernel, block shape or machine to the next
(on the tiny Gemma 4 fixture, torch's float32 ``B @ A`` differs from the correctly rounded value in 62% of the
elements). Rounded to bf16, a few of those last-bit differences cross a rounding boundary: a merged checkpoint
would not be reproducible across machines.

:class:`ExactDelta` returns ``fl32(fsum(products))``: the exact sum of the exact products, rounded to float64
(:func:`math.fsum`) and then to float32. It is computed by a float64 matmul (every product of two float32 values
is exact in float64; only the ``r - 1`` additions round, whatever their order) with a rigorous bound on that
rounding error; the few elements whose bound interval contains a float32 rounding boundary are recomputed with
:func:`math.fsum`. The result is the same bits on every IEEE-754 machine, whatever BLAS computed the float64
product.
"""

from __future__ import annotations

import math
from typing import Any

_BLOCK_ELEMS = 1 << 16  # elements per internal block: 0.5 MB of float64 + 2 x 0.25 MB of float32 scratch


class ExactDelta:
    """``left @ right`` (float32 ``(n, r)`` and ``(r, m)``), rows at a time, rounded once to float32."""

    def __init__(self, left: Any, right: Any) -> None:
        import numpy as np

        self.left = np.ascontiguousarray(left, dtype=np.float64)
        self.right = np.ascontiguousarray(right, dtype=np.float64)
        r = int(self.left.shape[1])
        # |float64 sum - exact| <= gamma_{r-1} * sum_k |l_ik * r_kj| in any order, FMA or not (Higham 3.5), and
        # sum_k |l_ik * r_kj| <= max_k |l_ik| * max_j sum_k |r_kj|: one bound per row; 4x the textbook constant
        # covers the rounding of the bound itself and of d -/+ bound below.
        lmax = np.abs(self.left).max(axis=1) if r else np.zeros(self.left.shape[0])
        rsum = float(np.abs(self.right).sum(axis=0).max()) if self.right.size else 0.0
        self._bound = lmax * (rsum * 4.0 * (r + 1) * 2.0**-53)
        self._bufs: dict[str, Any] = {}
        self.refined = 0  # elements recomputed with math.fsum (for tests and curiosity)

    def _buf(self, name: str, shape: tuple[int, int], dtype: str) -> Any:
        import numpy as np

        n = shape[0] * shape[1]
        buf = self._bufs.get(name)
        if buf is None or buf.size < n:
            buf = self._bufs[name] = np.empty(max(n, 1), dtype=dtype)
        return buf[:n].reshape(shape)

    def rows(self, rows: slice, out: Any | None = None) -> Any:
        """float32 ``(left @ right)[rows]`` (a step-1 slice), into ``out`` when given."""
        import numpy as np

        start, stop, _ = rows.indices(self.left.shape[0])
        m = int(self.right.shape[1])
        if out is None:
            out = np.empty((max(0, stop - start), m), dtype=np.float32)
        step = max(1, _BLOCK_ELEMS // max(1, m))  # float64 scratch stays cache-sized whatever the caller's block
        for r0 in range(start, stop, step):
            r1 = min(stop, r0 + step)
            self._block(r0, r1, out[r0 - start : r1 - start])
        return out

    def _block(self, r0: int, r1: int, out: Any) -> None:
        import numpy as np

        lhs = self.left[r0:r1]
        shape = (r1 - r0, int(self.right.shape[1]))
        d = self._buf("d", shape, "float64")
        np.matmul(lhs, self.right, out=d)
        bound = self._bound[r0:r1, None]
        lo = self._buf("lo", shape, "float32")
        hi = self._buf("hi", shape, "float32")
        np.subtract(d, bound, out=lo, casting="same_kind")
        np.add(d, bound, out=hi, casting="same_kind")
        out[...] = d
        ambiguous = np.not_equal(lo, hi)  # the exact value may round to either: settle it exactly
        if ambiguous.any():
            ii, jj = np.divmod(np.flatnonzero(ambiguous), shape[1])  # (np.nonzero on 2-D is ~30x slower)
            keep = np.isfinite(d[ii, jj])  # NaN / Inf inputs: the float64 result is as good as any
            ii, jj = ii[keep], jj[keep]
            prods = lhs[ii, :] * self.right[:, jj].T  # exact: float32 x float32 fits float64
            out[ii, jj] = np.array([math.fsum(p) for p in prods], dtype=np.float64)
            self.refined += len(ii)
