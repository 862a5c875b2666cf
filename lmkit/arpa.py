"""ARPA export: a pure n-gram ``LanguageModel`` -> an ARPA text file KenLM reads.

Input: a model whose groups are ``Suffix(1..M)`` with all lambdas 1 (an exact MKN model, see
``ngram.py``). Output: ``\\data\\`` counts, then one section per order with ``log10 P``, the
n-gram and its ``log10`` back-off weight (gamma of the n-gram as a history; omitted when 0 or
at the top order). Words are decimal token ids, except ``<unk>``, ``<s>`` and ``</s>`` for the
tokenizer's unk/BOS/EOS ids (``arpa_words``); ``<s>`` gets -99 as in KenLM. Probabilities come
from ``ngram.backoff_tables``; n-gram token ids from the chained history keys
(``features.decode_histories``). The file is written under a temporary name, then renamed.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .features import Suffix, decode_histories, encode_histories
from .ngram import _suffix_order, backoff_tables
from .params import SparseParams
from .sparse import lookup_rows


def arpa_words(tokenizer) -> np.ndarray:
    """ARPA word for each token id: the id in decimal, or ``<unk>``/``<s>``/``</s>``.

    To score with KenLM: ``kenlm.Model(arpa).full_scores(" ".join(words[ids]))``.
    """
    words = np.array([str(i) for i in range(tokenizer.vocab_size)], dtype=object)
    words[tokenizer.unk_id], words[tokenizer.bos_id], words[tokenizer.eos_id] = "<unk>", "<s>", "</s>"
    return words


def check_arpa_exportable(params) -> int:
    """M (the longest history) if ``params`` is an exact MKN model, else an ``InputError``."""
    if not isinstance(params, SparseParams) or not all(isinstance(g, Suffix) for g in params.groups):
        names = [g.name for g in params.groups]
        raise InputError(f"ARPA export needs a pure suffix (n-gram) model, this one has groups {names}; "
                         "train with --order N and without --context")
    if not np.allclose(params.lambdas, 1.0):
        raise InputError(f"ARPA export needs all lambdas = 1 (exact MKN), got {list(params.lambdas)}; "
                         "re-train without --lambdas")
    return _suffix_order(params.groups)


def write_arpa(model, path) -> dict:
    """Write ``model`` (a pure suffix ``LanguageModel``) as an ARPA file; returns n-gram counts."""
    params, tok = model.params, model.tokenizer
    M = check_arpa_exportable(params)
    V = params.vocab_size
    words = arpa_words(tok)
    logps, loggammas = backoff_tables(params)
    ln10 = math.log(10)
    sections = []
    # unigrams: every token, <s> at -99 as in KenLM; backoff = gamma of the 1-token history
    bo = np.zeros(V)
    r1 = lookup_rows(params.keys[0], np.arange(V))
    bo[r1 >= 0] = loggammas[0][r1[r1 >= 0]]
    lp1 = np.log(params.q) / ln10
    lp1[tok.bos_id] = -99.0
    sections.append(_arpa_lines(lp1, words[np.arange(V)][:, None], bo / ln10, M >= 1))
    for m in range(M):
        S = params.S[m].tocsr()
        S.sort_indices()
        er = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        hist = decode_histories(params.keys, m + 1, V)[er]
        ids = np.concatenate([hist, S.indices[:, None].astype(np.int64)], axis=1)
        bo = np.zeros(S.nnz)
        if m + 1 < M:  # this n-gram as a history of the next group (unseen there: backoff 0)
            rk = encode_histories(params.keys, ids, V)
            bo[rk >= 0] = loggammas[m + 1][rk[rk >= 0]]
        sections.append(_arpa_lines(logps[m] / ln10, words[ids], bo / ln10, m + 1 < M))
    sizes = [len(s) for s in sections]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:  # written under a temporary name and renamed: never a half-written ARPA file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\\data\\\n" + "".join(f"ngram {n + 1}={c}\n" for n, c in enumerate(sizes)))
            for n, lines in enumerate(sections):
                f.write(f"\n\\{n + 1}-grams:\n")
                f.write("\n".join(lines))
                f.write("\n")
            f.write("\n\\end\\\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {f"{n + 1}-grams": c for n, c in enumerate(sizes)}


def _arpa_lines(log10p, word_rows, log10bo, with_backoff: bool) -> list:
    texts = [" ".join(r) for r in word_rows]
    if with_backoff:
        return [f"{p:.6f}\t{t}\t{b:.6f}" if b != 0 else f"{p:.6f}\t{t}"
                for p, t, b in zip(log10p.tolist(), texts, log10bo.tolist())]
    return [f"{p:.6f}\t{t}" for p, t in zip(log10p.tolist(), texts)]


__all__ = ["write_arpa", "arpa_words", "check_arpa_exportable"]
