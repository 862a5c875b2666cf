"""Compiled Hessian of the weight search's held-out NLL (``heldout_nll._chunk_terms``): numba
source, run as cached native object code (``native.py``: later processes call it without
importing numba).

Input, one chunk of held-out positions (``heldout_nll.HeldoutChunk``): the design matrix X as
CSR arrays ``xptr`` int32 (U + 1,), ``xind`` int32 (nnz,) (the parameter of each stored value,
in [0, P)), ``xval`` float64 (nnz,); ``wz`` float64 (U,), the model's probability ``p_nj`` of
each cell (position n, column j); ``seg`` int64 (h + 1,), the first cell of each of the first h
positions (a position's cells are consecutive; ``seg[h]`` <= U). Output, added into the
caller's ``hess`` float64 (P, P): ``sum_n [sum_j p_nj x_nj x_nj^T - m_n m_n^T]`` over those h
positions, ``m_n = sum_j p_nj x_nj`` (the gradient of ``log Z_n``). Scratch from the caller
(nothing is allocated here, so the object code needs no numba runtime): ``m`` float64 (P,)
zeros (zeros again on return), ``mark`` int64 (P,) all -1, ``seen`` int64 (P,).

Why: scipy needs this as two sparse matrix products (``X^T diag(p) X`` through a transposed
copy of X, and the position indicator times X) whose symbolic passes and index bookkeeping
cost several times the arithmetic: a cell holds ~2.5 stored values, so its outer product is
~6 multiply-adds. Here it is one pass over the cells, and no transposed copy of X is built or
kept. (The NLL and gradient stay numpy's: its vectorised exp is faster than a scalar loop.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .jitargs import arg1, arg2, block_cfunc


@njit
def hessian_terms(xptr, xind, xval, wz, seg, hess, m, mark, seen):  # pragma: no cover (jit)
    """See the module docstring."""
    for i in range(seg.shape[0] - 1):
        c = 0  # the parameters position i touches: seen[:c]
        for u in range(seg[i], seg[i + 1]):
            a, b = xptr[u], xptr[u + 1]
            for k in range(a, b):
                p = xind[k]
                v = wz[u] * xval[k]
                if mark[p] != i:
                    mark[p] = i
                    seen[c] = p
                    c += 1
                m[p] += v
                for kk in range(a, b):
                    hess[p, xind[kk]] += v * xval[kk]
        for t in range(c):
            x = seen[t]
            for tt in range(c):
                hess[x, seen[tt]] -= m[x] * m[seen[tt]]
        for t in range(c):
            m[seen[t]] = 0.0


ARGSPECS = {"hessian_terms": ["i4:1", "i4:1", "f8:1", "f8:1", "i8:1", "f8:2", "f8:1", "i8:1",
                              "i8:1"]}


def native_kernel(name: str):
    """``(cfunc, argspec)`` for ``native.kernel("fastnll", "hessian_terms")`` (its arguments
    in order)."""
    if name != "hessian_terms":
        raise ValueError(f"no kernel {name!r} in fastnll")

    def entry(blk):  # pragma: no cover (jit)
        hessian_terms(arg1(blk, 0, np.int32), arg1(blk, 1, np.int32), arg1(blk, 2, np.float64),
                      arg1(blk, 3, np.float64), arg1(blk, 4, np.int64),
                      arg2(blk, 5, np.float64), arg1(blk, 6, np.float64),
                      arg1(blk, 7, np.int64), arg1(blk, 8, np.int64))
    return block_cfunc(entry), ARGSPECS[name]
