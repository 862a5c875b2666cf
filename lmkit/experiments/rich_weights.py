"""Research weightings of the feature-rich model, beside the one ``lmkit train`` uses.

Input and output as ``rich.fit_rich``: ``Counts`` of the rich model's groups, held-out token
sequences -> ``SparseParams`` with the weights folded into S (``lambdas`` all 1). ``fit_rich``
fits one weight per group x entry-count bucket; the alternatives compared in docs/quality.md
(``scripts/quality.py --buckets``, ``--entry-edges`` with no value) are:

- ``entry_edges=None, bucket_edges=None``: one weight per group (``params.with_lambdas``);
- ``entry_edges=None, bucket_edges=E``: one weight per group x history-count bucket (the count
  of the row's history, lower bounds ``E``), folded into the rows (``explicit.fold_lambdas``);
- ``entry_edges`` and ``bucket_edges``: one weight per group x entry bucket x history bucket.

The steps around the search (solve, held-out rows, refit on ``counts + refit``, the weights'
note in ``info``) are ``rich.py``'s own.
"""
from __future__ import annotations

import numpy as np

from ..counts import Counts
from ..explicit import choose_lambdas, count_buckets, fold_entry_lambdas, fold_lambdas, history_counts
from ..params import SparseParams
from ..rich import (DEFAULT_HESSIAN_EVERY, DEFAULT_HESSIAN_TOKENS, DEFAULT_TOL, _entry_buckets,
                    _release, fit_rich, heldout_rows, report_search, solve_rich, summed,
                    weights_rule)


def entry_row_buckets(counts: Counts, params: SparseParams, entry_edges, row_edges):
    """Bucket of every stored value: its entry-count bucket times the history-count bucket of
    its row (``len(row_edges) + 1`` of them); returns ``(buckets per group, n_buckets)``."""
    eb, B = _entry_buckets(counts, params, entry_edges)
    R = len(row_edges) + 1
    B *= R
    dtype = np.int8 if B <= 127 else np.int16 if B <= 32767 else np.int64
    rb = [count_buckets(h, row_edges) for h in history_counts(counts, params)]
    return [e.astype(dtype) * dtype(R) + np.repeat(r.astype(dtype), np.diff(S.indptr))
            for e, r, S in zip(eb, rb, params.S)], B


def fit_rich_weighted(counts: Counts, heldout: list, bos_id: int, eos_id: int, *,
                      discount=None, entry_edges=None, bucket_edges=None,
                      hessian_every: int = DEFAULT_HESSIAN_EVERY,
                      hessian_tokens: int | None = DEFAULT_HESSIAN_TOKENS,
                      tol: float = DEFAULT_TOL, refit: Counts | None = None, max_memory=None,
                      log=None, consume: bool = False) -> SparseParams:
    """``rich.fit_rich`` with the weighting chosen by ``entry_edges`` and ``bucket_edges``
    (see the module docstring); entry buckets alone are ``rich.fit_rich`` itself."""
    kw = dict(hessian_every=hessian_every, hessian_tokens=hessian_tokens, tol=tol)
    if entry_edges is not None and bucket_edges is None:
        return fit_rich(counts, heldout, bos_id, eos_id, discount=discount, entry_edges=entry_edges,
                        refit=refit, max_memory=max_memory, log=log, consume=consume, **kw)
    params, rows, targets = heldout_rows(counts, heldout, bos_id, eos_id, discount=discount,
                                         max_memory=max_memory, log=log)
    init = params.info["lambda_init"]
    buckets = None
    if entry_edges is not None:
        buckets, B = entry_row_buckets(counts, params, entry_edges, bucket_edges)
        lam, trace = choose_lambdas(params, rows, targets, init=np.repeat(init, B),
                                    entry_buckets=buckets, n_buckets=B, **kw)
    elif bucket_edges is None:
        lam, trace = choose_lambdas(params, rows, targets, init=init, **kw)
    else:
        rb = [count_buckets(h, bucket_edges) for h in history_counts(counts, params)]
        buckets = [np.where(r >= 0, b[np.maximum(r, 0)], 0) for b, r in zip(rb, rows)]
        rb = None
        lam, trace = choose_lambdas(params, rows, targets, init=init, buckets=buckets,
                                    n_buckets=len(bucket_edges) + 1, **kw)
    n_used = len(targets)
    report_search(log, trace, n_used)
    del rows, targets, buckets  # the search's state goes before the model is solved again
    if refit is not None:
        params = None
        counts, consume = summed(counts, refit, consume), True
        params = solve_rich(counts, discount=discount)
    if entry_edges is not None:
        buckets, _ = entry_row_buckets(counts, params, entry_edges, bucket_edges)
        if consume:
            _release(counts)
        out = fold_entry_lambdas(params, lam, buckets, entry_edges=list(entry_edges),
                                 lambda_trace=trace, bucket_edges=list(bucket_edges))
    elif bucket_edges is None:
        out = params.with_lambdas(lam, lambda_trace=trace)
    else:
        rb = [count_buckets(h, bucket_edges) for h in history_counts(counts, params)]
        out = fold_lambdas(params, lam, rb, bucket_edges=list(bucket_edges), lambda_trace=trace)
    return weights_rule(out, n_used)
