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

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError
from .features import Suffix
from .io.npyfile import NpyAppender, open_npy, release_pages
from .params import SparseParams
from .scoring import context_rows, sparse_scorer

DEFAULT_TAUS = (0.0,)  # exact zeros: the same model, smaller
CURVE_TAUS = (0.0, 0.01, 0.02, 0.05, 0.1)
DEFAULT_MAX_COST = 0.001  # relative held-out perplexity increase allowed (0.1 %)


def _check_union(params: SparseParams) -> None:
    if params.info.get("loggamma") is not None:
        raise InputError("pruning entries of a pure n-gram (MKN) model would break its back-off "
                         "weights; prune n-gram models by count thresholds (prune)")


PRUNE_BLOCK = 1 << 20  # stored values pruned at once (``prune_entries``): block temporaries


def _row_blocks(indptr: np.ndarray, block: int):
    """``(lo, hi)`` row ranges of about ``block`` stored values each (whole rows)."""
    n_rows = len(indptr) - 1
    nnz = int(indptr[-1]) if n_rows >= 0 else 0
    cuts = np.unique(np.searchsorted(indptr, np.arange(0, nnz, block), side="right") - 1)
    cuts = cuts[(cuts >= 0) & (cuts < n_rows)]
    if not len(cuts) or cuts[0] != 0:
        cuts = np.concatenate([[0], cuts])
    return [(int(lo), int(hi)) for lo, hi in zip(cuts, [*cuts[1:], n_rows]) if hi > lo]


class _Pieces:
    """The pieces of one output array: in memory (concatenated at the end), or appended to a
    ``.npy`` file in ``folder`` and memory-mapped (``io.npyfile``): only a piece in memory."""

    def __init__(self, folder, name: str, dtype):
        self.dtype = np.dtype(dtype)
        self.parts, self.w = [], None
        if folder is not None:
            self.w = NpyAppender(Path(folder) / f"{name}.npy", self.dtype)

    def append(self, a) -> None:
        a = np.asarray(a, dtype=self.dtype)
        if self.w is not None:
            self.w.append(a)
        else:
            self.parts.append(a)

    def array(self) -> np.ndarray:
        if self.w is None:
            return (np.concatenate(self.parts) if self.parts
                    else np.zeros(0, dtype=self.dtype))
        return open_npy(self.w.close())


def _prune_group(g, S, keys, lam, tau, drop, round32, folder, block):
    """``(S, keys)`` of one group pruned (see ``prune_entries``), a block of whole rows at a
    time: the temporaries are block-sized, and with ``folder`` the output arrays are written
    there as they are made and memory-mapped (only a block of them in memory)."""
    indptr_in = np.asarray(S.indptr)
    out = {n: _Pieces(folder, f"pruned{g}.{n}", dt) for n, dt in
           (("data", np.float64 if round32 else S.data.dtype), ("indices", S.indices.dtype),
            ("indptr", S.indptr.dtype))}
    kout = _Pieces(folder, f"pruned{g}.keys", keys.dtype) if drop else None
    out["indptr"].append(np.zeros(1))
    total, n_rows = 0, 0
    for lo, hi in _row_blocks(indptr_in, block):
        e0, e1 = int(indptr_in[lo]), int(indptr_in[hi])
        data = S.data[e0:e1]
        keep = np.abs(lam * data) > tau
        csum = np.zeros(e1 - e0 + 1, dtype=np.int64)
        np.cumsum(keep, out=csum[1:])
        ptr = indptr_in[lo:hi + 1] - e0
        counts = csum[ptr[1:]] - csum[ptr[:-1]]  # kept values per row
        if drop:
            rows = np.flatnonzero(counts)
            kout.append(keys[lo:hi][rows])
            counts = counts[rows]
        kept = data[keep]
        if round32:  # as round_float32 rounds (float64 holding float32 values)
            kept = kept.astype(np.float32).astype(np.float64)
        out["data"].append(kept)
        out["indices"].append(S.indices[e0:e1][keep])
        out["indptr"].append(total + np.cumsum(counts))
        total += int(counts.sum())
        n_rows += len(counts)
        # a mapped model's read pages leave the RSS
        release_pages(data, S.indices[e0:e1], indptr_in[lo:hi + 1],
                      None if keys is None else keys[lo:hi])
    data, indices, indptr = (out[n].array() for n in ("data", "indices", "indptr"))
    return (sp.csr_matrix((data, indices, indptr), shape=(n_rows, S.shape[1])),
            kout.array() if drop else keys)


def prune_entries(params: SparseParams, tau: float, drop_rows: bool = True,
                  round32: bool = False, folder=None,
                  block: int = PRUNE_BLOCK) -> SparseParams:
    """Drop every entry with ``|lambda_g S_g[i, j]| <= tau`` (tau < 0: keep all), and with
    ``drop_rows`` the rows this leaves empty in groups with lookup keys (see the module
    docstring; without it the rows, keys and context rows of the model stay valid). With
    ``round32`` the kept values are rounded as ``round_float32`` rounds them, group by group
    in the pruned copy (no second copy of the model).

    Each group is pruned ``block`` stored values (whole rows) at a time; ``folder``: the
    pruned arrays are written there group by group as they are made and memory-mapped
    (``--max-memory``: the pruned model is never in memory; the same numbers, tested)."""
    _check_union(params)
    S_out, keys_out = [], []
    for g, (S, keys, group) in enumerate(zip(params.S, params.keys, params.groups)):
        drop = drop_rows and keys is not None and not isinstance(group, Suffix)
        S2, k2 = _prune_group(g, S, keys, params.lambdas[g], tau, drop, round32, folder, block)
        S_out.append(S2)
        keys_out.append(k2)
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
                 taus=DEFAULT_TAUS, log=None, folder=None) -> SparseParams:
    """``prune_entries`` with the tau ``choose_tau`` picks among ``taus`` on ``heldout``
    (token-id sequences), then ``round_float32``. ``taus`` = (0,): the exact zeros, no choice
    to make (nothing is scored). Without held-out text only exact zeros are pruned.
    ``folder``: the compacted groups are written there as they are made, memory-mapped
    (``prune_entries``)."""
    tau = 0.0 if set(taus) == {0.0} or not heldout else None
    if tau is None:
        rows, targets, _, order = context_rows(params.groups, params.keys, heldout,
                                               params.vocab_size, bos_id, eos_id, with_order=True)
        tau, trace = choose_tau(params, rows, targets, order, taus)
        n_targets = len(targets)
        del rows, targets, order
        # the pages of a mapped model that scoring touched leave the resident set (a no-op
        # in memory): the pruning below reads each group once more, a block at a time
        release_pages(*(a for S, k in zip(params.S, params.keys)
                        for a in (S.data, S.indices, S.indptr, k)))
        if log:
            log("      entries pruned on " + f"{n_targets} held-out tokens: " + ", ".join(
                f"|v|<={t:g}: {n / 1e6:.2f}M ppl {p:.3f}" if t is not None else
                f"all {n / 1e6:.2f}M ppl {p:.3f}" for t, n, p in trace) + f"; chose {tau}")
    out = (prune_entries(params, tau, round32=True, folder=folder) if tau is not None
           else round_float32(params))
    return SparseParams(out.groups, out.q, out.S, out.keys, out.lambdas,
                        {**out.info, "prune_tau": tau})
