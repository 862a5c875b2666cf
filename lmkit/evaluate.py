"""Evaluation: a model + text sequences -> perplexity and bits per byte.

Input: an iterable of str lines (a ``corpus.TextCorpus``, a Python list, ...), read by the one
rule of ``corpus.sequences`` (docs/lines.md): split at "\\n", trailing whitespace dropped, blank
lines skipped; a text with no sequence is an ``InputError``.
Output: a dict with ``sequences``, ``tokens`` (EOS included, as KenLM counts ``</s>``),
``bytes`` (UTF-8 bytes + 1 newline per sequence), ``nll_nats`` (total, natural log),
``perplexity`` = exp(nll_nats / tokens) and ``bits_per_byte`` = nll_nats / ln 2 / bytes, which is
comparable across tokenizers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

from .config import AdaptConfig, CorpusConfig, EvalCorpusConfig, field_names, make
from .corpus import load_corpus, sequences
from .errors import InputError
from .progress import bar


CHUNK_CHARS = 1 << 20  # text per scoring batch: big batches amortise the per-batch searches


def _chunks(lines: Iterable[str], n: int, chars: int = CHUNK_CHARS, source: str = "lines"):
    """Lists of at most ``n`` lines and (unless one line is longer) ``chars`` characters."""
    chunk, size = [], 0
    for line in sequences(lines, source):
        if chunk and (len(chunk) == n or size + len(line) > chars):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield chunk


def evaluate_lines(model, lines: Iterable[str], *, chunk_lines: int = 100_000,
                   progress=None, source: str = "lines") -> dict:
    """Score every sequence of ``lines`` under ``model``; see the module docstring for keys.

    Lines are scored in batches of at most ``chunk_lines`` lines and ``CHUNK_CHARS``
    characters (memory stays bounded; the sums do not depend on the batching).
    ``progress``: optional tqdm-like object updated with the number of tokens scored.
    ``source``: what to call ``lines`` in the error for a text with no sequence.
    """
    n_seq = n_tok = n_bytes = 0
    nll = 0.0
    for chunk in _chunks(lines, chunk_lines, source=source):
        seqs = model.encode_lines(chunk)
        logp, _ = model.log_proba_ids(seqs)
        nll -= float(logp.sum())
        n_seq += len(chunk)
        n_tok += len(logp)
        n_bytes += sum(len(s.encode("utf-8")) + 1 for s in chunk)
        if progress is not None:
            progress.update(len(logp))
    try:
        ppl = math.exp(nll / n_tok)
    except OverflowError:  # a mean over ~709.8 nats per token has no float64 perplexity
        ppl = math.inf
    if not math.isfinite(ppl) or not math.isfinite(nll):
        raise FloatingPointError(f"non-finite perplexity (nll={nll}); this is a bug, please report it")
    return {"sequences": n_seq, "tokens": n_tok, "bytes": n_bytes, "nll_nats": nll,
            "perplexity": ppl, "bits_per_byte": nll / math.log(2) / n_bytes}


def evaluate(model, *, split: str = EvalCorpusConfig.split, **source) -> dict:
    """Evaluate ``model`` (anything with ``encode_lines`` and ``log_proba_ids``, e.g. a
    ``LanguageModel``) on a corpus; ``lmkit eval``. Corpus options: ``config.CorpusConfig``
    (default: the ``test`` split of shakespeare); adaptive scoring: ``config.AdaptConfig``
    (``adapt=True``; see ``adapt.py``)."""
    if not hasattr(model, "log_proba_ids"):
        raise InputError(f"evaluate needs a loaded model, got {type(model).__name__}; "
                         "use lmkit.LanguageModel.load(path) first")
    adapt_keys = set(field_names(AdaptConfig))
    ad = make(AdaptConfig, {k: v for k, v in source.items() if k in adapt_keys})
    src = make(CorpusConfig, {**{k: v for k, v in source.items() if k not in adapt_keys},
                              "split": split})
    lines = load_corpus(**dataclasses.asdict(src))
    if ad.adapt:
        return _evaluate_adaptive(model, lines, src, ad)
    with bar(desc="eval") as b:
        return evaluate_lines(model, lines, progress=b)


def _evaluate_adaptive(model, lines, src: CorpusConfig, ad: AdaptConfig) -> dict:
    """``evaluate`` with ``adapt``: the cache weights fitted on the valid split first when
    ``cache_fit`` (the corpus must have one), then every line scored in reading order."""
    from .adapt import check_adapt_model, evaluate_adaptive  # only here: adapt imports counts
    check_adapt_model(model, ad)
    heldout = None
    if ad.cache_fit:
        if src.input is not None:
            raise InputError("cache_fit needs a valid split, and input files have none; pass a "
                             "corpus or dataset, or drop cache_fit")
        if src.split == "valid":
            raise InputError("cache_fit fits on the valid split, which is the split being "
                             "scored; evaluate another split")
        valid = load_corpus(**{**dataclasses.asdict(src), "split": "valid"})
        heldout = list(sequences(valid, "the valid split"))
    return evaluate_adaptive(model, list(sequences(lines, "the scored text")), ad, heldout)
