"""Adaptive scoring: a static model + text -> scores of a model that keeps counting while it reads.

Input: a model (anything with ``encode_lines``, ``log_proba_ids``, ``tokenizer`` and
``vocab_size``, e.g. a ``LanguageModel``), the non-empty lines to score in reading order, and an
``AdaptConfig``. Output: the natural-log probability of every target (each line's tokens, then
its EOS), float64 (T,), and the same summary as ``evaluate.evaluate_lines``.

What adapts (docs/adapt.md): the static model is frozen (its groups, discounts and weights are
those of the saved model) and scores each line as one sequence; ``cache.py`` mixes into it the
counts of the text already scored (orders 0..cache_order-1, histories reaching
``context_lines`` lines back). Every target is scored by counts of exactly the text before it:
changing a later line changes no earlier score (tests/test_adapt.py). The exact re-solve of a
pure n-gram model on train + scored text is ``adapt_ngram.AdaptiveNgram``.
"""
from __future__ import annotations

import math

import numpy as np

from . import cache
from .config import AdaptConfig
from .errors import InputError

# Static scoring batch (lines): memory stays bounded; the sums do not depend on it.
CHUNK_LINES = 20_000


def static_log_proba(model, lines: list) -> tuple[np.ndarray, list]:
    """The static model's log-probability of every target of ``lines`` in reading order,
    float64 (T,), and the token ids of each line."""
    parts, seqs = [], []
    for a in range(0, len(lines), CHUNK_LINES):
        s = model.encode_lines(lines[a:a + CHUNK_LINES])
        logp, seq_index = model.log_proba_ids(s)
        assert np.all(np.diff(seq_index) >= 0), "targets must come in reading order"
        parts.append(np.asarray(logp, dtype=np.float64))
        seqs.extend(s)
    return (np.concatenate(parts) if parts else np.zeros(0)), seqs


def cache_weights(cfg: AdaptConfig) -> cache.CacheWeights:
    """The weights ``cfg`` asks for: its own, else the defaults chosen on the valid split."""
    if cfg.cache_weights is not None:
        return cache.CacheWeights.from_json(cfg.cache_weights)
    return cache.default_weights(cfg.effective_cache_order, cfg.effective_cache_window)


def adaptive_log_proba(model, lines: list, cfg: AdaptConfig, weights=None) -> tuple:
    """Adaptive log-probability of every target of ``lines`` (non-empty str, reading order):
    ``(logp float64 (T,), seqs)``. ``weights``: ``cache.CacheWeights`` (default ``cache_weights``)."""
    w = cache_weights(cfg) if weights is None else weights
    static, seqs = static_log_proba(model, lines)
    if not seqs:
        return static, seqs
    stream, line = cache.stream_of(seqs, model.tokenizer.eos_id)
    stats = cache.level_stats(stream, line, w.order, w.window, w.window_order,
                              cfg.effective_context_lines, model.vocab_size)
    return cache.cache_log_proba(static, stats, w), seqs


def fit_weights(model, lines: list, cfg: AdaptConfig) -> tuple:
    """Cache weights of ``cfg.effective_cache_order`` fitted on ``lines`` (held-out text, scored
    adaptively as at test time): ``(CacheWeights, nll nats per token)``; deterministic."""
    static, seqs = static_log_proba(model, lines)
    if not seqs:
        raise InputError("nothing to fit the cache on: the held-out text has no non-empty "
                         "lines; pass a corpus with a valid split")
    stream, line = cache.stream_of(seqs, model.tokenizer.eos_id)
    K, W = cfg.effective_cache_order, cfg.effective_cache_window
    R = cache.WINDOW_ORDER if W else 0
    stats = cache.level_stats(stream, line, K, W, R, cfg.effective_context_lines,
                              model.vocab_size)
    return cache.fit_cache(static, stats, K, W, R)


def summary(logp: np.ndarray, lines: list) -> dict:
    """The keys of ``evaluate.evaluate_lines`` for targets ``logp`` of ``lines``."""
    if len(logp) == 0:
        raise InputError("nothing to evaluate: the text has no non-empty lines; pass a "
                         "non-empty corpus")
    nll = -float(logp.sum())
    n_bytes = sum(len(s.encode("utf-8")) + 1 for s in lines)
    ppl = math.exp(nll / len(logp))
    if not math.isfinite(ppl):
        raise FloatingPointError(f"non-finite perplexity (nll={nll}); this is a bug, please report it")
    return {"sequences": len(lines), "tokens": len(logp), "bytes": n_bytes, "nll_nats": nll,
            "perplexity": ppl, "bits_per_byte": nll / math.log(2) / n_bytes}


def evaluate_adaptive(model, lines: list, cfg: AdaptConfig, heldout=None) -> dict:
    """``evaluate_lines`` for adaptive scoring: the summary plus ``adapt`` (the options and the
    cache weights used; with ``heldout`` lines the weights are fitted on them first)."""
    if heldout is not None:
        w, nll = fit_weights(model, heldout, cfg)
    else:
        w, nll = cache_weights(cfg), None
    logp, _ = adaptive_log_proba(model, lines, cfg, w)
    out = summary(logp, lines)
    out["adapt"] = {"cache_order": w.order, "cache_window": w.window,
                    "context_lines": cfg.effective_context_lines,
                    "cache_weights": w.to_json(), "fitted_on_heldout": heldout is not None}
    if nll is not None:
        out["adapt"]["heldout_nll_per_token"] = nll
    return out


def score_units_adaptive(model, units: list, cfg: AdaptConfig) -> list:
    """``docscore.score_units`` with adaptive scoring: one result dict per ``(meta, lines)``
    unit, the units read in order as one text (each unit's lines are scored after every
    earlier unit's; an empty line is a sequence of EOS alone, as there)."""
    lines = [x for _, ls in units for x in ls]
    logp, seqs = adaptive_log_proba(model, lines, cfg)
    n_tok = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=len(seqs))
    line_nll = -np.add.reduceat(logp, np.cumsum(n_tok) - n_tok)  # every line has its EOS
    line_bytes = np.fromiter((len(x.encode("utf-8")) + 1 for x in lines), dtype=np.int64,
                             count=len(lines))
    starts = np.cumsum([0] + [len(ls) for _, ls in units[:-1]])  # every unit has >= 1 line
    nll = np.add.reduceat(line_nll, starts).tolist()
    tok = np.add.reduceat(n_tok, starts).tolist()
    n_bytes = np.add.reduceat(line_bytes, starts).tolist()
    ln2 = math.log(2)
    return [{**meta, "tokens": t, "nll_nats": x, "perplexity": math.exp(x / t),
             "bits_per_byte": x / ln2 / b}
            for (meta, _), x, t, b in zip(units, nll, tok, n_bytes)]
