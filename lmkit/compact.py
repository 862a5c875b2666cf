"""Compact feature-rich models: drop the entries that carry (almost) no weight, keep float32 values.

Input: ``SparseParams`` of a model scored by the union normaliser (``rich.fit_rich``: every
group's weights folded into S, lambdas 1), held-out rows and targets (``scoring.context_rows``).
Output: ``SparseParams`` of the same groups with fewer stored entries and values rounded to
float32 (held as float64, so the model in memory and the one read back from its folder are the
same numbers: ``io.store.params_to_arrays`` writes float32 only where that is lossless).

Why it is safe: the normaliser is computed over whatever entries a row stores, so any subset
of entries is still a proper distribution (unlike a pure MKN model, whose back-off weights
assume its patterns; those are refused). An entry of value v multiplies its column by
``exp(v)``; ``|v| <= tau`` changes that column by at most ``e^tau - 1``. Which tau: the largest
of ``taus`` whose held-out perplexity is within ``DEFAULT_MAX_COST`` of the unpruned model's.
``lmkit train`` prunes the exact zeros only (``DEFAULT_TAUS``): a third of the default model's
entries are zeros of the entry-count weights, and dropping them changes no probability (216 ->
75 MB with float32 values); the curve in docs/speed.md shows that ``CURVE_TAUS`` would pick
0.05 on the default corpus (68 MB, test perplexity -0.014 %), which moves the published numbers.
Rows left empty are dropped from groups whose keys are plain lookups (not ``Suffix`` groups:
their rows are the parents of the next order's chained keys).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import InputError
from .features import Suffix
from .params import SparseParams
from .scoring import context_rows, sparse_scorer

DEFAULT_TAUS = (0.0,)  # exact zeros: the same model, smaller
CURVE_TAUS = (0.0, 0.01, 0.02, 0.05, 0.1)
DEFAULT_MAX_COST = 0.001  # relative held-out perplexity increase allowed (0.1 %)


def _check_union(params: SparseParams) -> None:
    if params.info.get("loggamma") is not None:
        raise InputError("pruning entries of a pure n-gram (MKN) model would break its back-off "
                         "weights; prune n-gram models by count thresholds (prune)")


def prune_entries(params: SparseParams, tau: float, drop_rows: bool = True,
                  round32: bool = False) -> SparseParams:
    """Drop every entry with ``|lambda_g S_g[i, j]| <= tau`` (tau < 0: keep all), and with
    ``drop_rows`` the rows this leaves empty in groups with lookup keys (see the module
    docstring; without it the rows, keys and context rows of the model stay valid). With
    ``round32`` the kept values are rounded as ``round_float32`` rounds them, group by group
    in the pruned copy (no second copy of the model)."""
    _check_union(params)
    S_out, keys_out = [], []
    for g, (S, keys, group) in enumerate(zip(params.S, params.keys, params.groups)):
        keep = np.abs(params.lambdas[g] * S.data) > tau
        entry_row = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        counts = np.bincount(entry_row[keep], minlength=S.shape[0])
        rows = np.arange(S.shape[0])
        if drop_rows and keys is not None and not isinstance(group, Suffix):
            rows = np.flatnonzero(counts)
            keys = keys[rows]
        indptr = np.concatenate([[0], np.cumsum(counts[rows])]).astype(S.indptr.dtype)
        data = S.data[keep]
        if round32:  # in place in the pruned copy (float64, as round_float32 holds it)
            data = np.asarray(data, dtype=np.float64)
            data[...] = data.astype(np.float32)
        S_out.append(sp.csr_matrix((data, S.indices[keep], indptr),
                                   shape=(len(rows), S.shape[1])))
        keys_out.append(keys)
    return SparseParams(params.groups, params.q, S_out, keys_out, params.lambdas, params.info)


def round_float32(params: SparseParams) -> SparseParams:
    """The values of S rounded to float32 (kept as float64): ~1e-7 relative, and a model whose
    folder stores them in half the bytes reads back exactly."""
    _check_union(params)
    S = [sp.csr_matrix((M.data.astype(np.float32).astype(np.float64), M.indices, M.indptr),
                       shape=M.shape) for M in params.S]
    return SparseParams(params.groups, params.q, S, params.keys, params.lambdas, params.info)


def choose_tau(params: SparseParams, rows: list, targets: np.ndarray, order=None,
               taus=DEFAULT_TAUS, max_cost: float = DEFAULT_MAX_COST):
    """The largest ``tau`` of ``taus`` whose held-out perplexity is at most ``(1 + max_cost)``
    times the unpruned model's; returns ``(tau, trace)``, trace = ``[(tau, nnz, ppl)]``."""
    def ppl(p):
        return float(np.exp(-sparse_scorer(p).log_proba(rows, targets, order).mean()))
    base = ppl(params)
    trace, best = [(None, sum(S.nnz for S in params.S), base)], None
    for tau in sorted(taus):
        p = prune_entries(params, tau, drop_rows=False)  # the same rows: ``rows`` stay valid
        trace.append((float(tau), sum(S.nnz for S in p.S), ppl(p)))
        if trace[-1][2] <= base * (1 + max_cost):
            best = float(tau)
    return best, trace


def compact_rich(params: SparseParams, heldout: list, bos_id: int, eos_id: int,
                 taus=DEFAULT_TAUS, log=None) -> SparseParams:
    """``prune_entries`` with the tau ``choose_tau`` picks among ``taus`` on ``heldout``
    (token-id sequences), then ``round_float32``. ``taus`` = (0,): the exact zeros, no choice
    to make (nothing is scored). Without held-out text only exact zeros are pruned."""
    tau = 0.0 if set(taus) == {0.0} or not heldout else None
    if tau is None:
        rows, targets, _, order = context_rows(params.groups, params.keys, heldout,
                                               params.vocab_size, bos_id, eos_id, with_order=True)
        tau, trace = choose_tau(params, rows, targets, order, taus)
        if log:
            log("      entries pruned on " + f"{len(targets)} held-out tokens: " + ", ".join(
                f"|v|<={t:g}: {n / 1e6:.2f}M ppl {p:.3f}" if t is not None else
                f"all {n / 1e6:.2f}M ppl {p:.3f}" for t, n, p in trace) + f"; chose {tau}")
    out = (prune_entries(params, tau, round32=True) if tau is not None
           else round_float32(params))
    return SparseParams(out.groups, out.q, out.S, out.keys, out.lambdas,
                        {**out.info, "prune_tau": tau})
