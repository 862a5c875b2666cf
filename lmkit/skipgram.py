r"""Skip-gram solver: counts of ``Skip(r, s, a)`` groups -> sparse log-ratio weights.

Input: ``F`` CSR (R, V) int64 counts of one ``features.Skip`` group (rows = observed packed
context keys ``adjacent + V**a * remote``, sorted), its ``keys`` (R,) int64, ``a``, ``q`` (V,)
and a discount ``d`` in (0, 1). Output: ``S`` CSR (R, V) float64 on the pattern of ``F``.

Derivation
----------
A skip-gram context ``(remote, adjacent)`` refines the adjacent-only context: the feature
should say how much *more* it knows than the adjacent tokens alone, which the n-gram groups of
the same model already cover. Both are smoothed by interpolated absolute discounting:

    P_adj(w | h_a)   = max(M[h_a, w] - d, 0) / m(h_a) + gamma_a(h_a) q[w],
    P_skip(w | c)    = max(F[c, w] - d, 0) / f(c)     + gamma(c) P_adj(w | h_a(c)),
    gamma(c)         = d N1+(c) / f(c),

where ``M`` is ``F`` summed over the remote tokens (rows grouped by ``key % V**a``: the counts
of the adjacent context alone, from the same positions) and ``f``, ``m`` are row sums. As in
``explicit.py``, ``log P_skip = log gamma(c) + log P_adj + log(1 + r / (gamma P_adj))`` with
``r = max(F - d, 0) / f``; the first term is a per-context constant (cancels in the softmax), so
the group contributes

    S[c, w] = log(1 + max(F[c, w] - d, 0) / (d N1+(c) P_adj(w | h_a(c)))) >= 0,

non-zero only where ``F`` is. For ``a = 0`` there is no adjacent part, ``P_adj = q`` and this
is exactly ``explicit.solve_group``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .counts import add_keyed, sort_with_positions
from .features import find_sorted


def adjacent_marginal(F: sp.csr_matrix, keys: np.ndarray, a: int, V: int):
    """``F`` summed over the remote tokens: (CSR (A, V) counts, (R,) row of each context in it).

    ``M = P @ F`` with ``P`` (A, R) the 0/1 matrix of each context's adjacent part, built
    straight in CSR from the stable order of the adjacent parts (no COO copy) and in ``F``'s
    dtype: integer counts are summed as integers, without a float64 copy of ``F``'s values
    (the same sums: every count is an integer below 2**53)."""
    M, parent, _ = _marginal(F, keys, a, V)
    return M, parent


def _marginal(F, keys, a, V):
    """``adjacent_marginal`` and the (A,) sorted adjacent keys of M's rows."""
    R = len(keys)
    adj = keys % (V ** a)
    order, sorted_adj = sort_with_positions(adj)  # a stable order (argsort's)
    del adj
    first = np.ones(R, dtype=bool)  # each distinct adjacent part's first context, in order
    np.not_equal(sorted_adj[1:], sorted_adj[:-1], out=first[1:])
    adj_keys = sorted_adj[first]
    del sorted_adj
    parent = np.empty(R, dtype=np.int64)
    parent[order] = np.cumsum(first) - 1
    A = int(first.sum()) if R else 0
    indptr = np.append(np.flatnonzero(first), R)
    del first
    P = sp.csr_matrix((np.ones(R, dtype=F.dtype), order, indptr), shape=(A, R))
    del order
    M = (P @ F).tocsr()
    M.sort_indices()
    return M, parent, adj_keys


