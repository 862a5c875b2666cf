r"""Query side of an MKN n-gram model: back-off tables and the exact scorer, from ``SparseParams``.

Input: ``SparseParams`` of a pure n-gram model — groups ``Suffix(1..M)`` first, all lambdas 1,
``S_m`` CSR (R_m, V) float64 on the nested n-gram patterns (``mkn.solve_ngram`` writes them; an
imported ARPA file gives the same form). Output, natural logs throughout:

- ``backoff_tables(params)``: per order m ``(log P_{m+1}(w | h)`` on the pattern of ``S_m`` (nnz_m,),
  ``log gamma`` per row (R_m,)) — gamma rebuilt from q and S alone (derivation: ``mkn.py``);
- ``loggamma_tables(params)``: the stored log gammas (``info["loggamma"]``) or the rebuilt ones;
- ``mkn_log_proba(params, rows, targets, loggammas)``: float64 (N,) ``log P(target | history)``.

This is what a loaded model needs to score and sample an n-gram model; it imports no solver
(``mkn.py`` imports it: the solver reuses the same lookups).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, ModelFormatError
from ..features import Suffix, check_suffix_chain, find_sorted
from ..params import SparseParams, stored_arrays

if TYPE_CHECKING:
    import scipy.sparse as sp  # annotations only: SciPy is imported where a CSR is built


def linear_keys(M: sp.csr_matrix) -> np.ndarray:
    """``row * V + col`` of every stored entry of a canonical CSR: sorted int64 (nnz,)."""
    V = M.shape[1]
    return np.repeat(np.arange(M.shape[0], dtype=np.int64) * V, np.diff(M.indptr)) + M.indices


def entry_index(M: sp.csr_matrix, rows, cols, lin=None, missing_ok: bool = False,
                compiled: bool = False) -> np.ndarray:
    """Index into ``M.data`` of each entry (rows[n], cols[n]) of a canonical CSR (-1 if absent).

    One ``searchsorted`` on the linear keys (``lin``: ``linear_keys(M)``, if already known;
    ``compiled``: ``features.find_sorted``'s, for the training's joins). Without ``missing_ok``
    every entry must be stored.
    """
    lin = linear_keys(M) if lin is None else lin
    q = np.asarray(rows, dtype=np.int64) * M.shape[1] + np.asarray(cols, dtype=np.int64)
    idx = np.minimum(find_sorted(lin, q, compiled), max(len(lin) - 1, 0))
    found = (lin[idx] == q) & (np.asarray(rows) >= 0) if len(lin) else np.zeros(len(q), bool)
    if not missing_ok:
        assert found.all(), "a needed n-gram is missing: patterns must be nested"
        return idx
    return np.where(found, idx, -1)


def _suffix_order(groups) -> int:
    """M such that the suffix groups are exactly Suffix(1..M), in order, first."""
    M = check_suffix_chain(groups)
    if any(isinstance(g, Suffix) for g in groups[M:]):
        raise InputError(f"suffix groups must be suffix1..suffixM first, got "
                         f"{[g.name for g in groups]}; build them with make_groups(order=N)")
    return M


def _lower_logp(parent_rows, cols, q, logp_prev, lin=None):
    """log P_m(w | h') for each (h, w), given the row of h' (unigram q when m = 1)."""
    if logp_prev is None:
        return np.log(q[cols])
    return logp_prev.data[entry_index(logp_prev, parent_rows, cols, lin)]


def backoff_tables(params: SparseParams):
    """Per suffix group m: (log P_{m+1}(w | h) on the pattern of S_m, log gamma per row).

    Natural logs. Only for pure suffix models with all lambdas 1 (an exact MKN model).
    Returns ``(logp, loggamma)``: lists of (nnz_m,) and (R_m,) float64 arrays.
    """
    import scipy.sparse as sp  # here, not at the top: a folder with its G tables needs no SciPy
    M = _suffix_order(params.groups)
    V = params.vocab_size
    logps, loggammas, prev, lin = [], [], None, None
    for m in range(M):
        S = params.S[m].tocsr()
        S.sort_indices()
        er = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        lower = _lower_logp((params.keys[m] // V)[er], S.indices, params.q, prev, lin)
        z = 1.0 + np.bincount(er, np.exp(lower) * np.expm1(S.data), minlength=S.shape[0])
        lg = -np.log(z)
        lp = lg[er] + lower + S.data
        prev = sp.csr_matrix((lp, S.indices, S.indptr), shape=S.shape)
        lin = er * V + S.indices  # = linear_keys(prev), reused by the next order's lookups
        logps.append(lp)
        loggammas.append(lg)
    return logps, loggammas


def loggamma_tables(params: SparseParams) -> list:
    """log gamma per row of every suffix group: the stored ones (``info["loggamma"]``, written by
    ``solve_ngram`` and saved with the model) when present, else derived from q and S
    (``backoff_tables``). Stored tables read from a file were value-checked where they entered
    (``io.store.arrays_to_params``: finite, <= 0); here only their shapes are matched to the rows,
    so scoring does not scan every table a second time."""
    stored = params.info.get("loggamma")
    if stored is None:
        return backoff_tables(params)[1]
    out = [np.asarray(x, dtype=np.float64) for x in stored]
    # rows counted from the stored row pointers: a loaded folder's groups stay unwidened
    rows = [len(stored_arrays(params.S, g)[2]) - 1 for g in range(len(params.S))]
    if len(out) != len(rows) or any(x.shape != (r,) for x, r in zip(out, rows)):
        raise ModelFormatError("stored n-gram back-off weights (G arrays) do not match the model's "
                               "rows; re-train the model")
    return out


def mkn_log_proba(params: SparseParams, rows: list, targets: np.ndarray, loggammas,
                  order=None) -> np.ndarray:
    """Fast exact scorer for pure MKN models: ``log q[t] + sum_m (S_m[h_m, t] + log gamma_m)``.

    ``S_m[h_m, t]`` is looked up only where ``S_{m-1}[h_{m-1}, t]`` was stored: the patterns are
    nested (a stored ``(h, t)`` implies a stored ``(h', t)``), so the searches thin out with the
    order. Cost: at most M binary searches per token, independent of how many columns a row has.
    ``order``: optional permutation of the positions under which every group's rows ascend
    (``features.history_order``): the searches then walk the arrays in memory order.
    The groups are read as stored (``params.stored_arrays``: a loaded folder's float32 values
    add to the float64 sums exactly as their widened copies would), so scoring a folder
    builds no SciPy CSR.
    """
    out = np.log(params.q[targets])
    # positions whose target may still be stored at this order
    cand = np.arange(len(targets)) if order is None else order
    for g, (r, lg) in enumerate(zip(rows, loggammas)):
        data, indices, indptr = stored_arrays(params.S, g)
        present = r >= 0
        out[present] += lg[r[present]]
        cand = cand[r[cand] >= 0]
        idx = _row_find(indices, indptr, r[cand], targets[cand])
        hit = idx >= 0
        cand = cand[hit]
        out[cand] += data[idx[hit]]
    return out


def _row_find(ind: np.ndarray, indptr: np.ndarray, rows: np.ndarray,
              cols: np.ndarray) -> np.ndarray:
    """Index into the values of (rows[n], cols[n]), -1 if not stored (a canonical CSR's
    ``indices`` and ``indptr``; every row >= 0). A branch-free binary search inside each row,
    all queries in step: each step halves every query's range with one gather and one
    ``where``; once most ranges are down to one entry, the search goes on with the rest only
    (rows are mostly short, a few very long)."""
    base = indptr[rows].astype(np.int64)
    n = indptr[rows + 1].astype(np.int64) - base
    c = np.asarray(cols).astype(ind.dtype, copy=False)
    empty = n == 0
    base[empty], n[empty] = 0, 1  # probe entry 0 harmlessly; masked out below
    ids, b, m, cc = None, base, n, c  # the queries still searching (None: all of them)
    while True:
        half = m >> 1
        live = half > 0
        k = np.count_nonzero(live)
        if not k:
            break
        if k < len(m) // 2:
            if ids is None:
                ids = np.flatnonzero(live)
            else:
                base[ids[~live]] = b[~live]
                ids = ids[live]
            b, m, cc, half = b[live], m[live], cc[live], half[live]
        probe = b + half
        b = np.where(ind[probe] <= c if ids is None else ind[probe] <= cc, probe, b)
        m = m - half
        if ids is None:
            base = b
    if ids is not None:
        base[ids] = b
    hit = ~empty & (ind[base] == c) if len(ind) else np.zeros(len(base), bool)
    return np.where(hit, base, -1)


__all__ = ["backoff_tables", "loggamma_tables", "mkn_log_proba", "linear_keys", "entry_index"]
