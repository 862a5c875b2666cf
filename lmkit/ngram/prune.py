r"""Entropy pruning (Stolcke 1998) of an n-gram model: fewer n-grams, least relative entropy lost.

Input: a pure n-gram ``LanguageModel`` (``Suffix(1..M)`` groups, lambdas 1: an ``lmkit train
--order N`` model or an imported ARPA). Output: a ``LanguageModel`` of the same form whose
listed n-grams are a subset of the input's, with their probabilities unchanged and the
back-offs recomputed so every context is normalised (as SRILM ``ngram -prune``).

Criterion: dropping the listed n-gram ``h w`` makes ``p(w|h) = alpha'(h) p(w|h')`` with
``alpha'(h) = (beta(h) + p(w|h)) / (beta'(h) + p(w|h'))``, where ``beta(h) = 1 - sum_listed p(v|h)``
and ``beta'(h) = 1 - sum_listed p(v|h')``; the relative entropy of the model to the pruned one
rises by (Stolcke 1998, eq. 6)::

    D(h w) = -P(h) [ p(w|h) (log p(w|h') + log alpha'(h) - log p(w|h))
                     + beta(h) (log alpha'(h) - log alpha(h)) ],

and the n-gram is pruned when the perplexity would rise by less than ``threshold``, relatively:
``exp(D) - 1 < threshold`` (SRILM's ``-prune`` unit). ``P(h)`` is the model's own marginal
probability of the history, by the chain rule; a history starting with ``<s>`` uses
``p(</s>)`` for ``<s>`` (the chance that a position starts a sentence). Every n-gram is judged
against the unpruned model, as in Stolcke's paper; an n-gram stays when a kept longer n-gram
needs it, as its suffix ``h' w`` or as its context ``h``, so the model stays ARPA-exportable.
"""
from __future__ import annotations

import numpy as np

from ..config import PruneConfig, check_option
from ..errors import InputError, OptionError
from ..model import LanguageModel
from .packed import check_arpa_exportable, find_pairs, packed_view, pair_index, suffix_params
from .tables import mkn_log_proba
from ..sparse import lookup_rows


def stationary_unigram(params, loggammas, bos: int, eos: int, iters: int = 100,
                       tol: float = 1e-12) -> np.ndarray:
    """The token marginal pi (V,) of the model's bigram chain run over concatenated sentences
    (after </s> comes the <s> context): pi = pi P by power iteration, sparse work per step.

    Not q: a Kneser-Ney q is a continuation distribution, a poor estimate of how often a
    token occurs (Chelba et al. 2010 show it is what makes entropy pruning of KN models fail).
    """
    V, q = params.vocab_size, params.q
    rows = lookup_rows(params.keys[0], np.arange(V))
    rows[eos] = lookup_rows(params.keys[0], np.array([bos]))[0]
    has = rows >= 0
    gam = np.ones(V)
    gam[has] = np.exp(loggammas[0][rows[has]])
    E = params.S[0].tocsr().copy()
    E.data = np.expm1(E.data)
    pi = q.copy()
    for _ in range(iters):
        w = pi * gam
        wr = np.zeros(E.shape[0])
        np.add.at(wr, rows[has], w[has])
        new = q * (w.sum() + E.T @ wr)
        new /= new.sum()
        done = np.abs(new - pi).sum() < tol
        pi = new
        if done:
            break
    return np.maximum(pi, 1e-300)


