"""Sparse-matrix helpers shared by the solvers, the scorers and the model folder.

All matrices are canonical CSR (sorted indices, no duplicates). Row tables: ``keys`` is None
(row index = token id) or a sorted int64 array of history keys (row index = position in it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp  # annotations only: SciPy is imported where a CSR is built


def lookup_rows(keys: np.ndarray | None, row_keys: np.ndarray) -> np.ndarray:
    """Row index of each key in the sorted ``keys`` table (-1 if absent); identity if None."""
    row_keys = np.asarray(row_keys, dtype=np.int64)
    if keys is None:
        return row_keys
    if len(keys) == 0:
        return np.full(len(row_keys), -1, dtype=np.int64)
    idx = np.searchsorted(keys, row_keys)
    idx = np.minimum(idx, len(keys) - 1)
    return np.where((keys[idx] == row_keys) & (row_keys >= 0), idx, -1)


def take_rows(S: sp.csr_matrix, rows: np.ndarray, scale: float = 1.0) -> sp.csr_matrix:
    """``scale * S[rows[n]]`` for each position n as a CSR (N, V); an empty row where rows[n] < 0."""
    import scipy.sparse as sp  # here, not at the top: scoring an n-gram folder needs no SciPy
    present = np.flatnonzero(rows >= 0)
    sub = S[rows[present]]
    lengths = np.zeros(len(rows), dtype=np.int64)
    lengths[present] = np.diff(sub.indptr)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sp.csr_matrix((scale * sub.data, sub.indices, indptr), shape=(len(rows), S.shape[1]))


def lookup_values(S: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``S[rows[n], cols[n]]`` for each n (0 where not stored); O(N log nnz), S canonical CSR."""
    out = np.zeros(len(rows))
    if len(rows) == 0 or S.nnz == 0:
        return out
    starts, ends = S.indptr[rows], S.indptr[rows + 1]
    # binary search of each col inside its row's slice of S.indices
    lo, hi = starts.astype(np.int64), ends.astype(np.int64)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        midc = np.where(active, S.indices[np.minimum(mid, S.nnz - 1)], 0)
        go_right = active & (midc < cols)
        hi = np.where(active & ~go_right, mid, hi)
        lo = np.where(go_right, mid + 1, lo)
    found = (lo < ends) & (S.indices[np.minimum(lo, S.nnz - 1)] == cols)
    out[found] = S.data[lo[found]]
    return out


def csr_to_arrays(name: str, M: sp.csr_matrix) -> dict:
    """``{name_data, name_indices, name_indptr, name_shape}``: a CSR as plain arrays."""
    M = M.tocsr()
    return {f"{name}_data": M.data, f"{name}_indices": M.indices, f"{name}_indptr": M.indptr,
            f"{name}_shape": np.asarray(M.shape, dtype=np.int64)}


def csr_from_arrays(name: str, arrays) -> sp.csr_matrix:
    """Inverse of ``csr_to_arrays`` (``arrays``: a dict or an open ``.npz``)."""
    import scipy.sparse as sp  # here, not at the top: scoring an n-gram folder needs no SciPy
    shape = tuple(int(x) for x in arrays[f"{name}_shape"])
    return sp.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"],
                          arrays[f"{name}_indptr"]), shape=shape)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, stable (subtracts the row max)."""
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def union_log_z(q: np.ndarray, s: sp.csr_matrix) -> np.ndarray:
    """Per row n of ``s`` (n, V): ``log Z_n = log(1 + sum_j q[j] expm1(s[n, j]))`` over its pattern.

    The normaliser of ``p[j] ∝ q[j] exp(s[j])`` with q summing to 1: columns outside the pattern
    contribute ``q[j] exp(0)``, so only the touched columns cost anything; ``log1p``/``expm1``
    keep full precision when Z is close to 1. float64 (n,).
    """
    entry_row = np.repeat(np.arange(s.shape[0]), np.diff(s.indptr))
    return np.log1p(np.bincount(entry_row, q[s.indices] * np.expm1(s.data), minlength=s.shape[0]))
