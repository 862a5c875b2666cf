"""Adaptive scoring: a static model + text -> scores of a model that keeps counting while it reads.

Input: a model (anything with ``encode_lines``, ``log_proba_ids``, ``tokenizer`` and
``vocab_size``, e.g. a ``LanguageModel``), the non-empty lines to score in reading order, and an
``AdaptConfig``. Output: the natural-log probability of every target (each line's tokens, then
its EOS), float64 (T,), and the same summary as ``evaluate.evaluate_lines``.

What adapts (docs/adapt.md), by ``AdaptConfig.adapt_mode``:

- ``cache`` (default): the static model is frozen (its groups, discounts and weights are those
  of the saved model) and scores each line as one sequence; ``cache.py`` mixes into it the
  counts of the text already scored (orders 0..cache_order-1, histories reaching
  ``context_lines`` lines back).
- ``counts``: a pure n-gram model (``lmkit train --order N``) is itself re-solved exactly on
  its training text + every line scored before (``adapt_ngram.adaptive_log_proba``; the
  training text is read again and checked against the model's corpus sha256, the discounts
  are the saved ones). Refused on other models.
- ``counts+cache``: the cache on top of ``counts`` instead of the static model.

Every target is scored by counts of exactly the text before it: changing a later line changes
no earlier score (tests/test_adapt.py, tests/test_adapt_exact.py).
"""
from __future__ import annotations

import hashlib
import math
import weakref

import numpy as np

from . import adapt_ngram, cache
from .config import AdaptConfig
from .corpus import load_corpus
from .counts import count_ngrams
from .errors import InputError, ModelFormatError, OptionError
from .features import Suffix

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


_TABLES = weakref.WeakKeyDictionary()  # model -> NgramTables (re-counting costs ~ training)
CORPUS_KEYS = ("corpus", "input", "dataset", "split", "text_field", "streaming")


def check_counts_model(model) -> None:
    """Refuse, in one line, a model that ``adapt_mode counts`` cannot re-solve exactly."""
    groups = list(getattr(model, "groups", None) or [])
    p = getattr(model, "params", None)
    info = getattr(p, "info", None) or {}
    pure = (groups and all(isinstance(g, Suffix) for g in groups)
            and [g.m for g in groups] == list(range(1, len(groups) + 1))
            and np.all(np.asarray(getattr(p, "lambdas", [0])) == 1.0)
            and info.get("smoothing") == "interpolated modified Kneser-Ney"
            and not any(info.get("prune") or [])
            and (getattr(model, "config", None) or {}).get("prune_entropy") is None
            and len(info.get("discounts") or []) == len(groups) + 1)
    if not pure:
        what = (f"{len(groups)} groups ({groups[0].name} .. {groups[-1].name})" if groups
                else f"a {type(model).__name__}")
        raise OptionError(f"adapt_mode counts re-solves a pure unpruned n-gram model "
                          f"(`lmkit train --order N`), and this model has {what}; use adapt_mode "
                          "cache")


def check_adapt_model(model, cfg: AdaptConfig) -> None:
    """Refuse, before any work, a model that ``cfg.adapt_mode`` cannot adapt."""
    if cfg.effective_adapt_mode != "cache":
        check_counts_model(model)


def model_tables(model) -> adapt_ngram.NgramTables:
    """The training counts of a pure n-gram ``model`` as ``adapt_ngram.NgramTables`` (its
    saved discounts; ``training_counts``). Cached per model object."""
    if model in _TABLES:
        return _TABLES[model]
    check_counts_model(model)
    counts = training_counts(model, list(model.groups))
    t = adapt_ngram.ngram_tables(counts, model.params.info["discounts"], _bos(model),
                                 model.tokenizer.eos_id)
    _TABLES[model] = t
    return t


def _bos(model) -> int:
    return int(model.params.info.get("bos_id", model.tokenizer.bos_id))


# the type of each corpus option in a manifest's config (a model folder is untrusted input)
_SOURCE_TYPES = {"corpus": (str, type(None)), "dataset": (str, type(None)), "split": (str,),
                 "text_field": (str,), "streaming": (bool,)}


def corpus_source(config: dict) -> dict:
    """The corpus options of a manifest's ``config``, type-checked: ``ModelFormatError`` (one
    line) for a value that is not what ``lmkit train`` writes there."""
    src = {k: config[k] for k in CORPUS_KEYS if k in config}
    for k, v in src.items():
        ok = (v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))
              if k == "input" else isinstance(v, _SOURCE_TYPES[k]))
        if not ok:
            raise ModelFormatError(f"the model's manifest has a config {k!r} of "
                                   f"{type(v).__name__} {str(v)[:40]!r}, not what lmkit train "
                                   "writes; the folder is damaged: train it again")
    if src.get("input") is not None:
        src["input"] = list(src["input"])
    return src