def _log_marginals(params, loggammas, keys, L: int, bos: int, eos: int, log_pi=None) -> np.ndarray:
    """log P(h) of length-L histories (packed keys) under the model, by the chain rule from
    the token marginal ``log_pi`` (default log q)."""
    V, q = params.vocab_size, params.q
    if L == 1:
        out = (np.log(q) if log_pi is None else log_pi)[keys].copy()
        # P(<s>) = the chance a position starts a sentence = P(</s>)
        out[keys == bos] = np.log(q[eos]) if log_pi is None else log_pi[eos]
        return out
    r = V ** (L - 1)
    prefix, target = keys % r, keys // r
    up, inv = np.unique(prefix, return_inverse=True)
    lp = _log_marginals(params, loggammas, up, L - 1, bos, eos, log_pi)[inv]
    rows = [lookup_rows(k, prefix // V ** (L - 2 - j)) if j + 1 <= L - 1
            else np.full(len(keys), -1, np.int64) for j, k in enumerate(params.keys)]
    return lp + mkn_log_proba(params, rows, target, loggammas)


def check_prunable(params) -> None:
    """An ``InputError`` unless ``params`` is a pure n-gram model (the form pruning keeps)."""
    try:
        check_arpa_exportable(params)
    except InputError:
        names = [g.name for g in params.groups][:8]
        lam = getattr(params, "lambdas", None)
        raise OptionError(f"pruning needs a pure n-gram model (groups suffix1..suffixM, lambdas 1), "
                         f"this one has groups {names}"
                         + (f" and lambdas {[round(float(x), 4) for x in lam][:8]}"
                            if lam is not None else "")
                         + "; pass a model trained with order N (no context, no lambdas) "
                         "or imported with `lmkit import-arpa`") from None


def entropy_criteria(model, history: str = "stationary") -> list:
    """Per suffix group m: ``(hist, cols, logp, lower, D)`` per listed n-gram (natural logs).

    ``history``: how P(h) starts its chain rule: "stationary" (``stationary_unigram``) or
    "q" (the model's unigram q, as SRILM does with a KN model).
    """
    if history not in ("stationary", "q"):
        raise InputError(f"history must be stationary or q, got {history!r}")
    params, tok = model.params, model.tokenizer
    check_prunable(params)
    params, logps, loggammas = packed_view(params)  # this module works on packed history keys
    log_pi = (np.log(stationary_unigram(params, loggammas, tok.bos_id, tok.eos_id))
              if history == "stationary" else None)
    out = []
    for m, (S, logp, lg) in enumerate(zip(params.S, logps, loggammas)):
        S = S.tocsr()
        S.sort_indices()
        R = S.shape[0]
        er = np.repeat(np.arange(R), np.diff(S.indptr))
        lower = logp - S.data - lg[er]  # log p(w|h'): logp = log gamma + lower + S
        p, pl = np.exp(logp), np.exp(lower)
        beta = np.maximum(1 - np.bincount(er, p, minlength=R), 1e-300)
        beta_l = np.maximum(1 - np.bincount(er, pl, minlength=R), 1e-300)
        log_alpha2 = np.log(beta[er] + p) - np.log(beta_l[er] + pl)
        ph = np.exp(_log_marginals(params, loggammas, params.keys[m], m + 1, tok.bos_id,
                                   tok.eos_id, log_pi))
        D = -ph[er] * (p * (lower + log_alpha2 - logp) + beta[er] * (log_alpha2 - lg[er]))
        out.append((params.keys[m][er], S.indices.astype(np.int64), logp, lower, D))
    return out


def prune_entropy(model, threshold: float, *, criteria=None):
    """The entropy-pruned model (see the module docstring); ``lmkit prune``.

    ``criteria``: the output of ``entropy_criteria(model)``, to prune one model at several
    thresholds without recomputing it.
    """
    threshold = check_option(PruneConfig, "threshold", threshold)  # >= 0, inf keeps unigrams
    crit = entropy_criteria(model) if criteria is None else criteria
    params = model.params
    V, M = params.vocab_size, len(crit)
    keep = [np.expm1(D) >= threshold for (_, _, _, _, D) in crit]
    for m in range(M - 1, 0, -1):  # a kept n-gram needs its suffix and its context one order down
        hist, cols = crit[m][0][keep[m]], crit[m][1][keep[m]]
        index = pair_index(crit[m - 1][0], crit[m - 1][1], V)
        r = V ** m
        for h, w in ((hist // V, cols), (hist % r, hist // r)):
            pos = find_pairs(index, h, w)
            assert (pos >= 0).all(), "pruning: the model's patterns are not nested"
            keep[m - 1][pos] = True
    levels = []
    for (hist, cols, logp, lower, _), k in zip(crit, keep):
        hist, cols, logp, lower = hist[k], cols[k], logp[k], lower[k]
        rows, inv = np.unique(hist, return_inverse=True)
        # back-off that renormalises each context over its kept n-grams
        log_gamma = (np.log(np.maximum(1 - np.bincount(inv, np.exp(logp)), 1e-300))
                     - np.log(np.maximum(1 - np.bincount(inv, np.exp(lower)), 1e-300)))
        levels.append((hist, cols, logp - log_gamma[inv] - lower))
    # the stored back-off weights (loggamma) belong to the unpruned rows: derived again on load
    info = {**{k: v for k, v in params.info.items()
               if not k.startswith("lambda_trace") and k != "loggamma"},
            "prune_entropy": float(threshold), "ngrams_before": [len(c[0]) for c in crit],
            "ngrams_after": [int(k.sum()) for k in keep]}
    pruned, _ = suffix_params(params.q, levels, V, info)
    config = {**model.config, "prune_entropy": float(threshold)}
    return LanguageModel(model.tokenizer, pruned, config, model.corpus)


def n_ngrams(model) -> int:
    """Listed n-grams of an n-gram model: V unigrams + the stored entries of every group."""
    return model.vocab_size + sum(S.nnz for S in model.params.S)


__all__ = ["prune_entropy", "entropy_criteria", "check_prunable", "n_ngrams"]
