"""Interpolation: several models with one tokenizer -> one model, mixed linearly or log-linearly.

- Linear (what SRILM ``ngram -mix-lm`` and KenLM's ``interpolate`` do): ``p(w|h) = sum_k
  w_k p_k(w|h)`` with weights fitted by EM on held-out text (``fit_weights``: the E-step is the
  posterior of each component per token, the M-step its mean; the held-out likelihood never
  decreases). The result is a ``MixtureModel`` (``mixture.py``: scoring and the folder, what
  ``load`` reads; it never imports this module).
- Log-linear (``loglinear_merge``): ``log p = log q + sum over the union of every model's
  feature groups of lambda_g S_g[row_g] - log Z`` — one sparse softmax layer, a ``LanguageModel``
  again. q is the q of the component with the best held-out likelihood, and the lambdas start
  at that component's own (the others' at 0), so the start *is* that model; they are then
  refitted on held-out text by ``explicit.choose_lambdas``, whose line search only accepts
  steps that lower the held-out NLL: the merge never fits the held-out text worse than the best
  component. Needs sparse components with S >= 0 (every lmkit solver; an imported ARPA may
  have S < 0).
"""
from __future__ import annotations

import math

import numpy as np

from .config import InterpolateConfig, check_option
from .errors import InputError, OptionError
from .explicit import choose_lambdas
from .mixture import MixtureModel, check_same_tokenizer
from .model import LanguageModel
from .params import SparseParams
from .scoring import context_rows
from .solve import fit_heldout


def fit_weights(logps: np.ndarray, *, max_iter: int = 200, tol: float = 1e-7,
                init=None) -> tuple[np.ndarray, list]:
    """EM for mixture weights. ``logps`` (K, N): log p_k of each held-out token.

    Returns ``(weights (K,), trace [(weights, mean nll)])``. Example: two components that
    each predict half of the tokens perfectly and the rest with p = 0.1 get weights (.5, .5).
    """
    K = logps.shape[0]
    w = np.full(K, 1.0 / K) if init is None else np.asarray(init, np.float64) / np.sum(init)
    trace = []
    prev = np.inf
    for _ in range(max_iter):
        joint = np.log(np.maximum(w, 1e-300))[:, None] + logps
        mix = np.logaddexp.reduce(joint, axis=0)
        nll = float(-mix.mean())
        trace.append((w.tolist(), nll))
        if prev - nll < tol:
            break
        prev = nll
        w = np.exp(joint - mix).mean(axis=1)
    return w, trace


# ---- fitting ----------------------------------------------------------------------------------
def interpolate_linear(models, heldout_lines, weights="auto") -> MixtureModel:
    """A ``MixtureModel``; ``weights="auto"`` fits them by EM on ``heldout_lines``."""
    check_same_tokenizer(models)
    if isinstance(weights, str) and weights == "auto":
        seqs = models[0].tokenizer.encode_batch(list(heldout_lines))
        if not seqs:
            raise OptionError("no held-out text to fit the mixture; pass some or give weights")
        logps = np.stack([m.log_proba_ids(seqs)[0] for m in models])
        w, trace = fit_weights(logps)
        info = {"weights_rule": f"EM on {logps.shape[1]} held-out tokens",
                "heldout_perplexity": math.exp(trace[-1][1]), "em_iterations": len(trace)}
        return MixtureModel(models, w, info)
    try:
        w = np.asarray([float(x) for x in weights])
    except (TypeError, ValueError):
        w = np.full(0, np.nan)
    if len(w) != len(models) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise OptionError(f"weights needs {len(models)} non-negative values (or auto), got {list(weights)}")
    return MixtureModel(models, w / w.sum(), {"weights_rule": "given"})


def loglinear_merge(models, heldout_lines, *, max_memory=None):
    """One sparse ``LanguageModel`` over the union of the models' feature groups (docstring)."""
    check_same_tokenizer(models)
    for m in models:
        if not isinstance(m, LanguageModel):
            what = "a linear mixture" if isinstance(m, MixtureModel) else "a neural model"
            raise OptionError(f"log-linear merge needs explicit sparse models, one of them is "
                              f"{what}; use method linear (mixtures and neural models mix linearly)")
        p = m.params
        if not isinstance(p, SparseParams) or any((S.data < 0).any() for S in p.S):
            raise OptionError(f"log-linear merge needs sparse models with S >= 0 ({m.describe()}); "
                              "use method linear")
    names = [g.name for m in models for g in m.params.groups]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:  # one group per name: a model folder names each group once
        raise OptionError(f"log-linear merge needs models with different feature groups, but "
                          f"{', '.join(shared)} occur in more than one; use method linear")
    tok = models[0].tokenizer
    seqs = tok.encode_batch(list(heldout_lines))
    if not seqs:
        raise InputError("no held-out text to fit the lambdas; pass some")
    best = int(np.argmax([m.log_proba_ids(seqs)[0].sum() for m in models]))
    groups = [g for m in models for g in m.params.groups]
    S = [x for m in models for x in m.params.S]
    keys = [k for m in models for k in m.params.keys]
    init = np.concatenate([m.params.lambdas * (k == best) for k, m in enumerate(models)])
    params = SparseParams(groups, models[best].params.q, S, keys, init,
                          {"merged_from": [m.describe() for m in models], "q_from": best})
    rows, targets, _ = context_rows(groups, keys, seqs, tok.vocab_size, tok.bos_id, tok.eos_id)
    rows, targets = fit_heldout(params, rows, targets, max_memory)
    lam, trace = choose_lambdas(params, rows, targets, init=init)
    params = params.with_lambdas(lam, lambda_rule=f"log-linear merge, projected Newton on "
                                 f"{len(targets)} held-out tokens", lambda_trace=trace)
    config = {"merged": "loglinear", "components": [m.config for m in models]}
    return LanguageModel(tok, params, config, {"name": "merged"})


def interpolate(models, heldout_lines, *, method: str = InterpolateConfig.method, weights="auto"):
    """``lmkit interpolate``: a ``MixtureModel`` (linear) or a ``LanguageModel`` (loglinear)."""
    check_option(InterpolateConfig, "method", method)
    if method == "linear":
        return interpolate_linear(models, heldout_lines, weights)
    if method == "loglinear":
        if not (isinstance(weights, str) and weights == "auto"):
            raise OptionError("weights is for method linear; the log-linear merge refits the "
                              "lambda of each group on held-out text")
    return loglinear_merge(models, heldout_lines)


__all__ = ["MixtureModel", "fit_weights", "interpolate", "interpolate_linear", "loglinear_merge"]