def training_counts(model, groups: list):
    """``counts.Counts`` of ``groups`` over ``model``'s training text (``model.config``'s corpus
    options) read and encoded again; refused unless its sha256 and token count are those of
    the model's manifest (the text it was trained on)."""
    c, rec = model.config, model.corpus
    src = corpus_source(c)
    try:
        corpus = load_corpus(**src)
        digest, chunks = hashlib.sha256(), []
        for chunk in corpus.iter_chunks(10_000):
            for line in chunk:
                digest.update(line.encode("utf-8") + b"\n")
            chunks.append(model.encode_lines(chunk))
    except (OSError, InputError) as e:
        raise OptionError(f"adapt_mode counts re-counts the model's training text "
                          f"({rec.get('name')}), which cannot be read: {e}") from None
    if digest.hexdigest() != rec.get("sha256"):
        raise OptionError(f"adapt_mode counts re-counts the model's training text, and "
                          f"{rec.get('name')} is not the text it was trained on (sha256 "
                          f"{digest.hexdigest()[:12]}, model {str(rec.get('sha256'))[:12]}); "
                          "restore that text or use adapt_mode cache")
    counts = count_ngrams(chunks, model.vocab_size, groups, _bos(model), model.tokenizer.eos_id)
    if counts.n_tokens != rec.get("tokens"):
        raise OptionError(f"the training text counts {counts.n_tokens} tokens and the model "
                          f"{rec.get('tokens')}: it was not trained on this text as a whole; use "
                          "adapt_mode cache")
    return counts


def encode(model, lines: list) -> list:
    """Token ids of every line, in batches of ``CHUNK_LINES``."""
    return [s for a in range(0, len(lines), CHUNK_LINES)
            for s in model.encode_lines(lines[a:a + CHUNK_LINES])]


def base_log_proba(model, lines: list, cfg: AdaptConfig) -> tuple[np.ndarray, list]:
    """What the cache mixes into (or, for ``counts``, the result): the static model's
    log-probabilities, or the exactly re-solved n-gram model's; ``(logp (T,), seqs)``."""
    if cfg.effective_adapt_mode == "cache":
        return static_log_proba(model, lines)
    tables = model_tables(model)
    seqs = encode(model, lines)
    return adapt_ngram.adaptive_log_proba(tables, seqs), seqs


def cache_weights(cfg: AdaptConfig) -> cache.CacheWeights:
    """The weights ``cfg`` asks for: its own, else the defaults chosen on the valid split."""
    if cfg.cache_weights is not None:
        return cache.CacheWeights.from_json(cfg.cache_weights)
    return cache.default_weights(cfg.effective_cache_order, cfg.effective_cache_window)


def adaptive_log_proba(model, lines: list, cfg: AdaptConfig, weights=None) -> tuple:
    """Adaptive log-probability of every target of ``lines`` (non-empty str, reading order):
    ``(logp float64 (T,), seqs)``. ``weights``: ``cache.CacheWeights`` (default ``cache_weights``)."""
    base, seqs = base_log_proba(model, lines, cfg)
    if not seqs or cfg.effective_adapt_mode == "counts":
        return base, seqs
    w = cache_weights(cfg) if weights is None else weights
    stream, line = cache.stream_of(seqs, model.tokenizer.eos_id)
    stats = cache.level_stats(stream, line, w.order, w.window, w.window_order,
                              cfg.effective_context_lines, model.vocab_size)
    return cache.cache_log_proba(base, stats, w), seqs


def fit_weights(model, lines: list, cfg: AdaptConfig) -> tuple:
    """Cache weights of ``cfg.effective_cache_order`` fitted on ``lines`` (held-out text, scored
    adaptively as at test time): ``(CacheWeights, nll nats per token)``; deterministic."""
    static, seqs = base_log_proba(model, lines, cfg)
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
    mode = cfg.effective_adapt_mode
    if mode == "counts":
        logp, _ = adaptive_log_proba(model, lines, cfg)
        out = summary(logp, lines)
        out["adapt"] = {"mode": mode, "order": len(model.groups) + 1}
        return out
    if heldout is not None:
        w, nll = fit_weights(model, heldout, cfg)
    else:
        w, nll = cache_weights(cfg), None
    logp, _ = adaptive_log_proba(model, lines, cfg, w)
    out = summary(logp, lines)
    out["adapt"] = {"mode": mode, "cache_order": w.order, "cache_window": w.window,
                    "context_lines": cfg.effective_context_lines,
                    "cache_weights": w.to_json(), "fitted_on_heldout": heldout is not None}
    if mode == "counts+cache":
        out["adapt"]["order"] = len(model.groups) + 1
    if nll is not None:
        out["adapt"]["heldout_nll_per_token"] = nll
    return out


def describe(adapt: dict) -> str:
    """One line for ``lmkit eval``: what adapted (the ``adapt`` dict of ``evaluate_adaptive``)."""
    parts = []
    if "order" in adapt:
        parts.append(f"order-{adapt['order']} MKN re-solved exactly after every line")
    if "cache_order" in adapt:
        parts.append(f"cache order {adapt['cache_order']}, context lines "
                     f"{adapt['context_lines']}")
    return "adaptive: " + "; ".join(parts)


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