class Marginal:
    """The adjacent-part counts of a skip-like group, keyed: ``keys`` (A,) int64 sorted
    adjacent parts (``key % V**a``) and ``M`` CSR (A, V) int64 their counts summed over the
    remote tokens. Counts of parts of a group's rows add up (``+``) to the whole group's, so
    the group can be solved a block of rows at a time (``solve_skip(marginal=)``) with the
    same values: the rows of a block need ``M`` of the whole group, not of the block.

    ``Marginal.of(F, keys, a, V)``: of the rows of ``F``. ``probabilities(q, d)``: the
    smoothed ``P_adj`` on the pattern of ``M`` and the linear keys ``row * V + w`` of its
    entries, made once and kept (every block of the group asks with the same ``q`` and ``d``).
    """

    def __init__(self, a: int, V: int, keys: np.ndarray, M: sp.csr_matrix):
        self.a, self.V, self.keys, self.M = a, V, keys, M
        self._prob = None

    @classmethod
    def of(cls, F: sp.csr_matrix, keys: np.ndarray, a: int, V: int) -> "Marginal":
        F = F.tocsr()
        M, _, adj_keys = _marginal(F, np.asarray(keys, dtype=np.int64), a, V)
        return cls(a, V, adj_keys, M)

    def __add__(self, other: "Marginal") -> "Marginal":
        assert (self.a, self.V) == (other.a, other.V)
        M, keys = add_keyed(self.M, self.keys, other.M, other.keys)
        M.sort_indices()
        return Marginal(self.a, self.V, keys, M)

    def probabilities(self, q: np.ndarray, d: float):
        """``(PM, lin)``: ``absolute_discount(M, q, d)`` and each entry's ``row * V + w``."""
        if self._prob is None or self._prob[0] is not q or self._prob[1] != d:
            PM = absolute_discount(self.M, q, d)
            lin = (np.repeat(np.arange(self.M.shape[0], dtype=np.int64) * self.V,
                             np.diff(self.M.indptr)) + self.M.indices)
            self._prob = (q, d, PM, lin)
        return self._prob[2], self._prob[3]

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """(R,) the row of ``M`` of each context key (every one must be there)."""
        adj = np.asarray(keys, dtype=np.int64) % (self.V ** self.a)
        parent = find_sorted(self.keys, adj, compiled=True)
        if len(adj) and (parent.max() >= len(self.keys)
                         or not np.array_equal(self.keys[parent], adj)):
            raise ValueError("the marginal does not cover these rows' adjacent parts")
        return parent


def absolute_discount(M: sp.csr_matrix, q: np.ndarray, d: float) -> sp.csr_matrix:
    """``P(w | row)`` on the pattern of ``M``: ``max(M - d, 0) / m + d N1+ / m * q[w]``."""
    n1 = np.diff(M.indptr)
    m = np.asarray(M.sum(axis=1)).ravel()
    row = np.repeat(np.arange(M.shape[0]), n1)
    data = (np.maximum(M.data - d, 0.0) + d * n1[row] * q[M.indices]) / m[row]
    return sp.csr_matrix((data, M.indices, M.indptr), shape=M.shape)


def solve_skip(F: sp.csr_matrix, keys: np.ndarray, a: int, q: np.ndarray, d: float,
               block: int = 1 << 20, marginal: Marginal | None = None) -> sp.csr_matrix:
    """``S = log(1 + max(F - d, 0) / (d N1+(c) P_adj(w | h_a(c))))`` on the pattern of ``F``,
    computed in blocks of whole rows of about ``block`` entries (each entry's value depends
    on its row and ``M`` only), so the per-entry temporaries of the lookup in ``M`` are
    block-sized, not ``nnz(F)``-sized.

    ``marginal``: the ``Marginal`` of the whole group when ``F`` is a block of its rows (the
    same values as solving the whole group and taking the block); None: ``F``'s own."""
    F = F.tocsr()
    F.sort_indices()
    V = F.shape[1]
    n1 = np.diff(F.indptr)
    if a:
        keys = np.asarray(keys, dtype=np.int64)
        if marginal is None:
            M, parent, adj_keys = _marginal(F, keys, a, V)
            marginal = Marginal(a, V, adj_keys, M)
            del M
        else:
            parent = marginal.rows_of(keys)
        # every (context, w) of F has its (adjacent part, w) in M: one search of linear keys
        PM, lin = marginal.probabilities(q, d)
    data = np.empty(F.nnz)
    cuts = np.unique(np.searchsorted(F.indptr, np.arange(0, F.nnz, block), side="right") - 1)
    for lo, hi in zip(cuts, [*cuts[1:], F.shape[0]]):
        e0, e1 = F.indptr[lo], F.indptr[hi]
        row = np.repeat(np.arange(lo, hi), n1[lo:hi])
        cols = F.indices[e0:e1]
        if a == 0:
            base = q[cols]
        else:
            base = PM.data[find_sorted(lin, parent[row] * V + cols, compiled=True)]
        data[e0:e1] = np.log1p(np.maximum(F.data[e0:e1] - d, 0.0) / (d * n1[row] * base))
    S = sp.csr_matrix((data, F.indices.copy(), F.indptr.copy()), shape=F.shape)
    S.has_sorted_indices = True
    return S
