r"""Sparse fine-tune: gradient descent on the stored entries of a ``SparseParams`` model only.

Input: ``SparseParams`` (e.g. the MKN + window model of ``ngram/mkn.py``, warm start), per-group row
indices and targets of a tuning text (``scoring.context_rows``), and of a stopping text.
Output: a new ``SparseParams`` with the same sparsity pattern (same memory), ``S_g.data``
changed, ``q`` and ``lambdas`` unchanged; plus the trace of stopping-text NLL per epoch.

For a position with rows ``r_g`` the model is ``p = softmax(log q + sum_g lambda_g S_g[r_g])``,
so ``d(-log p[t]) / d S_g[r_g, j] = lambda_g (p[j] - [j = t])`` for every *stored* j of the row.
p is only ever needed on the union of the touched columns (off it, the logit is ``log q[j]`` and
no parameter sits there), so a step costs the non-zeros touched, like scoring. Updates use
AdaGrad per entry (rarely touched entries keep larger steps); the best epoch on the stopping
text is kept (early stopping), so the result is never worse there than the warm start.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from ..params import SparseParams
from ..sparse import lookup_values
from ..scoring import sparse_log_proba, sparse_scores


def _row_entries(S: sp.csr_matrix, rows: np.ndarray):
    """For positions with ``rows >= 0``: (position, column, index into S.data) of each entry."""
    present = np.flatnonzero(rows >= 0)
    starts, ends = S.indptr[rows[present]], S.indptr[rows[present] + 1]
    lengths = ends - starts
    pos = np.repeat(present, lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    idx = np.repeat(starts, lengths) + offset
    return pos, S.indices[idx].astype(np.int64), idx


def with_data(params: SparseParams, data: list) -> SparseParams:
    """``params`` with each ``S_g.data`` replaced by ``data[g]`` (same pattern)."""
    S = [sp.csr_matrix((d, M.indices, M.indptr), shape=M.shape) for M, d in zip(params.S, data)]
    return dataclasses.replace(params, S=S)


def nll_gradient(params: SparseParams, rows: list, targets: np.ndarray) -> list:
    """Gradient of the summed NLL w.r.t. each group's ``S_g.data``; list of (nnz_g,) float64."""
    n = len(targets)
    s = sparse_scores(params, rows, n)
    s.sort_indices()
    entry_row = np.repeat(np.arange(n), np.diff(s.indptr))
    w = params.q[s.indices] * np.exp(s.data)
    z = 1.0 + np.bincount(entry_row, w - params.q[s.indices], minlength=n)
    P = sp.csr_matrix((w / z[entry_row], s.indices, s.indptr), shape=s.shape)
    grads = []
    for S, r, lam in zip(params.S, rows, params.lambdas):
        g = np.zeros(S.nnz)
        if lam != 0.0:
            pos, cols, idx = _row_entries(S, r)
            g += lam * np.bincount(idx, lookup_values(P, pos, cols), minlength=S.nnz)
            hit = cols == targets[pos]
            g -= lam * np.bincount(idx[hit], minlength=S.nnz)
        grads.append(g)
    return grads


def finetune_sparse(params: SparseParams, rows: list, targets: np.ndarray, stop_rows: list,
                    stop_targets: np.ndarray, *, lr: float = 0.05, max_iter: int = 5,
                    batch_size: int = 4096, random_state: int = 0):
    """AdaGrad on the stored entries, early stopping on the stopping text (see module doc).

    Returns ``(params, trace)``: the best parameters and ``[(epoch, stop_nll_per_token)]``.
    """
    rng = np.random.default_rng(random_state)
    best = params
    data = [S.data.copy() for S in params.S]  # the working copy of the stored entries
    cur = with_data(params, data)
    acc = [np.full(S.nnz, 1e-8) for S in cur.S]
    best_nll = -float(sparse_log_proba(params, stop_rows, stop_targets).mean())
    trace = [(0, best_nll)]
    for epoch in range(1, max_iter + 1):
        order = rng.permutation(len(targets))
        for a in range(0, len(order), batch_size):
            b = order[a:a + batch_size]
            grads = nll_gradient(cur, [r[b] for r in rows], targets[b])
            for d, g, h in zip(data, grads, acc):
                h += g * g
                d -= lr * g / np.sqrt(h)
            cur = with_data(params, data)
        nll = -float(sparse_log_proba(cur, stop_rows, stop_targets).mean())
        trace.append((epoch, nll))
        if nll < best_nll:
            best_nll, best = nll, with_data(params, [d.copy() for d in data])
        else:
            break
    best = dataclasses.replace(best, info=dict(best.info, finetune_trace=trace))
    return best, trace
