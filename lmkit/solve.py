"""Fit: counts + held-out token ids -> ``SparseParams`` (closed form, then the group weights).

``fit(counts, heldout)`` is the one function every caller (``lmkit train``, the scripts, user
code) uses to turn counts into a model:

1. the closed form per group (``solve``) — suffix groups: interpolated modified Kneser-Ney,
   ``ngram.solve_ngram``; every other group by its kind's closed form (``kinds.py``) against the
   MKN unigram; window groups alone: ``explicit.solve_explicit``;
2. the weights lambda (G,): given, or fitted on the held-out sequences by a few projected Newton
   steps on the convex held-out NLL (``explicit.choose_lambdas``; W untouched). The rule, by
   groups: a pure n-gram model keeps every lambda at 1 (that *is* MKN, ARPA-exportable); window
   groups start at 0 (the first at 1 when there are no suffix groups) and every lambda is free;
3. optionally ``refit``: counts of more text (typically the held-out text itself, when it was
   carved out of the training text) are added and the closed form re-solved with the same lambdas,
   so no training text is lost.

Pure: no I/O, no globals; ``log`` (a callable taking one line) reports progress if given.
"""
from __future__ import annotations

import numpy as np

from .counts import Counts
from .errors import InputError
from .explicit import choose_lambdas, estimate_discount, solve_explicit
from .features import Suffix, check_suffix_chain, context_rows
from .kinds import closed_form
from .ngram import solve_ngram
from .parallel import fit_heldout
from .params import SparseParams
from .tokenizer import BOS_ID, EOS_ID


def lambda_start(groups: list) -> tuple[np.ndarray, np.ndarray]:
    """Initial lambdas (G,) and which of them stay fixed (G,) bool, from the kinds of groups."""
    suffix = np.array([isinstance(g, Suffix) for g in groups])
    init = suffix.astype(np.float64)
    if not suffix.any():
        init[0] = 1.0
    fixed = np.full(len(groups), bool(suffix.all()))
    return init, fixed


def solve(counts: Counts, *, discount=None, prune=None) -> SparseParams:
    """The closed form for every group of ``counts``, lambdas all 1.

    With suffix groups: the suffix chain by interpolated modified Kneser-Ney
    (``ngram.solve_ngram``; ``discount`` and ``prune`` are its options), every other group by
    its kind's closed form (``kinds.closed_form``) against the MKN unigram, with the discount
    estimated from its own counts. Windows alone: ``explicit.solve_explicit`` (continuation
    unigram, ``discount`` per window).
    """
    groups = list(counts.groups)
    if not any(isinstance(g, Suffix) for g in groups):
        if prune:
            raise ValueError(f"prune {list(prune)} needs n-gram (suffix) groups")
        return solve_explicit(counts, discount=discount)
    M = check_suffix_chain(groups)
    chain = Counts(counts.vocab_size, groups[:M], counts.F[:M], counts.keys[:M], counts.target,
                   counts.n_sequences, counts.n_tokens)
    params = solve_ngram(chain, discount=discount, prune=prune)
    if len(groups) == M:
        return params
    S, keys = list(params.S), list(params.keys)
    for g, F, k in zip(groups[M:], counts.F[M:], counts.keys[M:]):
        if isinstance(g, Suffix):
            raise InputError(f"suffix groups must be suffix1..suffixM first, got "
                             f"{[x.name for x in groups]}; build them with make_groups(order=N)")
        S.append(closed_form(g, F, k, params.q, estimate_discount(F)))
        keys.append(k)
    info = {k: v for k, v in params.info.items() if k != "loggamma"}  # not pure MKN
    # with other groups every lambda is tuned, starting from MKN: measured 78.3 vs 80.5 test
    # ppl with the suffix lambdas fixed at 1 (order 5 + window 1..3, scripts/ngram_vs_window.py)
    info.update(lambda_init=[1.0] * M + [0.0] * (len(groups) - M),
                lambda_fixed=[False] * len(groups))
    return SparseParams(groups, params.q, S, keys, np.ones(len(groups)), info)


def fit(counts: Counts, heldout=(), *, discount=None, prune=None, lambdas=None, refit=None,
        max_memory=None, bos_id: int = BOS_ID, eos_id: int = EOS_ID, log=None) -> SparseParams:
    """Closed-form parameters with fitted (or given) group weights.

    counts: ``Counts`` of the training text. heldout: list of token-id sequences (no BOS/EOS) to
    fit the lambdas on; empty = keep the start values. lambdas: (G,) given weights (no search).
    refit: ``Counts`` added after the lambdas are chosen (see the module docstring).
    """
    groups = counts.groups
    params = solve(counts, discount=discount, prune=prune)
    init, fixed = lambda_start(groups)
    if lambdas is not None:
        lam = np.asarray(lambdas, dtype=np.float64)
        if lam.shape != (len(groups),) or not np.all(np.isfinite(lam)) or (lam < 0).any():
            raise ValueError(f"lambdas needs {len(groups)} finite values >= 0, got {list(lambdas)}")
        params = params.with_lambdas(lam, lambda_rule="given")
    elif len(heldout) and len(groups) > 1 and not fixed.all():
        rows, targets, _ = context_rows(groups, params.keys, list(heldout), counts.vocab_size,
                                        bos_id, eos_id)
        rows, targets = fit_heldout(params, rows, targets, max_memory, log)
        # the G^2 Hessian on every 4th chunk of positions (gradient and NLL stay exact, so the
        # minimiser is the same): measured 10.3 vs 21.7 CPU s for the default model, held-out
        # NLL equal to 4e-11
        lam, trace = choose_lambdas(params, rows, targets, init=init, fixed=fixed,
                                    hessian_every=4)
        params = params.with_lambdas(lam, lambda_rule=f"projected Newton minimisation of "
                                     f"held-out NLL on {len(targets)} tokens", lambda_trace=trace,
                                     heldout_tokens=len(targets))
        if log:
            log("      lambdas " + ", ".join(f"{g.name}={x:g}" for g, x in zip(groups, lam))
                + f" (held-out ppl {np.exp(trace[-1][1]):.2f} on {len(targets)} tokens)")
    if refit is not None:
        rule = {k: v for k, v in params.info.items() if k.startswith("lambda_")}
        params = solve(counts + refit, discount=discount, prune=prune).with_lambdas(
            params.lambdas, **rule)
    return params
