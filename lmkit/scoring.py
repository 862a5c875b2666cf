"""Scoring: model parameters + contexts -> natural-log probabilities of targets.

Two parameter forms share one interface:

- ``SparseParams`` (``explicit.py``): ``logits = log q + sum_g lambda_g S_g[row_g]``, normalised
  over the union of touched columns, cost proportional to the non-zeros touched;
- ``DenseParams``: ``logits = b + sum_g W_g[row_g]`` with dense ``W_g`` (R_g, V) — the form the
  gradient solver trains; scored densely with a float64 log-sum-exp.

``features.context_rows`` turns token sequences into, per group, the weight-matrix row of every
target position (-1 = no feature: an unseen n-gram history), plus the targets (re-exported here).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .params import DenseParams, SparseParams
from .sparse import log_softmax, lookup_values, take_rows, union_log_z
# the rows of each context are a features job; re-exported for the callers that score
from .features import context_rows, next_rows  # noqa: F401


def sparse_scores(params: SparseParams, rows: list, n: int) -> sp.csr_matrix:
    """``s = sum_g lambda_g S_g[row_g]`` as a CSR (n, V): the union pattern of the touched rows."""
    V = params.vocab_size
    parts = [take_rows(S, r, lam) for S, r, lam in zip(params.S, rows, params.lambdas)
             if lam != 0.0]
    while len(parts) > 1:  # pairwise: each level merges every entry once (not once per group)
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0].tocsr() if parts else sp.csr_matrix((n, V))


def sparse_log_proba(params: SparseParams, rows: list, targets: np.ndarray,
                     chunk: int = 2048) -> np.ndarray:
    """log P(target | context) per position (natural log), float64 (N,)."""
    q, logq = params.q, np.log(params.q)
    out = np.empty(len(targets))
    for a in range(0, len(targets), chunk):
        r = [x[a:a + chunk] for x in rows]
        t = targets[a:a + chunk]
        s = sparse_scores(params, r, len(t))
        log_z = union_log_z(q, s)
        tgt = np.zeros(len(t))
        for S, rg, lam in zip(params.S, r, params.lambdas):
            present = rg >= 0
            if lam != 0.0 and present.any():
                tgt[present] += lam * lookup_values(S, rg[present], t[present])
        out[a:a + chunk] = logq[t] + tgt - log_z
    return out


def sparse_next_logp(params: SparseParams, rows: list) -> np.ndarray:
    """Full next-token log distribution (V,) for one position (O(V) vector, sparse work)."""
    s = sparse_scores(params, [r[:1] for r in rows], 1)
    logp = np.log(params.q).copy()
    logp[s.indices] += s.data
    return logp - union_log_z(params.q, s)[0]


def sparse_next_logp_batch(params: SparseParams, rows: list) -> np.ndarray:
    """Full next-token log distributions (n, V) float64 for n positions: O(touched nnz + n V)."""
    n = len(rows[0])
    s = sparse_scores(params, rows, n)
    entry_row = np.repeat(np.arange(n), np.diff(s.indptr))
    logp = np.broadcast_to(np.log(params.q), (n, params.vocab_size)).copy()
    logp[entry_row, s.indices] += s.data
    return logp - union_log_z(params.q, s)[:, None]


def dense_logits(params: DenseParams, rows: list) -> np.ndarray:
    """``b + sum_g W_g[row_g]`` as float64 (N, V); rows of -1 contribute nothing."""
    n = len(rows[0])
    logits = np.broadcast_to(params.b.astype(np.float64), (n, params.vocab_size)).copy()
    for W, r in zip(params.W, rows):
        present = np.flatnonzero(r >= 0)
        logits[present] += W[r[present]]
    return logits


def dense_log_proba(params: DenseParams, rows: list, targets: np.ndarray,
                    chunk: int = 1024) -> np.ndarray:
    """log P(target | context) per position for dense parameters, float64 (N,)."""
    out = np.empty(len(targets))
    for a in range(0, len(targets), chunk):
        lp = log_softmax(dense_logits(params, [x[a:a + chunk] for x in rows]))
        t = targets[a:a + chunk]
        out[a:a + chunk] = lp[np.arange(len(t)), t]
    return out


def log_proba(params, rows: list, targets: np.ndarray) -> np.ndarray:
    """Dispatch on the parameter form."""
    if isinstance(params, SparseParams):
        return sparse_log_proba(params, rows, targets)
    return dense_log_proba(params, rows, targets)


def next_logp(params, rows: list) -> np.ndarray:
    """Next-token log distribution (V,) for one position, any parameter form."""
    if isinstance(params, SparseParams):
        return sparse_next_logp(params, rows)
    return log_softmax(dense_logits(params, [r[:1] for r in rows]))[0]


def next_logp_batch(params, rows: list) -> np.ndarray:
    """Next-token log distributions (n, V) float64 for n positions, any parameter form."""
    if isinstance(params, SparseParams):
        return sparse_next_logp_batch(params, rows)
    return log_softmax(dense_logits(params, rows))
