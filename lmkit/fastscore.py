"""Compiled inner loops of the sparse scorer (``scoring.SparseScorer``), loaded only with numba.

Input: per active group g (lambda_g != 0) ``E_g`` float64 = ``exp(lambda_g S_g.data)`` (built
once per parameters, by numpy: exponentiating lazily here, row by row, measured slower) and
``ind_g`` int32 = ``S_g.indices``, passed as tuples; per position n and group g the range
``starts[g, n]:ends[g, n]`` of its row in those arrays (empty: no feature), int64 (N, G), or
``starts[g, n] = -1 - k`` for a row kept as the dense (V,) copy ``D[k]`` (the longest rows:
multiplying one in is a vectorised pass, cheaper than scattering more than ~V/3 entries).
Output: per position ``Z = sum_j q[j] prod_g E_g[row_g, j]`` (the normaliser) and the target's
term ``q[t] prod_g E_g[row_g, t]``, so ``log P(t) = log(term) - log(Z)`` (natural log); or the
whole products (n, V) for full distributions.

Why products: ``exp(s)`` of the summed scores is the product of per-entry factors computed once,
so scoring does no ``exp``: a dense (V,) accumulator starts at q, every touched entry multiplies
its column, and Z is the accumulator's sum (untouched columns keep q[j], as in
``sparse.union_log_z``). Why ``shared``: positions come in history order, so neighbours often
have the same rows in the groups that look at the last one or two tokens; those groups'
product (``base``) is rebuilt only when one of their rows changes, and each position starts
from a copy of it. Cost: one multiply per touched entry of the other groups + 2 V per position.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _scatter(acc, E, ind, s, e):  # pragma: no cover (jit)
    """Multiply the row at ``s:e`` of one group into ``acc``."""
    for k in range(s, e):
        acc[ind[k]] *= E[k]


@njit(cache=True, nogil=True)
def _dense(acc, d):  # pragma: no cover (jit)
    for j in range(acc.shape[0]):
        acc[j] *= d[j]


@njit(cache=True, nogil=True)
def _sum(a):  # pragma: no cover (jit)
    """Sum with 8 partial sums (a single running sum is one long chain of dependent adds)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = a.shape[0] - a.shape[0] % 8
    for j in range(0, m, 8):
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        s4 += a[j + 4]
        s5 += a[j + 5]
        s6 += a[j + 6]
        s7 += a[j + 7]
    for j in range(m, a.shape[0]):
        s0 += a[j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, nogil=True)
def union_products(q, Es, inds, D, starts, ends, shared, targets, out_term,
                   out_z):  # pragma: no cover (jit)
    """``out_term[n]``, ``out_z[n]`` for every position n (module docstring); ``shared`` (G,)
    bool marks the groups whose product is kept across neighbours with the same rows."""
    V = q.shape[0]
    G, N = starts.shape
    acc = np.empty(V)
    base = np.empty(V)
    for n in range(N):
        same = n > 0
        if same:
            for g in range(G):
                if shared[g] and (starts[g, n] != starts[g, n - 1]
                                  or ends[g, n] != ends[g, n - 1]):
                    same = False
                    break
        if not same:
            base[:] = q
            for g in range(G):
                if shared[g]:
                    if starts[g, n] < 0:
                        _dense(base, D[-1 - starts[g, n]])
                    else:
                        _scatter(base, Es[g], inds[g], starts[g, n], ends[g, n])
        acc[:] = base
        for g in range(G):
            if not shared[g]:
                if starts[g, n] < 0:
                    _dense(acc, D[-1 - starts[g, n]])
                else:
                    _scatter(acc, Es[g], inds[g], starts[g, n], ends[g, n])
        out_z[n] = _sum(acc)
        out_term[n] = acc[targets[n]]


@njit(cache=True, nogil=True)
def product_rows(q, Es, inds, D, starts, ends, out, out_z):  # pragma: no cover (jit)
    """``out[n, j] = q[j] prod_g E_g[row_g, j]`` for every position n and token j, and
    ``out_z[n]`` its sum over j (the normaliser): full next-token distributions."""
    G, N = starts.shape
    for n in range(N):
        acc = out[n]
        acc[:] = q
        for g in range(G):
            if starts[g, n] < 0:
                _dense(acc, D[-1 - starts[g, n]])
            else:
                _scatter(acc, Es[g], inds[g], starts[g, n], ends[g, n])
        out_z[n] = _sum(acc)
