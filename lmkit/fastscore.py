"""Compiled inner loop of the sparse scorer (``scoring.SparseScorer``), loaded only with numba.

Input: the multiplicative tables of a ``SparseParams`` (``scoring.score_tables``): ``E`` (nnz,)
float64 = ``exp(lambda_g S_g)`` of every stored entry of every active group, concatenated,
``ind`` (nnz,) int32 their columns, ``ptr`` (R + 1,) int64 the concatenated row pointers;
``rows`` (N, G) int64 global row of each position per active group (-1: no feature).
Output: per position ``Z = sum_j q[j] prod_g E_g[row_g, j]`` and the target's term
``q[t] prod_g E_g[row_g, t]``, so ``log P(t) = log(term) - log(Z)`` (natural log).

Why products: ``exp(s)`` of the summed scores equals the product of per-entry factors computed
once when the tables are built, so scoring does no ``exp`` at all: a dense (V,) accumulator
starts at q, every touched entry multiplies its column, and Z is the accumulator's sum (the
untouched columns keep q[j], as in ``sparse.union_log_z``). Cost: one multiply per touched
entry + 2 V adds per position; the rows are walked in history order so that neighbours share
rows in cache.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def union_products(q, E, ind, ptr, rows, targets, out_term, out_z):  # pragma: no cover (jit)
    """Fill ``out_term[n]`` and ``out_z[n]`` for every position n (see the module docstring)."""
    V = q.shape[0]
    N, G = rows.shape
    acc = np.empty(V)
    for n in range(N):
        for j in range(V):
            acc[j] = q[j]
        for g in range(G):
            r = rows[n, g]
            if r < 0:
                continue
            for k in range(ptr[r], ptr[r + 1]):
                acc[ind[k]] *= E[k]
        z = 0.0
        for j in range(V):
            z += acc[j]
        out_z[n] = z
        out_term[n] = acc[targets[n]]


@njit(cache=True, nogil=True)
def product_rows(q, E, ind, ptr, rows, out, out_z):  # pragma: no cover (jit)
    """``out[n, j] = q[j] prod_g E_g[row_g, j]`` for every position n and token j, and
    ``out_z[n]`` its sum over j (the normaliser): full next-token distributions."""
    V = q.shape[0]
    N, G = rows.shape
    for n in range(N):
        acc = out[n]
        for j in range(V):
            acc[j] = q[j]
        for g in range(G):
            r = rows[n, g]
            if r < 0:
                continue
            for k in range(ptr[r], ptr[r + 1]):
                acc[ind[k]] *= E[k]
        z = 0.0
        for j in range(V):
            z += acc[j]
        out_z[n] = z
